"""Where a verification step's time goes: one forward over N tree nodes relative to a 1-token step, at the same
cache length, with torch's stock linear kernels and with the toolkit's small-batch CPU path (`engine/kernels.py`),
through the toolkit's path (4-D tree mask over a slot cache, output layer on the nodes) and through a bare
`model(...)` call (causal, transformers' own mask); plus the mask building, acceptance and cache commit.

    python benchmarks/verify_cost.py [--context 300 --nodes 1 2 3 5 9 17 --repeats 10 --output FILE.json]

Medians of `--repeats` runs after a warm-up; both kernel paths back to back per node count; a table and JSON.
"""

from __future__ import annotations

import argparse
import json

import torch

from drafter.engine import EMBEDDED_BASE_MODEL, load_base_model, stock_kernels
from drafter.evaluation.benchmark import environment
from drafter.generation import build_tree, greedy_accept
from drafter.generation.tree_budget import TreeForwardTimer, chain_beams, median_ms


def crop_to(cache, length: int) -> None:
    """Drop a transformers cache's tokens past `length` (its `crop` takes the number of tokens to drop)."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--llm_name_or_path", default=EMBEDDED_BASE_MODEL)
    parser.add_argument("--context", type=int, default=300)
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 3, 5, 9, 17])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    model = load_base_model(args.llm_name_or_path)
    timer = TreeForwardTimer(model, args.context)
    bare = model(input_ids=torch.arange(100, 100 + args.context)[None], use_cache=True).past_key_values

    def measure(n: int) -> dict:
        tree = build_tree(chain_beams(5, n))

        def bare_forward():
            crop_to(bare, args.context)
            new_tokens = torch.arange(5, 5 + n)[None]
            return model(input_ids=new_tokens, use_cache=True, **{timer.lm.cache_argument: bare}).logits

        def accept_and_commit():
            logits = timer.forward(n)
            accepted = greedy_accept(tree, logits.argmax(dim=-1))
            timer.cache.commit(accepted.path_nodes, accepted.num_accepted + 1, [int(accepted.num_accepted) + 1])

        row = {"nodes": n, "toolkit_forward_ms": timer.milliseconds(n, args.repeats),
               "bare_forward_ms": median_ms(bare_forward, args.repeats),
               "mask_ms": median_ms(lambda: timer.cache.attention_mask(tree.ancestor_mask, timer.lm.mask_dtype),
                                    args.repeats)}
        row["accept_commit_ms"] = median_ms(accept_and_commit, args.repeats) - row["toolkit_forward_ms"]
        return row

    # Both kernel paths per node count, back to back, so drift in machine load hits them alike.
    results: dict = {"stock": [], "small_batch": []}
    for n in args.nodes:
        with stock_kernels(model):
            results["stock"].append(measure(n))
        results["small_batch"].append(measure(n))
    for kernels, rows in results.items():
        one_token = rows[0]["bare_forward_ms"]
        print(f"\n{kernels} kernels ({torch.get_num_threads()} threads, {args.context} cached tokens)")
        print("| nodes | toolkit forward ms | x 1-token | bare model() ms | x 1-token | mask ms | accept + commit ms |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['nodes']} | {r['toolkit_forward_ms']:.1f} | {r['toolkit_forward_ms'] / one_token:.2f} | "
                  f"{r['bare_forward_ms']:.1f} | {r['bare_forward_ms'] / one_token:.2f} | {r['mask_ms']:.2f} | "
                  f"{r['accept_commit_ms']:.2f} |")
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"settings": vars(args), "kernels": results, "threads": torch.get_num_threads(),
                       "environment": environment()}, f, indent=2)


if __name__ == "__main__":
    main()
