"""`python -m drafter.features`: build (or resume) a feature cache; see `drafter.features.build`."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Optional, Sequence

from ..engine.loading import EMBEDDED_BASE_MODEL
from ..errors import run_main
from .build import FeatureSpec


def build_parser() -> argparse.ArgumentParser:
    spec = FeatureSpec()
    parser = argparse.ArgumentParser(prog="python -m drafter.features", allow_abbrev=False,
                                     description="Run the frozen base model once over a dataset and store what "
                                                 "drafters train on (train with --features_dir).")
    parser.add_argument("--dataset_name", default="sharegpt")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--llm_name_or_path", default=EMBEDDED_BASE_MODEL)
    parser.add_argument("--model_max_length", type=int, default=spec.model_max_length)
    parser.add_argument("--train_on_assistant_only", type=lambda v: v.lower() in ("1", "true", "yes"),
                        default=spec.train_on_assistant_only)
    parser.add_argument("--max_examples", type=int, default=None)
    parser.add_argument("--num_eval_examples", type=int, default=spec.num_eval_examples)
    parser.add_argument("--seed", type=int, default=spec.seed)
    parser.add_argument("--hidden_dtype", default=spec.hidden_dtype, help="bfloat16 (default), float16, float32")
    parser.add_argument("--hidden_layers", type=int, nargs="+", default=list(spec.hidden_layers),
                        help="-1 = the last hidden state (always stored); e.g. -1 2 15 27 for EAGLE-3 (30 layers)")
    parser.add_argument("--distill_num_future_tokens", type=int, default=0,
                        help="N > 0: also store the base model's greedy N-token continuations (distilled dataset)")
    parser.add_argument("--examples_per_shard", type=int, default=spec.examples_per_shard)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--dtype", default="float32", help="dtype of the base model while it runs")
    parser.add_argument("--device", default=None)
    parser.add_argument("--num_threads", type=int, default=None)
    parser.add_argument("--no_progress", action="store_true")
    return parser


def main(argv: Optional[Sequence[str]] = None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    from ..engine.loading import load_base_model, load_tokenizer
    from .build import build_features

    try:
        spec = FeatureSpec(
            model_max_length=args.model_max_length, train_on_assistant_only=args.train_on_assistant_only,
            max_examples=args.max_examples, num_eval_examples=args.num_eval_examples, seed=args.seed,
            hidden_dtype=args.hidden_dtype, hidden_layers=tuple(args.hidden_layers),
            distill_num_future_tokens=args.distill_num_future_tokens, examples_per_shard=args.examples_per_shard,
        )
    except ValueError as error:
        build_parser().error(str(error))
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_base_model(args.llm_name_or_path, dtype=args.dtype, device=device)
    tokenizer = load_tokenizer(args.llm_name_or_path)
    started = time.perf_counter()
    cache = build_features(model, tokenizer, args.dataset_name, args.output_dir, spec, args.batch_size,
                           progress=not args.no_progress)
    print(f"Feature cache {cache.root}: {cache.num_examples('train')} train / {cache.num_examples('eval')} eval "
          f"examples in {time.perf_counter() - started:.1f} s; train with --features_dir {cache.root}")
    return cache


if __name__ == "__main__":
    sys.exit(run_main(main))
