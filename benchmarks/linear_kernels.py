"""The base model's linear layers at M rows through each CPU path of `engine/kernels.py`: torch's `F.linear`
(MKL), the transposed product `(W @ x.T).T` (the fallback without a compiler) and the native kernel.

    python benchmarks/linear_kernels.py [--rows 1 2 4 8 12 16 17 24 32 64 --repeats 7 --output FILE.json]

Every linear layer of the model once per round (all weights streamed from memory, as in a decoding step), the
paths interleaved round by round; medians in ms; a table and JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch import nn
from torch.nn import functional as F

from drafter.engine import EMBEDDED_BASE_MODEL, kernels, load_base_model, small_batch_linear
from drafter.evaluation.benchmark import environment

PATHS = {"torch F.linear (MKL)": F.linear, "(W @ x.T).T": kernels.transposed_linear,
         "native kernel": small_batch_linear}


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--llm_name_or_path", default=EMBEDDED_BASE_MODEL)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8, 12, 16, 17, 24, 32, 64])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    if kernels.rows_linear_op() is None:
        raise SystemExit("the native kernel is unavailable here (see the log line above)")
    model = load_base_model(args.llm_name_or_path, small_batch_kernels=False)
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    table = {}
    for rows in args.rows:
        inputs = {w.shape[1]: torch.randn(rows, w.shape[1]) for w in weights}
        times = {name: [] for name in PATHS}
        for _ in range(args.repeats + 1):  # the first round warms up
            for name, path in PATHS.items():
                start = time.perf_counter()
                for weight in weights:
                    path(inputs[weight.shape[1]], weight)
                times[name].append((time.perf_counter() - start) * 1e3)
        table[rows] = {name: round(statistics.median(ms[1:]), 1) for name, ms in times.items()}
        print(f"rows {rows}: " + ", ".join(f"{name} {ms} ms" for name, ms in table[rows].items()), flush=True)

    print(f"\n{len(weights)} linear layers, {torch.get_num_threads()} threads, median of {args.repeats} rounds (ms)")
    print("| rows | " + " | ".join(PATHS) + " |")
    print("|---|" + "---|" * len(PATHS))
    for rows, row in table.items():
        print(f"| {rows} | " + " | ".join(str(row[name]) for name in PATHS) + " |")
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"environment": environment(), "layers": len(weights), "repeats": args.repeats,
                       "ms": table}, f, indent=2)
        print(f"Wrote {args.output}")


if __name__ == "__main__":
    main()
