"""Training throughput from the feature cache against the live path, side by side in one run.

The same drafter (a fresh copy each), the same batches, the same number of optimizer steps, interleaved step by
step: once with the frozen base model running in every step, once reading its hidden states from a feature cache
built just before (its build time is reported too). Prints a table and writes JSON.

    python benchmarks/feature_training.py [--dataset_name sharegpt --max_examples 96 --model_max_length 256 \\
        --batch_size 8 --steps 10 --output benchmarks/results/feature_training.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time

import torch

from drafter.data import DataCollatorForDrafter, build_tokenized_datasets
from drafter.engine import EMBEDDED_BASE_MODEL, load_base_model, load_tokenizer
from drafter.evaluation.benchmark import environment
from drafter.features import FeatureDataset, FeatureSpec, build_features
from drafter.models import AutoDrafter, get_family
from drafter.training.arguments import DrafterTrainingArguments
from drafter.training.trainer import DrafterTrainer


def interleaved_steps(trainers: dict, batches: dict, steps: int) -> dict:
    """Per input: seconds for `steps` optimizer steps (forward, backward, AdamW) and the labelled targets trained on.

    The inputs take turns step by step, so the machine's drift (this VM's speed moves by +-20 % within minutes)
    falls on both alike."""
    optimizers = {name: torch.optim.AdamW(trainer.model.parameters(), lr=1e-3) for name, trainer in trainers.items()}
    results = {name: {"seconds": 0.0, "labelled_tokens": 0} for name in trainers}
    for step in range(steps + 1):  # step 0 warms up and is not counted
        for name, trainer in trainers.items():
            batch = batches[name][step % len(batches[name])]
            start = time.perf_counter()
            loss = trainer.drafter_forward(trainer.model, batch).loss
            loss.backward()
            optimizers[name].step()
            optimizers[name].zero_grad()
            if step:
                results[name]["seconds"] += time.perf_counter() - start
                results[name]["labelled_tokens"] += int((batch["labels"][:, 1:] != -100).sum())
    for entry in results.values():
        entry["tokens_per_second"] = entry["labelled_tokens"] / entry["seconds"]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--llm_name_or_path", default=EMBEDDED_BASE_MODEL)
    parser.add_argument("--dataset_name", default="sharegpt")
    parser.add_argument("--max_examples", type=int, default=96)
    parser.add_argument("--model_max_length", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--draft_vocab_size", type=int, default=4096)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()

    base = load_base_model(args.llm_name_or_path)
    tokenizer = load_tokenizer(args.llm_name_or_path)
    spec = FeatureSpec(model_max_length=args.model_max_length, max_examples=args.max_examples, num_eval_examples=8)
    tokenized = build_tokenized_datasets(tokenizer, args.dataset_name, **spec.tokenized_params())
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        cache = build_features(base, tokenizer, args.dataset_name, folder, spec, batch_size=args.batch_size,
                               progress=False)
        build_seconds = time.perf_counter() - started
        cached_rows = FeatureDataset(cache, "train")
        collate = DataCollatorForDrafter(pad_token_id=tokenizer.pad_token_id)
        rows = range(min(len(cached_rows), args.steps * args.batch_size))
        chunks = [list(rows[i : i + args.batch_size]) for i in range(0, len(rows), args.batch_size)]
        live = [collate([tokenized["train"][i] for i in chunk]) for chunk in chunks]
        cached = [collate([cached_rows[i] for i in chunk]) for chunk in chunks]
        config = get_family("redrafter").build_config(
            {"drafter_num_layers": 2, "exit_dim_multiplier": 1.0, "rnn": True, "drafter_predict_n_tokens": 4},
            hidden_size=576, vocab_size=base.get_input_embeddings().num_embeddings,
            base_model_name_or_path=args.llm_name_or_path, draft_vocab_size=args.draft_vocab_size,
        )
        torch.manual_seed(0)
        drafter = AutoDrafter.from_config(config)
        trainers = {
            name: DrafterTrainer(model=copy.deepcopy(drafter), base_model=base, data_collator=collate,
                                 args=DrafterTrainingArguments(output_dir=folder, use_cpu=True, report_to=["none"]))
            for name in ("live", "feature_cache")
        }
        results = interleaved_steps(trainers, {"live": live, "feature_cache": cached}, args.steps)
    speedup = results["feature_cache"]["tokens_per_second"] / results["live"]["tokens_per_second"]
    report = {"settings": vars(args), "feature_build_seconds": build_seconds,
              "feature_tokens": sum(s["tokens"] for s in cache.shards("train") + cache.shards("eval")),
              "methods": results, "speedup": speedup, "environment": environment()}
    print("| training step input | labelled tokens/s | seconds for %d steps |" % args.steps)
    print("|---|---|---|")
    for name, entry in results.items():
        print(f"| {name} | {entry['tokens_per_second']:.0f} | {entry['seconds']:.1f} |")
    print(f"\nFeature cache: {speedup:.1f}x the live path's labelled tokens/s; the cache took "
          f"{build_seconds:.1f} s to build ({report['feature_tokens']} tokens)")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
