"""The `generate_speculator.py` command line: chat, answering prompt sets and the speed comparison, on top of the
generation, evaluation and chat layers. The drafting shape is planned for this machine unless the arguments fix it
(`resolve_tree_shape`).

(`train_speculator.py`'s command line needs only its own layer and lives in `drafter.training.cli`.)
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Optional

import torch
from transformers import HfArgumentParser, PreTrainedModel

from ..chat import ChatSession
from ..data import load_prompts
from ..engine import EMBEDDED_BASE_MODEL, AutoregressiveGenerator, load_base_model, load_tokenizer
from ..errors import UsageError
from ..evaluation.answers import AnswerLog, answer_prompts
from ..evaluation.benchmark import BenchmarkConfig, environment
from ..evaluation.compare import TreeShape, auto_tree_shape, compare_drafters, parse_lookup, parse_tree_shape
from ..evaluation.report import markdown_table, plot_summary
from ..models import AutoDrafter
from ..store import write_json
from .generate_arguments import GenerationArguments


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_models(args: GenerationArguments, device: torch.device) -> tuple[PreTrainedModel, Any, list]:
    """The base model, its tokenizer and the drafters named by --speculator_path (all checked against the base)."""
    drafters = [AutoDrafter.from_pretrained(path) for path in args.speculator_path]
    base_name = args.base_model or (drafters[0].config.base_model_name_or_path if drafters else None)
    if not base_name:
        raise UsageError("--base_model is required (the drafter does not record its base model)")
    base = load_base_model(base_name, dtype=args.dtype, device=device)
    tokenizer = load_tokenizer(base_name)
    for drafter in drafters:
        drafter.check_base_model(base, allow_weight_mismatch=args.allow_base_mismatch)
        drafter.to(device=device, dtype=base.dtype).eval()
    return base, tokenizer, drafters


def shape_given(args: GenerationArguments) -> bool:
    """Whether the arguments fix the drafting shape; else it is planned (`--tree_budget auto`)."""
    return args.beam_width is not None or args.beam_length is not None or args.top_k_tokens_per_head is not None


def tree_shape(args: GenerationArguments) -> TreeShape:
    return TreeShape(
        beam_width=args.beam_width or TreeShape.beam_width, beam_length=args.beam_length,
        top_k_tokens_per_head=args.top_k_tokens_per_head, n_candidates=args.n_candidates,
        lookup_tokens=args.lookup_tokens,
    )


def make_decoder(args: GenerationArguments, base: PreTrainedModel, tokenizer, drafters: list) -> Any:
    """Plain decoding with --autoregressive, else speculative decoding with the (first) drafter."""
    if args.autoregressive or not drafters:
        return AutoregressiveGenerator(base)
    shape = resolve_tree_shape(args, base, tokenizer, drafters[0], {}, "speculative")
    # recorded with the results
    args.beam_width, args.beam_length, args.lookup_tokens = shape.beam_width, shape.beam_length, shape.lookup_tokens
    return shape.speculator(base, drafters[0], args.allow_base_mismatch)


def speculator_names(paths: list[str]) -> list[str]:
    """Method names for the benchmark: "speculative" for one drafter, else the folder names (made unique)."""
    if len(paths) == 1:
        return ["speculative"]
    names: list[str] = []
    for path in paths:
        stem = os.path.basename(os.path.normpath(path)) or "drafter"
        name, suffix = stem, 0
        while name in names:  # a/x, b/x and x-1 must stay three methods
            suffix += 1
            name = f"{stem}-{suffix}"
        names.append(name)
    return names


def sampling_kwargs(args: GenerationArguments) -> dict:
    return {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p, "seed": args.seed}


def run_chat(args: GenerationArguments, generator: Any, tokenizer: Any, max_new_tokens: int) -> None:
    session = ChatSession(generator, tokenizer, max_new_tokens, args.system_prompt, **sampling_kwargs(args))
    if args.prompt is not None:
        stats = session.reply(args.prompt, stream=lambda text: print(text, end="", flush=True))
        print(f"\n{stats.line()}")
        return
    print("Chat with the base model (speculative decoding). Commands: /reset clears the history, /exit quits.")
    while True:
        try:
            user = input("\nuser> ")
        except (EOFError, KeyboardInterrupt):  # Ctrl-D / Ctrl-C at the prompt ends the chat; during a reply it
            print()  # stops that reply only (ChatSession.reply)
            break
        if user.strip() in {"/exit", "/quit"}:
            break
        if user.strip() == "/reset":
            session.reset()
            print("(history cleared)")
            continue
        if not user.strip():
            continue
        print("assistant> ", end="", flush=True)
        stats = session.reply(user, stream=lambda text: print(text, end="", flush=True))
        print(f"\n{stats.line()}")


def run_answers(args: GenerationArguments, decoder, tokenizer, prompts, max_new_tokens: int) -> dict:
    """Answer every prompt in batches (resuming a killed run's --output_file); return answers and metrics."""
    settings = {"speculators": args.speculator_path, "base_model": args.base_model, "dataset": args.eval_dataset,
                "max_new_tokens": max_new_tokens, "all_turns": args.all_turns, "tree": vars(tree_shape(args)),
                "autoregressive": args.autoregressive, **sampling_kwargs(args)}
    log = AnswerLog(args.output_file, settings)
    start = time.perf_counter()
    answers = answer_prompts(decoder, tokenizer, prompts, max_new_tokens, args.batch_size, sampling_kwargs(args),
                             args.all_turns, log)
    seconds = time.perf_counter() - start
    tokens, steps = sum(a["tokens"] for a in answers), sum(a["steps"] for a in answers)
    result = {
        "method": "autoregressive" if isinstance(decoder, AutoregressiveGenerator) else "speculative",
        "prompts": len(prompts),
        "generated_tokens": tokens,
        "seconds": seconds,
        "tokens_per_second": tokens / seconds if seconds else 0.0,
        "tau": sum(a["accepted"] for a in answers) / steps if steps else 0.0,
        "batch_size": args.batch_size,
        "answers": answers,
    }
    return result, log


def run_compare(args: GenerationArguments, base, tokenizer, drafters: list, prompts, max_new_tokens: int):
    config = BenchmarkConfig(max_new_tokens=max_new_tokens, repeats=args.repeats, warmup=args.warmup,
                             baselines=tuple(args.baselines))
    methods, shapes, plans = {}, {}, {}
    names = speculator_names(args.speculator_path)
    for name, drafter in zip(names, drafters):
        for label, shape in method_shapes(args, base, tokenizer, drafter, plans, name):
            method = name if label is None else f"{name} {label}" if len(drafters) > 1 else label
            methods[method], shapes[method] = drafter, shape
    settings = {"compare": list(methods), "speculators": args.speculator_path, "base_model": args.base_model,
                "dataset": args.eval_dataset, "max_new_tokens": max_new_tokens,
                "trees": {m: vars(shape) for m, shape in shapes.items()}, "repeats": args.repeats,
                "warmup": args.warmup, "baselines": args.baselines}
    log = AnswerLog(args.output_file, settings)
    summary = compare_drafters(
        base, tokenizer, methods, shapes, prompts, config,
        with_answers=True, allow_base_mismatch=args.allow_base_mismatch, log=log,
    )
    summary["drafters"] = dict(zip(names, args.speculator_path))
    summary["tree_plans"] = plans
    return summary, log


def method_shapes(args: GenerationArguments, base, tokenizer, drafter, plans: dict, name: str) -> list:
    """(label, TreeShape) of every shape `drafter` is benchmarked with: --tree_shapes (label = WxL or WxL+K),
    else the one shape of the arguments (label None). "auto" is planned here; its plan goes to `plans`."""
    if not args.tree_shapes:
        return [(None, resolve_tree_shape(args, base, tokenizer, drafter, plans, name))]
    out = []
    for text in args.tree_shapes:
        shape = parse_tree_shape(text, args.lookup_tokens)
        if shape is None:
            shape = planned_tree_shape(base, tokenizer, drafter, plans, name, parse_lookup(text, args.lookup_tokens))
            out.append((f"auto ({shape.label})", shape))
        else:
            out.append((shape.label, shape))
    return out


def resolve_tree_shape(args: GenerationArguments, base, tokenizer, drafter, plans: dict, name: str) -> TreeShape:
    """The shape of --beam_width/--beam_length/--top_k_tokens_per_head, else the planned one (--tree_budget)."""
    if shape_given(args):
        return tree_shape(args)
    return planned_tree_shape(base, tokenizer, drafter, plans, name, args.lookup_tokens)


def planned_tree_shape(base, tokenizer, drafter, plans: dict, name: str, lookup_tokens: int = 0) -> TreeShape:
    """`--tree_budget auto` / `--tree_shapes auto`: the planned shape; the plan is kept in `plans[name]`."""
    shape, plan = auto_tree_shape(base, tokenizer, drafter, lookup_tokens=lookup_tokens)
    plans[name] = plan.to_dict()
    return shape


def check_modes(args: GenerationArguments, default_drafter: Optional[Path] = None) -> None:
    """Contradicting or missing choices, refused before any model loads. Without --speculator_path, the embedded
    base model gets `default_drafter` (its shipped drafter) where that folder exists."""
    if args.compare and not args.eval_mt_bench:
        raise UsageError("--compare is part of --eval_mt_bench")
    if args.compare and args.temperature > 0:
        raise UsageError("--compare is a greedy benchmark; drop --temperature")
    if args.compare and not args.speculator_path:
        raise UsageError("--compare needs --speculator_path")
    if len(args.speculator_path) > 1 and not args.compare:
        raise UsageError("several --speculator_path values are only for --eval_mt_bench --compare")
    if not args.speculator_path and not args.autoregressive:
        shipped = default_drafter is not None and default_drafter.is_dir()
        if args.base_model not in (None, EMBEDDED_BASE_MODEL) or not shipped:
            raise UsageError("--speculator_path is required (or pass --autoregressive for plain decoding)")
        args.speculator_path = [str(default_drafter)]
    if args.tree_budget and (shape_given(args) or args.tree_shapes):
        raise UsageError("--tree_budget auto plans the beam shape; drop --beam_width / --beam_length / "
                         "--top_k_tokens_per_head / --tree_shapes (or list auto among --tree_shapes)")
    if args.tree_shapes and not args.compare:
        raise UsageError("--tree_shapes is for --eval_mt_bench --compare; use --tree_budget auto or "
                         "--beam_width/--beam_length otherwise")
    if not (args.interactive or args.prompt is not None or args.eval_mt_bench):
        raise UsageError("choose --interactive, --prompt TEXT or --eval_mt_bench")


def main(argv: list[str], default_drafter: Optional[Path] = None) -> None:
    """`generate_speculator.py ARGS` (see its docstring); `default_drafter`: see `check_modes`."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    (args,) = HfArgumentParser(GenerationArguments, allow_abbrev=False).parse_args_into_dataclasses(argv)
    check_modes(args, default_drafter)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    max_new_tokens = args.max_generation_length or (256 if device.type == "cuda" else 128)
    prompts = load_prompts(args.eval_dataset, max_examples=args.max_num_prompts) if args.eval_mt_bench else []
    base, tokenizer, drafters = load_models(args, device)
    settings = {k: v for k, v in vars(args).items()}
    settings.update(max_new_tokens=max_new_tokens, device=str(device))

    if args.interactive or args.prompt is not None:
        run_chat(args, make_decoder(args, base, tokenizer, drafters), tokenizer, max_new_tokens)
        return
    if args.compare:
        result, log = run_compare(args, base, tokenizer, drafters, prompts, max_new_tokens)
        print(markdown_table(result))
    else:
        decoder = make_decoder(args, base, tokenizer, drafters)
        result, log = run_answers(args, decoder, tokenizer, prompts, max_new_tokens)
        print(f"{result['method']}: {result['prompts']} prompts, {result['generated_tokens']} tokens in "
              f"{result['seconds']:.1f} s = {result['tokens_per_second']:.1f} tok/s, tau {result['tau']:.2f}")
    result["settings"] = settings
    result["environment"] = environment()
    if args.output_file:
        write_json(args.output_file, result)
        print(f"Wrote {args.output_file}")
        if args.compare:
            chart = args.chart_file or os.path.splitext(args.output_file)[0] + ".png"
            plot_summary(result, chart, title=f"{len(prompts)} {args.eval_dataset} prompts, {max_new_tokens} tokens")
            print(f"Wrote {chart}")
    log.finish()
