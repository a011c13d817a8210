"""Benchmark reports: a Markdown table, a JSON file and a PNG chart."""

from __future__ import annotations

import os
from typing import Any

METHOD_LABELS = {
    "hf_generate": "transformers generate (greedy)",
    "autoregressive": "drafter autoregressive loop",
    "speculative": "speculative (drafter + tree)",
}


def markdown_table(summary: dict[str, Any]) -> str:
    """One row per method: tokens/s, speed-up over transformers generate, tau, identical answers."""
    lines = [
        "| method | prompts | tokens | seconds | tok/s | speed-up | tau | identical to generate |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method, entry in summary["methods"].items():
        speedup = f"{entry['speedup']:.2f}x" if "speedup" in entry else "1.00x"
        tau = f"{entry['tau']:.2f}" if "tau" in entry else "1.00"
        identical = f"{entry['identical']}/{entry['prompts']}" if "identical" in entry else "-"
        lines.append(
            f"| {METHOD_LABELS.get(method, method)} | {entry['prompts']} | {entry['generated_tokens']} | "
            f"{entry['seconds']:.1f} | {entry['tokens_per_second']:.1f} | {speedup} | {tau} | {identical} |"
        )
    for name in summary.get("speculators", []):
        entry = summary["methods"].get(name, {})
        label = "" if len(summary["speculators"]) == 1 else f" ({name})"
        if entry.get("acceptance_by_position"):
            rates = ", ".join(f"{r:.2f}" for r in entry["acceptance_by_position"])
            lines.append(f"\nAcceptance rate by drafted position{label}: {rates}")
        if entry.get("overhead_c") is not None:
            lines.append(f"Overhead c = tau / speed-up - 1{label} = {entry['overhead_c']:.2f}")
        split = entry.get("time_split_s")
        if split:
            total = sum(split.values()) or 1.0
            parts = ", ".join(f"{k[:-2]} {100 * v / total:.0f}%" for k, v in split.items())
            lines.append(f"Speculative time split{label}: {parts}")
    return "\n".join(lines)


def plot_summary(summary: dict[str, Any], path: str, title: str = "") -> None:
    """Two panels: speed-up per method, and acceptance rate by drafted position."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    methods = list(summary["methods"])
    speedups = [summary["methods"][m].get("speedup", 1.0) for m in methods]
    bars = left.bar([METHOD_LABELS.get(m, m).split(" (")[0] for m in methods], speedups, color="#4a78b5")
    left.bar_label(bars, fmt="%.2fx")
    left.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    left.set_ylabel("speed-up over transformers generate")
    left.tick_params(axis="x", labelrotation=15)
    names = summary.get("speculators", [])
    for name in names:
        rates = summary["methods"].get(name, {}).get("acceptance_by_position", [])
        if rates:
            tau = summary["methods"][name].get("tau", 0.0)
            right.plot(range(1, len(rates) + 1), rates, marker="o", label=f"{name} (tau {tau:.2f})")
    if names:
        right.xaxis.get_major_locator().set_params(integer=True)
        right.set_ylim(0, 1)
        right.legend(fontsize=8)
    right.set_xlabel("drafted position")
    right.set_ylabel("acceptance rate")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
