"""Where a verification step's time goes: one forward over N tree nodes relative to a 1-token step, at the same
cache length, through the toolkit's path (4-D tree mask over a slot cache, output layer on the nodes) and through
a bare `model(...)` call (causal, transformers' own mask); plus the mask building, acceptance and cache commit.

    python benchmarks/verify_cost.py [--context 300 --nodes 1 2 3 5 9 17 --repeats 10 --output FILE.json]

Medians of `--repeats` runs after a warm-up; a table and JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from drafter.engine import EMBEDDED_BASE_MODEL, BaseLM, load_base_model
from drafter.evaluation.benchmark import environment
from drafter.generation import build_tree, greedy_accept


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def chain_beams(root: int, nodes: int, width: int = 1) -> torch.Tensor:
    """(1, W, L) beams whose packed tree has `nodes` nodes: W chains of distinct tokens below one root."""
    length = 1 + (nodes - 1) // width
    beams = torch.full((1, width, length), root)
    token = root + 1
    for w in range(width):
        for d in range(1, length):
            beams[0, w, d] = token
            token += 1
    return beams


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
    lm = BaseLM(model)
    prompt = list(range(100, 100 + args.context))
    cache, _ = lm.prefill([prompt])
    base_layers = [(layer.keys.clone(), layer.values.clone()) for layer in cache.cache.layers]
    bare = model(input_ids=torch.tensor([prompt]), use_cache=True).past_key_values

    def reset() -> None:
        for layer, (k, v) in zip(cache.cache.layers, base_layers):
            layer.keys, layer.values = k, v
        cache.ends_host, cache.ends = [args.context], torch.tensor([args.context])
        bare.crop(args.context)

    rows = []
    for n in args.nodes:
        width = 1 if n == 1 else 2 if (n - 1) % 2 == 0 else 1
        tree = build_tree(chain_beams(5, n, width) if n > 1 else torch.tensor([[[5, 6]]])[:, :, :1])

        def toolkit_forward(tree=tree):
            reset()
            mask = cache.attention_mask(tree.ancestor_mask, lm.mask_dtype)
            hidden = lm.forward(tree.tokens, mask, tree.position_ids(cache.context_lengths), cache)
            return lm.logits(hidden)

        def bare_forward(n=n):
            bare.crop(args.context)
            return model(input_ids=torch.arange(5, 5 + n)[None], past_key_values=bare, use_cache=True).logits

        def mask_only(tree=tree):
            return cache.attention_mask(tree.ancestor_mask, lm.mask_dtype)

        logits = toolkit_forward()

        def accept_and_commit(tree=tree, logits=logits):
            accepted = greedy_accept(tree, logits)
            cache.commit(accepted.path_nodes, accepted.num_accepted + 1, [int(accepted.num_accepted) + 1])

        row = {"nodes": tree.size, "toolkit_forward_ms": median_ms(toolkit_forward, args.repeats),
               "bare_forward_ms": median_ms(bare_forward, args.repeats),
               "mask_ms": median_ms(mask_only, args.repeats)}
        toolkit_forward()
        row["accept_commit_ms"] = median_ms(lambda: (toolkit_forward(), accept_and_commit()), args.repeats) - \
            row["toolkit_forward_ms"]
        rows.append(row)
    one_token = rows[0]["bare_forward_ms"]
    print("| nodes | toolkit forward ms | x 1-token | bare model() ms | x 1-token | mask ms | accept + commit ms |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['nodes']} | {r['toolkit_forward_ms']:.1f} | {r['toolkit_forward_ms'] / one_token:.2f} | "
              f"{r['bare_forward_ms']:.1f} | {r['bare_forward_ms'] / one_token:.2f} | {r['mask_ms']:.2f} | "
              f"{r['accept_commit_ms']:.2f} |")
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"settings": vars(args), "rows": rows, "threads": torch.get_num_threads(),
                       "environment": environment()}, f, indent=2)


if __name__ == "__main__":
    main()
