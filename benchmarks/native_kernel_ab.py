"""The native few-row kernel of another git revision against the working tree's, in one process, interleaved.

    python benchmarks/native_kernel_ab.py --base HEAD~1 [--rows 1 8 9 12 16 --rounds 10 --output FILE.json]

Both sources are built as separate operator libraries; every round times all of the embedded model's linear layers
through each build, in a shuffled order, so machine-load drift falls on both alike. Outputs are checked
bit-identical between the builds first (the kernel's batch invariance makes that the expected result of any
change to its loop order over rows). Medians in ms; a table and JSON.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils import cpp_extension

from drafter.engine import EMBEDDED_BASE_MODEL, load_base_model
from drafter.engine.native import COMPILE_FLAGS, SOURCE
from drafter.evaluation.benchmark import environment


def build(name: str, source_text: str, folder: Path):
    """Compile `source_text` as the operator library `drafter_<name>`; returns its rows_linear op."""
    text = source_text.replace("TORCH_LIBRARY(drafter,", f"TORCH_LIBRARY(drafter_{name},")
    text = text.replace("TORCH_LIBRARY_IMPL(drafter,", f"TORCH_LIBRARY_IMPL(drafter_{name},")
    (folder / name).mkdir(parents=True, exist_ok=True)
    path = folder / name / "rows_linear.cpp"
    path.write_text(text)
    cpp_extension.load(name=f"drafter_ab_{name}", sources=[str(path)], extra_cflags=COMPILE_FLAGS,
                       extra_ldflags=["-fopenmp"], is_python_module=False, build_directory=str(folder / name))
    return getattr(torch.ops, f"drafter_{name}").rows_linear


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--base", required=True, help="git revision whose kernel is the 'before'")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8, 9, 10, 12, 14, 16, 24])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    relative = SOURCE.relative_to(Path(__file__).resolve().parents[1])
    before = subprocess.run(["git", "show", f"{args.base}:{relative}"], capture_output=True, text=True,
                            check=True).stdout
    with tempfile.TemporaryDirectory() as folder:
        ops = {"before": build("before", before, Path(folder)), "after": build("after", SOURCE.read_text(),
                                                                               Path(folder))}
        model = load_base_model(EMBEDDED_BASE_MODEL, small_batch_kernels=False)
        weights = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
        table = {}
        for rows in args.rows:
            inputs = {w.shape[1]: torch.randn(rows, w.shape[1]) for w in weights}
            for weight in weights:
                x = inputs[weight.shape[1]]
                if not torch.equal(ops["before"](x, weight, None), ops["after"](x, weight, None)):
                    raise SystemExit(f"the builds differ at {rows} rows, weight {tuple(weight.shape)}")
            times = {name: [] for name in ops}
            rng = random.Random(rows)
            for _ in range(args.rounds + 1):  # the first round warms up
                order = list(ops.items())
                rng.shuffle(order)
                for name, op in order:
                    start = time.perf_counter()
                    for weight in weights:
                        op(inputs[weight.shape[1]], weight, None)
                    times[name].append((time.perf_counter() - start) * 1e3)
            table[rows] = {name: round(statistics.median(ms[1:]), 1) for name, ms in times.items()}
            print(f"rows {rows}: before {table[rows]['before']} ms, after {table[rows]['after']} ms", flush=True)
    print(f"\n{len(weights)} linear layers, {torch.get_num_threads()} threads, median of {args.rounds} rounds (ms)")
    print("| rows | " + " | ".join(str(r) for r in table) + " |")
    print("|---|" + "---|" * len(table))
    for name in ("before", "after"):
        print(f"| {name} ({args.base if name == 'before' else 'working tree'}) | "
              + " | ".join(str(row[name]) for row in table.values()) + " |")
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"environment": environment(), "base": args.base, "layers": len(weights),
                       "rounds": args.rounds, "milliseconds": table}, f, indent=2)


if __name__ == "__main__":
    main()
