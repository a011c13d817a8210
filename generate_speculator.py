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

import sys
from pathlib import Path

from drafter.cli.generate import main as run_generate
from drafter.errors import run_main

# Used when no --speculator_path is given for the embedded base model (see BENCHMARKS.md for how it was made).
DEFAULT_DRAFTER = Path(__file__).resolve().parent / "benchmarks" / "drafters" / "smollm2-redrafter-selfdistill"


def main(argv: list[str]) -> None:
    run_generate(argv, default_drafter=DEFAULT_DRAFTER)


if __name__ == "__main__":
    sys.exit(run_main(main))
