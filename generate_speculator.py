#!/usr/bin/env python
"""Generate with a trained drafter: lossless speculative decoding of its base model.

    python generate_speculator.py --speculator_path outputs/drafter --interactive
    python generate_speculator.py --speculator_path outputs/drafter --prompt "Write a haiku about CPUs."
    python generate_speculator.py --speculator_path outputs/drafter --eval_mt_bench --batch_size 4
    python generate_speculator.py --speculator_path outputs/drafter --eval_mt_bench --compare   # speed benchmark
    python generate_speculator.py --speculator_path outputs/a outputs/b --eval_mt_bench --compare  # 2 drafters
    python generate_speculator.py --speculator_path outputs/arctic --top_k_tokens_per_head 4 3 2 --prompt "Hi"
    python generate_speculator.py --base_model embedded:SmolLM2-135M-Instruct-Q4_1 --autoregressive --interactive

Unless --beam_width, --beam_length or --top_k_tokens_per_head fixes it, the drafting shape is the one planned for
this machine and drafter (--tree_budget auto; measured once, then cached).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from transformers import HfArgumentParser, PreTrainedModel

from drafter import AutoDrafter
from drafter.chat import ChatSession
from drafter.data import load_prompts
from drafter.engine import EMBEDDED_BASE_MODEL, AutoregressiveGenerator, load_base_model, load_tokenizer
from drafter.errors import UsageError, run_main
from drafter.evaluation.answers import AnswerLog, answer_prompts
from drafter.evaluation.benchmark import BASELINE_METHODS, DEFAULT_BASELINES, BenchmarkConfig, environment
from drafter.evaluation.compare import TreeShape, auto_tree_shape, compare_drafters, parse_lookup, parse_tree_shape
from drafter.evaluation.report import markdown_table, plot_summary
from drafter.store import write_json

logger = logging.getLogger("generate_speculator")
# Used when no --speculator_path is given for the embedded base model (see BENCHMARKS.md for how it was made).
DEFAULT_DRAFTER = Path(__file__).resolve().parent / "benchmarks" / "drafters" / "smollm2-redrafter-selfdistill"


@dataclass
class GenerationArguments:
    speculator_path: list[str] = field(
        default_factory=list,
        metadata={"help": "A drafter saved by train_speculator.py; with --compare, several (compared in one run)."},
    )
    base_model: Optional[str] = field(
        default=None, metadata={"help": "Base model (default: the one recorded in the drafter's config)."}
    )
    interactive: bool = field(default=False, metadata={"help": "Multi-turn chat on the terminal (stdin)."})
    prompt: Optional[str] = field(default=None, metadata={"help": "Answer one prompt and exit."})
    system_prompt: Optional[str] = field(default=None, metadata={"help": "System message for chat/prompt."})
    eval_mt_bench: bool = field(default=False, metadata={"help": "Answer MT-Bench first turns."})
    eval_dataset: str = field(
        default="mtbench",
        metadata={"help": "Prompt source for --eval_mt_bench: mtbench, sharegpt, or a chat / FastChat-Spec-Bench "
                  "question.jsonl file."},
    )
    compare: bool = field(
        default=False,
        metadata={"help": "With --eval_mt_bench: time transformers generate, the autoregressive loop and "
                  "speculative decoding on the same prompts (greedy, batch 1)."},
    )
    max_num_prompts: Optional[int] = field(default=None, metadata={"help": "Use the first N prompts."})
    all_turns: bool = field(
        default=False,
        metadata={"help": "--eval_mt_bench: answer every turn of multi-turn questions (MT-Bench's second turn), "
                  "the model's own earlier answers in the context."},
    )
    autoregressive: bool = field(default=False, metadata={"help": "Plain decoding through the same harness."})
    output_file: Optional[str] = field(default=None, metadata={"help": "JSON with every answer and metric."})
    chart_file: Optional[str] = field(default=None, metadata={"help": "PNG chart (--compare); default beside JSON."})
    beam_width: Optional[int] = field(
        default=None,
        metadata={"help": "Beams drafted per step (default: the planned shape, see --tree_budget; "
                  f"{TreeShape.beam_width} with --beam_length)."},
    )
    beam_length: Optional[int] = field(
        default=None,
        metadata={"help": "Tokens per beam incl. the base model's own (default: the planned shape, see "
                  "--tree_budget; drafter steps + 1 with --beam_width)."},
    )
    top_k_tokens_per_head: Optional[list[int]] = field(
        default=None,
        metadata={"help": "Draft the per-head top-k candidate tree (Arctic / MLP speculators), e.g. 4 3 2, instead "
                  "of beam search; 1 1 1 is a single greedy chain."},
    )
    n_candidates: Optional[int] = field(
        default=None, metadata={"help": "With --top_k_tokens_per_head: keep only the best N candidates."}
    )
    tree_budget: Optional[str] = field(
        default=None,
        metadata={"help": "auto (what is done when no --beam_width, --beam_length or --top_k_tokens_per_head is "
                  "given): pick the beam width/length (and lookup size) with the highest expected tokens/s on this "
                  "machine (measures the verification cost once per model and machine, and the drafter's acceptance "
                  "on calibration prompts, both cached; prints the shape and why). Beam search drafting only."},
    )
    lookup_tokens: int = field(
        default=8,
        metadata={"help": "Every step also verifies up to K tokens copied from the conversation itself (what "
                  "followed the last occurrence of its newest tokens: prompt lookup), as one more branch of the "
                  "drafter's tree; lossless. 0: the drafter's candidates only. With --tree_budget auto: the lookup "
                  "size (none, 2, 4, ... K) is planned with the beam shape."},
    )
    tree_shapes: list[str] = field(
        default_factory=list,
        metadata={"help": "--compare: several beam shapes per drafter in one run, as WxL, WxL+K (K context-lookup "
                  "tokens; plain WxL takes --lookup_tokens) or auto, e.g. 2x2 2x3 4x3+8 auto (default: the one "
                  "shape of --beam_width/--beam_length/--lookup_tokens/--tree_budget)."},
    )
    batch_size: int = field(default=1, metadata={"help": "Prompts decoded together (--eval_mt_bench)."})
    max_generation_length: Optional[int] = field(
        default=None, metadata={"help": "New tokens per answer (default 128 on CPU, 256 on GPU)."}
    )
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy; else sampling temperature."})
    top_k: Optional[int] = field(default=None, metadata={"help": "Sampling: keep the k most likely tokens."})
    top_p: Optional[float] = field(default=None, metadata={"help": "Sampling: nucleus probability mass."})
    seed: int = field(default=0, metadata={"help": "Random seed for sampling."})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:1, ..."})
    dtype: str = field(default="float32", metadata={"help": "float32, bfloat16 or float16."})
    baselines: list[str] = field(
        default_factory=lambda: list(DEFAULT_BASELINES),
        metadata={"help": f"--compare: plain methods timed beside the drafters, from {', '.join(BASELINE_METHODS)} "
                  "(hf_generate, the reference, is always included)."},
    )
    repeats: int = field(default=1, metadata={"help": "--compare: timed runs per prompt and method (median)."})
    warmup: int = field(default=1, metadata={"help": "--compare: untimed warm-up runs."})
    threads: Optional[int] = field(default=None, metadata={"help": "torch CPU threads (default: torch's)."})
    allow_base_mismatch: bool = field(
        default=False,
        metadata={"help": "Use a base whose weights differ from those the drafter was trained on (same shapes)."},
    )

    def __post_init__(self) -> None:
        """Every numeric argument in range, before any model loads."""
        checks = [
            ("max_generation_length", self.max_generation_length, lambda v: v is None or v >= 1, ">= 1"),
            ("batch_size", self.batch_size, lambda v: v >= 1, ">= 1"),
            ("beam_width", self.beam_width, lambda v: v is None or v >= 1, ">= 1"),
            ("beam_length", self.beam_length, lambda v: v is None or v >= 2, ">= 2 (the base token + 1 draft)"),
            ("temperature", self.temperature, lambda v: v >= 0, ">= 0 (0 = greedy)"),
            ("top_k", self.top_k, lambda v: v is None or v >= 1, ">= 1"),
            ("top_p", self.top_p, lambda v: v is None or 0 < v <= 1, "in (0, 1]"),
            ("max_num_prompts", self.max_num_prompts, lambda v: v is None or v >= 1, ">= 1"),
            ("n_candidates", self.n_candidates, lambda v: v is None or v >= 1, ">= 1"),
            ("repeats", self.repeats, lambda v: v >= 1, ">= 1"),
            ("warmup", self.warmup, lambda v: v >= 0, ">= 0"),
            ("threads", self.threads, lambda v: v is None or v >= 1, ">= 1"),
            ("lookup_tokens", self.lookup_tokens, lambda v: v >= 0, ">= 0 (0 = no context lookup)"),
        ]
        for name, value, valid, rule in checks:
            if not valid(value):
                raise ValueError(f"--{name} {value}: must be {rule}")
        if self.tree_budget not in (None, "auto"):
            raise ValueError(f"--tree_budget {self.tree_budget}: the only budget is auto")
        for shape in self.tree_shapes:
            parse_tree_shape(shape, self.lookup_tokens)
        unknown = [b for b in self.baselines if b not in BASELINE_METHODS]
        if unknown:
            raise ValueError(f"--baselines {' '.join(unknown)}: choose from {', '.join(BASELINE_METHODS)}")
        self.baselines = ["hf_generate", *dict.fromkeys(b for b in self.baselines if b != "hf_generate")]
        if self.top_k_tokens_per_head is not None and (not self.top_k_tokens_per_head
                                                       or min(self.top_k_tokens_per_head) < 1):
            raise ValueError(f"--top_k_tokens_per_head {self.top_k_tokens_per_head}: one k >= 1 per drafted token")


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


def check_modes(args: GenerationArguments) -> None:
    """Contradicting or missing choices, refused before any model loads."""
    if args.compare and not args.eval_mt_bench:
        raise UsageError("--compare is part of --eval_mt_bench")
    if args.compare and args.temperature > 0:
        raise UsageError("--compare is a greedy benchmark; drop --temperature")
    if args.compare and not args.speculator_path:
        raise UsageError("--compare needs --speculator_path")
    if len(args.speculator_path) > 1 and not args.compare:
        raise UsageError("several --speculator_path values are only for --eval_mt_bench --compare")
    if not args.speculator_path and not args.autoregressive:
        if args.base_model not in (None, EMBEDDED_BASE_MODEL) or not DEFAULT_DRAFTER.is_dir():
            raise UsageError("--speculator_path is required (or pass --autoregressive for plain decoding)")
        args.speculator_path = [str(DEFAULT_DRAFTER)]  # the shipped drafter of the embedded model
    if args.tree_budget and (shape_given(args) or args.tree_shapes):
        raise UsageError("--tree_budget auto plans the beam shape; drop --beam_width / --beam_length / "
                         "--top_k_tokens_per_head / --tree_shapes (or list auto among --tree_shapes)")
    if args.tree_shapes and not args.compare:
        raise UsageError("--tree_shapes is for --eval_mt_bench --compare; use --tree_budget auto or "
                         "--beam_width/--beam_length otherwise")
    if not (args.interactive or args.prompt is not None or args.eval_mt_bench):
        raise UsageError("choose --interactive, --prompt TEXT or --eval_mt_bench")


def main(argv: list[str]) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    (args,) = HfArgumentParser(GenerationArguments, allow_abbrev=False).parse_args_into_dataclasses(argv)
    check_modes(args)
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


if __name__ == "__main__":
    sys.exit(run_main(main))
