#!/usr/bin/env python
"""Cost of the draft vocabulary size: drafter training step time and per-step beam-search drafting time at
several N, on the embedded base model's shapes (hidden 576, vocabulary 49,152). Prints a table, writes JSON.

    python benchmarks/draft_vocab_cost.py --sizes 49152 16384 8192 4096 \
        --output_file benchmarks/results/draft_vocab_cost.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from drafter import AutoDrafter, RecurrentDraftingConfig
from drafter.evaluation.benchmark import environment
from drafter.generation import beam_search
from drafter.training.losses import drafter_loss


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(size: int, args, hidden, embeds, labels, embedding) -> dict:
    """Median training-step and drafting-step times of a ReDrafter head with a draft vocabulary of `size`."""
    reduced = size < args.vocab_size
    drafter = AutoDrafter.from_config(RecurrentDraftingConfig(
        hidden_size=args.hidden_size, vocab_size=args.vocab_size, exit_dim_multiplier=args.exit_dim_multiplier,
        drafter_predict_n_tokens=args.steps, draft_vocab_size=size if reduced else None,
    ))
    if reduced:
        drafter.set_draft_vocabulary(torch.randperm(args.vocab_size)[:size])
    optimizer = torch.optim.AdamW(drafter.parameters(), lr=1e-4)
    context, init = hidden[:1, -1], torch.randint(0, args.vocab_size, (1,))

    def train_step() -> None:
        optimizer.zero_grad()
        drafter_loss(drafter, hidden, embeds, labels, args.steps).loss.backward()
        optimizer.step()

    def draft() -> None:
        with torch.inference_mode():
            beam_search(drafter, embedding, context, init, args.beam_width, args.beam_length)

    train_s = median_seconds(train_step, args.repeats)
    draft_s = median_seconds(draft, args.repeats * 10)
    token_steps = int((labels != -100).sum()) * args.steps
    return {
        "draft_vocab_size": size,
        "drafter_parameters": sum(p.numel() for p in drafter.parameters()),
        "train_step_s": train_s,
        "train_token_steps_per_s": token_steps / train_s,
        "draft_ms": 1000 * draft_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[49152, 16384, 8192, 4096])
    parser.add_argument("--hidden_size", type=int, default=576)
    parser.add_argument("--vocab_size", type=int, default=49152)
    parser.add_argument("--exit_dim_multiplier", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=5, help="drafting steps trained")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--beam_width", type=int, default=4)
    parser.add_argument("--beam_length", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output_file", default=None)
    args = parser.parse_args()

    torch.manual_seed(0)
    hidden = torch.randn(args.batch, args.seq, args.hidden_size)
    embeds = torch.randn(args.batch, args.seq, args.hidden_size)
    labels = torch.randint(0, args.vocab_size, (args.batch, args.seq))
    labels[:, : args.seq // 2] = -100  # about half the tokens are assistant targets, as in chat data
    embedding = torch.nn.Embedding(args.vocab_size, args.hidden_size)
    rows = []
    for size in args.sizes:
        rows.append(measure(size, args, hidden, embeds, labels, embedding))
        print(f"N={size}: train step {rows[-1]['train_step_s']:.2f} s, drafting {rows[-1]['draft_ms']:.2f} ms",
              flush=True)

    print("\n| draft vocabulary | drafter params | train step (s) | token-steps/s | drafting per step (ms) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['draft_vocab_size']} | {r['drafter_parameters'] / 1e6:.1f} M | {r['train_step_s']:.2f} | "
              f"{r['train_token_steps_per_s']:.0f} | {r['draft_ms']:.2f} |")
    if args.output_file:
        with open(args.output_file, "w") as f:
            json.dump({"settings": vars(args), "rows": rows, "environment": environment()}, f, indent=2)
        print(f"Wrote {args.output_file}")


if __name__ == "__main__":
    main()
