#!/usr/bin/env python
"""Sweeps that answer the papers' questions with measurements: a grid of drafters trained under equal budgets
(method x scope x family x training data), each evaluated for accuracy and, in one shared benchmark run per
evaluation dataset, for tau and speed-up against plain decoding.

    python experiment_paper_reproduction.py --quick                  # embedded model, <= 45 min on 2 CPU cores
    python experiment_paper_reproduction.py --quick --dry_run        # the plan and its estimated time
    python experiment_paper_reproduction.py configs/experiments/smollm2-cpu.yaml
    python experiment_paper_reproduction.py GRID.yaml --output_dir outputs/experiments/mine

Re-running skips what is done (finished cells, teacher data, benchmarks whose cells did not change); a killed
sweep continues where it stopped. Outputs in the grid's output_dir: results.json, results.md, tau_speedup.png,
acceptance_by_position.png, cells/<cell>/ (drafter, logs), runs/<cell>/ (tensorboard), benchmarks/.
See configs/experiments/ for the grid format (drafter/experiments/grid.py documents every key).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import yaml

from drafter.errors import run_main
from drafter.experiments import ExperimentGrid, ExperimentRunner, GridError, results_table, write_report

QUICK_GRID = Path(__file__).resolve().parent / "configs" / "experiments" / "quick.yaml"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="experiment_paper_reproduction.py", description=__doc__.split("\n\n")[0], allow_abbrev=False
    )
    parser.add_argument("grid", nargs="?", help="grid YAML (see configs/experiments/)")
    parser.add_argument("--quick", action="store_true", help=f"the small grid {QUICK_GRID.name} on the embedded model")
    parser.add_argument("--dry_run", action="store_true", help="print the plan with estimated times, run nothing")
    parser.add_argument("--output_dir", default=None, help="override the grid's output_dir")
    parser.add_argument("--report_only", action="store_true", help="rewrite results/table/charts from what is done")
    return parser


def main(argv: list[str]) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    args = build_parser().parse_args(argv)
    if bool(args.grid) == bool(args.quick):
        print("error: give a grid file or --quick (not both)", file=sys.stderr)
        return 2
    try:
        grid = ExperimentGrid.from_yaml(args.grid or QUICK_GRID, output_dir=args.output_dir)
    except (GridError, OSError, yaml.YAMLError, TypeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    runner = ExperimentRunner(grid)
    if not args.report_only:
        try:
            runner.run(dry_run=args.dry_run)
        except RuntimeError as error:  # a grid that contradicts its output folder, a failed cell (log named)
            print(f"error: {error}", file=sys.stderr)
            return 1
        if args.dry_run:
            return 0
    results, paths = write_report(runner)
    print("\n" + results_table(results))
    print("\nWrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
