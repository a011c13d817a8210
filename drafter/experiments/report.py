"""An experiment's outputs: results.json (every number and config), results.md (the table) and PNG charts."""

from __future__ import annotations

import time
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

from ..store import write_json
from .grid import ExperimentGrid
from .runner import ExperimentRunner, read_json

PACKAGES = ("torch", "transformers", "accelerate", "datasets", "peft", "numpy", "drafter")


def package_versions() -> dict[str, Optional[str]]:
    versions: dict[str, Optional[str]] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def collect_results(runner: ExperimentRunner) -> dict[str, Any]:
    """Gather every finished cell's training summary, its accuracy on the shared held-out split and its
    numbers in each evaluation benchmark."""
    from ..evaluation.benchmark import environment

    grid = runner.grid
    # only benchmarks measured for exactly these cells, drafters and settings; others are listed as stale
    states = {name: runner.benchmark_state(name) for name in grid.eval_datasets}
    benchmarks = {name: read_json(runner.benchmark_path(name)) if state == "done" else None
                  for name, state in states.items()}
    cells = []
    for cell in runner.cells:
        folder = grid.cell_dir(cell)
        training = read_json(folder / "drafter_eval.json")
        reference = read_json(folder / "reference_eval" / "drafter_eval.json") \
            if runner.needs_reference_eval(cell) else training
        evaluations = {}
        for eval_dataset, summary in benchmarks.items():
            entry = (summary or {}).get("methods", {}).get(cell.name)
            if entry:
                evaluations[eval_dataset] = {k: entry.get(k) for k in (
                    "tau", "speedup", "tokens_per_second", "identical", "prompts", "acceptance_by_position",
                    "overhead_c", "time_split_s")}
        cells.append({
            **cell.describe(),
            "train_arguments": runner.cell_arguments(cell),
            "training": training,
            "reference_accuracy": {k: v for k, v in (reference or {}).items() if k.startswith("eval_")},
            "evaluations": evaluations,
        })
    baselines = {
        name: {k: v for k, v in summary["methods"].items() if k not in summary.get("speculators", [])}
        for name, summary in benchmarks.items() if summary
    }
    return {
        "grid": grid.to_dict(),
        "written": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "environment": environment(),
        "versions": package_versions(),
        "reference_split": grid.reference_split(),
        "cells": cells,
        "baselines": baselines,
        "benchmarks": {name: {k: v for k, v in s.items() if k != "methods"} for name, s in benchmarks.items() if s},
        "stale_or_missing_benchmarks": [name for name, state in states.items() if state != "done"],
    }


def _fmt(value: Any, pattern: str = "{:.3f}") -> str:
    return "-" if value is None else pattern.format(value)


