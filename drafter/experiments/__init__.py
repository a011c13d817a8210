"""Experiment sweeps: a declarative grid of drafters (method x scope x family x data), trained under equal
budgets and compared in shared benchmark runs (`experiment_paper_reproduction.py`)."""

from .grid import AXES, FAMILIES, METHODS, SCOPES, Cell, ExperimentGrid, GridError
from .report import collect_results, results_table, write_report
from .runner import ExperimentRunner, format_plan

__all__ = [
    "AXES",
    "FAMILIES",
    "METHODS",
    "SCOPES",
    "Cell",
    "ExperimentGrid",
    "ExperimentRunner",
    "GridError",
    "collect_results",
    "format_plan",
    "results_table",
    "write_report",
]
