#!/usr/bin/env python
"""Generate with a trained drafter: lossless speculative decoding of its base model.

    python generate_speculator.py --speculator_path outputs/drafter --interactive
    python generate_speculator.py --speculator_path outputs/drafter --prompt "Write a haiku about CPUs."
    python generate_speculator.py --speculator_path outputs/drafter --eval_mt_bench --batch_size 4
    python generate_speculator.py --speculator_path outputs/drafter --eval_mt_bench --compare   # speed benchmark
    python generate_speculator.py --speculator_path outputs/a outputs/b --eval_mt_bench --compare  # 2 drafters
    python generate_speculator.py --speculator_path outputs/arctic --top_k_tokens_per_head 4 3 2 --prompt "Hi"
    python generate_speculator.py --base_model embedded:SmolLM2-135M-Instruct-Q4_1 --autoregressive --interactive
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from transformers import HfArgumentParser, PreTrainedModel

from drafter import AutoDrafter
from drafter.chat import ChatSession
from drafter.data import load_prompts
from drafter.engine import AutoregressiveGenerator, encode_chat_prompts, load_base_model, load_tokenizer
from drafter.evaluation.benchmark import BenchmarkConfig, environment
from drafter.evaluation.compare import TreeShape, compare_drafters
from drafter.evaluation.report import markdown_table, plot_summary
from drafter.store import write_json

logger = logging.getLogger("generate_speculator")


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
    eval_dataset: str = field(default="mtbench", metadata={"help": "Prompt source for --eval_mt_bench."})
    compare: bool = field(
        default=False,
        metadata={"help": "With --eval_mt_bench: time transformers generate, the autoregressive loop and "
                  "speculative decoding on the same prompts (greedy, batch 1)."},
    )
    max_num_prompts: Optional[int] = field(default=None, metadata={"help": "Use the first N prompts."})
    autoregressive: bool = field(default=False, metadata={"help": "Plain decoding through the same harness."})
    output_file: Optional[str] = field(default=None, metadata={"help": "JSON with every answer and metric."})
    chart_file: Optional[str] = field(default=None, metadata={"help": "PNG chart (--compare); default beside JSON."})
    beam_width: int = field(default=4, metadata={"help": "Beams drafted per step."})
    beam_length: Optional[int] = field(
        default=None, metadata={"help": "Tokens per beam incl. the base model's own (default: drafter steps + 1)."}
    )
    top_k_tokens_per_head: Optional[list[int]] = field(
        default=None,
        metadata={"help": "Draft the per-head top-k candidate tree (Arctic / MLP speculators), e.g. 4 3 2, instead "
                  "of beam search; 1 1 1 is a single greedy chain."},
    )
    n_candidates: Optional[int] = field(
        default=None, metadata={"help": "With --top_k_tokens_per_head: keep only the best N candidates."}
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
    repeats: int = field(default=1, metadata={"help": "--compare: timed runs per prompt and method (median)."})
    warmup: int = field(default=1, metadata={"help": "--compare: untimed warm-up runs."})
    threads: Optional[int] = field(default=None, metadata={"help": "torch CPU threads (default: torch's)."})


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_models(args: GenerationArguments, device: torch.device) -> tuple[PreTrainedModel, Any, list]:
    """The base model, its tokenizer and the drafters named by --speculator_path (all checked against the base)."""
    drafters = [AutoDrafter.from_pretrained(path) for path in args.speculator_path]
    if not drafters and not args.autoregressive:
        raise SystemExit("error: --speculator_path is required (or pass --autoregressive for plain decoding)")
    base_name = args.base_model or (drafters[0].config.base_model_name_or_path if drafters else None)
    if not base_name:
        raise SystemExit("error: --base_model is required (the drafter does not record its base model)")
    base = load_base_model(base_name, dtype=args.dtype, device=device)
    tokenizer = load_tokenizer(base_name)
    for drafter in drafters:
        drafter.check_base_model(base)
        drafter.to(device=device, dtype=base.dtype).eval()
    return base, tokenizer, drafters


def tree_shape(args: GenerationArguments) -> TreeShape:
    return TreeShape(
        beam_width=args.beam_width, beam_length=args.beam_length,
        top_k_tokens_per_head=args.top_k_tokens_per_head, n_candidates=args.n_candidates,
    )


def make_decoder(args: GenerationArguments, base: PreTrainedModel, drafters: list) -> Any:
    """Plain decoding with --autoregressive, else speculative decoding with the (first) drafter."""
    if args.autoregressive or not drafters:
        return AutoregressiveGenerator(base)
    return tree_shape(args).speculator(base, drafters[0])


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
        except EOFError:
            print()
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


def run_answers(args: GenerationArguments, generator, tokenizer, prompts, max_new_tokens: int) -> dict:
    """Answer every prompt in batches; return answers and aggregate metrics."""
    encoded = encode_chat_prompts(tokenizer, prompts)
    answers, steps, accepted, tokens = [], 0, 0, 0
    start = time.perf_counter()
    for begin in range(0, len(prompts), args.batch_size):
        batch = encoded[begin : begin + args.batch_size]
        result = generator.generate(
            batch, max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id, **sampling_kwargs(args)
        )
        for i, sequence in enumerate(result.sequences):
            prompt = prompts[begin + i]
            answers.append({
                "id": prompt.get("question_id", prompt["id"]),
                "category": prompt.get("category"),
                "prompt": prompt["messages"][-1]["content"],
                "answer": tokenizer.decode(sequence, skip_special_tokens=True),
                "tokens": len(sequence),
                "steps": result.steps_per_sequence[i],
                "tau": result.accepted_per_sequence[i] / max(result.steps_per_sequence[i], 1),
            })
        steps += sum(result.steps_per_sequence)
        accepted += sum(result.accepted_per_sequence)
        tokens += result.num_generated_tokens
        print(f"  {min(begin + args.batch_size, len(prompts))}/{len(prompts)} prompts, "
              f"{tokens / (time.perf_counter() - start):.1f} tok/s", file=sys.stderr)
    seconds = time.perf_counter() - start
    return {
        "method": "autoregressive" if isinstance(generator, AutoregressiveGenerator) else "speculative",
        "prompts": len(prompts),
        "generated_tokens": tokens,
        "seconds": seconds,
        "tokens_per_second": tokens / seconds,
        "tau": accepted / steps if steps else 0.0,
        "batch_size": args.batch_size,
        "answers": answers,
    }


def run_compare(args: GenerationArguments, base, tokenizer, drafters: list, prompts, max_new_tokens: int) -> dict:
    config = BenchmarkConfig(max_new_tokens=max_new_tokens, repeats=args.repeats, warmup=args.warmup)
    names = speculator_names(args.speculator_path)
    shape = tree_shape(args)
    summary = compare_drafters(
        base, tokenizer, dict(zip(names, drafters)), {name: shape for name in names}, prompts, config,
        with_answers=True,
    )
    summary["drafters"] = dict(zip(names, args.speculator_path))
    return summary


def main(argv: list[str]) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    (args,) = HfArgumentParser(GenerationArguments).parse_args_into_dataclasses(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.compare and not args.eval_mt_bench:
        raise SystemExit("error: --compare is part of --eval_mt_bench")
    if args.compare and args.temperature > 0:
        raise SystemExit("error: --compare is a greedy benchmark; drop --temperature")
    device = resolve_device(args.device)
    max_new_tokens = args.max_generation_length or (256 if device.type == "cuda" else 128)
    if len(args.speculator_path) > 1 and not args.compare:
        raise SystemExit("error: several --speculator_path values are only for --eval_mt_bench --compare")
    base, tokenizer, drafters = load_models(args, device)
    settings = {k: v for k, v in vars(args).items()}
    settings.update(max_new_tokens=max_new_tokens, device=str(device))

    if args.interactive or args.prompt is not None:
        run_chat(args, make_decoder(args, base, drafters), tokenizer, max_new_tokens)
        return
    if not args.eval_mt_bench:
        raise SystemExit("error: choose --interactive, --prompt TEXT or --eval_mt_bench")

    prompts = load_prompts(args.eval_dataset, max_examples=args.max_num_prompts)
    if args.compare:
        if not drafters:
            raise SystemExit("error: --compare needs --speculator_path")
        result = run_compare(args, base, tokenizer, drafters, prompts, max_new_tokens)
        print(markdown_table(result))
    else:
        result = run_answers(args, make_decoder(args, base, drafters), tokenizer, prompts, max_new_tokens)
        print(f"{result['method']}: {result['prompts']} prompts, {result['generated_tokens']} tokens in "
              f"{result['seconds']:.1f} s = {result['tokens_per_second']:.1f} tok/s, tau {result['tau']:.2f}")
    result["settings"] = settings
    result["environment"] = environment()
    if args.output_file:
        write_json(args.output_file, result)
        print(f"Wrote {args.output_file}")
        if args.compare:
            chart = args.chart_file or args.output_file.rsplit(".", 1)[0] + ".png"
            plot_summary(result, chart, title=f"{len(prompts)} {args.eval_dataset} prompts, {max_new_tokens} tokens")
            print(f"Wrote {chart}")


if __name__ == "__main__":
    main(sys.argv[1:])