def results_table(results: dict[str, Any]) -> str:
    """One row per (cell, evaluation dataset). Accuracy is on the held-out split of the training data (assistant
    tokens), the same for every eval dataset row of a cell; tau and speed-up are per eval dataset."""
    lines = [
        "| cell | method | scope | family | train data | eval data | draft vocab | params | steps | train min | "
        "held-out step-1 top-1 | held-out step-1 top-5 | tau | speed-up | identical |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cell in results["cells"]:
        training = cell["training"] or {}
        accuracy = cell["reference_accuracy"]
        vocab = cell["train_arguments"].get("draft_vocab_size") or "full"
        minutes = training["train_seconds"] / 60 if "train_seconds" in training else None
        params = training.get("drafter_parameters")
        for eval_dataset in results["grid"]["axes"]["eval_dataset"]:
            ev = cell["evaluations"].get(eval_dataset, {})
            identical = f"{ev['identical']}/{ev['prompts']}" if ev.get("prompts") else "-"
            lines.append(
                f"| {cell['name']} | {cell['method']} | {cell['scope']} | {cell['family']} | "
                f"{Path(cell['train_dataset']).stem} | {Path(eval_dataset).stem} | {vocab} | "
                f"{_fmt(params / 1e6 if params else None, '{:.2f} M')} | "
                f"{training.get('train_steps', '-')} | {_fmt(minutes, '{:.1f}')} | "
                f"{_fmt(accuracy.get('eval_step1_top1'))} | {_fmt(accuracy.get('eval_step1_top5'))} | "
                f"{_fmt(ev.get('tau'), '{:.2f}')} | {_fmt(ev.get('speedup'), '{:.2f}x')} | {identical} |"
            )
    notes = []
    for eval_dataset, methods in results["baselines"].items():
        for method, entry in methods.items():
            notes.append(f"- {Path(eval_dataset).stem}: {method} {entry['tokens_per_second']:.1f} tok/s over "
                         f"{entry['prompts']} prompts ({entry['generated_tokens']} tokens)")
    if notes:
        lines += ["", "Baselines measured in the same benchmark runs:", *notes]
    if results["stale_or_missing_benchmarks"]:
        lines += ["", "Not measured for the current cells (run the sweep to update): "
                  + ", ".join(results["stale_or_missing_benchmarks"])]
    return "\n".join(lines)


def plot_results(results: dict[str, Any], folder: Path) -> list[Path]:
    """tau_speedup.png (tau and speed-up per cell, one group per evaluation dataset) and
    acceptance_by_position.png (acceptance rate by drafted position, one line per cell)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    eval_datasets = results["grid"]["axes"]["eval_dataset"]
    cells = results["cells"]
    names = [c["name"] for c in cells]
    written = []

    fig, axes = plt.subplots(len(eval_datasets), 2, figsize=(14, 1.4 + 0.45 * len(cells) * len(eval_datasets)),
                             squeeze=False, sharey="row")
    for row, eval_dataset in enumerate(eval_datasets):
        for col, (metric, label) in enumerate((("tau", "tau (tokens per verification step)"),
                                               ("speedup", "speed-up over transformers generate"))):
            ax = axes[row][col]
            # a cell without a measurement gets no bar (NaN), not a zero
            values = [(c["evaluations"].get(eval_dataset) or {}).get(metric) or float("nan") for c in cells]
            bars = ax.barh(names, values, color="#4a78b5" if metric == "tau" else "#c0504d")
            ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=2)
            measured = [v for v in values if v == v]  # drop NaN
            ax.set_xlim(0, 1.15 * max(measured + [1.0]))
            ax.axvline(1.0, color="grey", linewidth=0.8, linestyle="--")
            ax.set_xlabel(label)
            ax.set_title(f"eval: {Path(eval_dataset).stem}", fontsize=9)
            ax.tick_params(axis="y", labelsize=7, labelleft=col == 0)
            if col == 0:
                ax.invert_yaxis()  # shared y: inverting once keeps the grid's cell order top-down
    fig.tight_layout()
    path = folder / "tau_speedup.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    longest = max((len((c["evaluations"].get(d) or {}).get("acceptance_by_position") or [])
                   for c in cells for d in eval_datasets), default=0)
    if longest <= 1:  # one drafted position (beam_length 2): bars per cell, a line would be a dot
        fig, axes = plt.subplots(1, len(eval_datasets), figsize=(7 * len(eval_datasets), 1.4 + 0.45 * len(cells)),
                                 squeeze=False, sharey="row")
    else:
        fig, axes = plt.subplots(1, len(eval_datasets), figsize=(6 * len(eval_datasets), 4), squeeze=False)
    for col, eval_dataset in enumerate(eval_datasets):
        ax = axes[0][col]
        rates_per_cell = [(c["evaluations"].get(eval_dataset) or {}).get("acceptance_by_position") or []
                          for c in cells]
        if longest <= 1:
            values = [rates[0] if rates else float("nan") for rates in rates_per_cell]
            bars = ax.barh(names, values, color="#6a9f58")
            ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=2)
            ax.set_xlim(0, 1)
            ax.set_xlabel("acceptance rate of drafted position 1")
            ax.tick_params(axis="y", labelsize=7, labelleft=col == 0)
            if col == 0:
                ax.invert_yaxis()
        else:
            for name, rates in zip(names, rates_per_cell):
                if rates:
                    ax.plot(range(1, len(rates) + 1), rates, marker="o", label=name)
            ax.set_xticks(range(1, longest + 1))
            ax.set_xlabel("drafted position")
            ax.set_ylabel("acceptance rate")
            ax.set_ylim(0, 1)
            ax.legend(fontsize=6)
        ax.set_title(f"eval: {Path(eval_dataset).stem}", fontsize=9)
    fig.tight_layout()
    path = folder / "acceptance_by_position.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    return written


def write_report(runner: ExperimentRunner) -> tuple[dict[str, Any], dict[str, Path]]:
    """results.json, results.md and the charts in the grid's output folder; returns the results and the paths."""
    grid: ExperimentGrid = runner.grid
    results = collect_results(runner)
    root = grid.root
    write_json(root / "results.json", results)
    table = results_table(results)
    (root / "results.md").write_text(f"# Experiment '{grid.name}'\n\n{table}\n")
    charts = plot_results(results, root)
    return results, {"json": root / "results.json", "markdown": root / "results.md", **{p.stem: p for p in charts}}
