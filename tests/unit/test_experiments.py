"""experiment_paper_reproduction.py: the grid, its validation, the plan and the result charts."""

from __future__ import annotations

from pathlib import Path

import pytest

from drafter.experiments import Cell, ExperimentGrid, ExperimentRunner, GridError


def _grid(tmp_path: Path, **spec) -> ExperimentGrid:
    return ExperimentGrid(**{"name": "t", "output_dir": str(tmp_path / "out"), **spec})


def test_grid_expands_product_then_extra_cells_with_overrides(tmp_path):
    grid = _grid(
        tmp_path,
        axes={"method": ["ground_truth", "self_distilled"], "family": ["redrafter"], "eval_dataset": ["mtbench"]},
        cells=[{"family": "arctic_lstm"}, {"draft_vocab_size": None, "max_steps": 5}],
        training={"max_steps": 10, "draft_vocab_size": 512},
        method_arguments={"knowledge_distillation": {"kd_alpha": 1.0}},
    )
    cells = grid.expand()
    assert [c.method for c in cells] == ["ground_truth", "self_distilled", "ground_truth", "ground_truth"]
    assert cells[2].family == "arctic_lstm"
    assert cells[3].name == "redrafter-ground_truth-assistant_only-sharegpt-draft_vocab_size=full-max_steps=5"
    assert len({c.name for c in cells}) == 4
    args = grid.train_arguments(cells[3])
    assert (args["max_steps"], args["draft_vocab_size"]) == (5, None)  # the override beats the shared budget
    assert args["use_knowledge_distillation"] is False and args["train_on_assistant_only"] is True
    assert grid.train_arguments(cells[0])["max_steps"] == 10
    kd = Cell("knowledge_distillation", "full", "redrafter", "sharegpt")
    kd_args = grid.train_arguments(kd)
    assert kd_args["use_knowledge_distillation"] and kd_args["kd_alpha"] == 1.0
    assert kd_args["train_on_assistant_only"] is False


def test_the_family_axis_takes_every_registered_family(tmp_path):
    grid = _grid(tmp_path, axes={"family": ["redrafter", "arctic_lstm", "eagle3"]},
                 family_arguments={"eagle3": {"drafter_predict_n_tokens": 3, "eagle3_aux_layers": [1, 2, 3]}})
    cells = grid.expand()
    assert [c.family for c in cells] == ["redrafter", "arctic_lstm", "eagle3"]
    args = grid.train_arguments(cells[2])
    assert args["drafter_type"] == "eagle3" and args["eagle3_aux_layers"] == [1, 2, 3]
    assert "eagle3_aux_layers" not in grid.train_arguments(cells[0])


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"axes": {"method": ["magic"]}}, "unknown method"),
        ({"training": {"use_knowledge_distillation": True}}, "axes decide"),
        ({"cells": [{"eval_dataset": "mtbench"}]}, "training axes only"),
        ({"cells": [{"method": "ground_truth"}]}, "listed twice"),
        ({"axes": {"train_dataset": "sharegpt"}}, "must be a list"),
        ({"axes": {"methods": ["ground_truth"]}}, "unknown axes"),
        ({"family_arguments": {"redrafter": {"seed": 1}}}, "held-out split is one for the whole grid"),
        ({"evaluation": {"beam_widht": 2}}, "unknown evaluation keys"),
        ({"evaluation": {"baselines": ["autoregressive"]}}, "must include hf_generate"),
    ],
)
def test_grid_rejects_inconsistent_specs(tmp_path, spec, message):
    with pytest.raises(GridError, match=message):
        _grid(tmp_path, **spec)


def test_dry_run_prints_plan_with_estimate(tmp_path, capsys):
    grid = _grid(tmp_path, axes={"method": ["ground_truth", "distilled_dataset"]}, training={"max_steps": 30})
    steps = ExperimentRunner(grid).run(dry_run=True)
    out = capsys.readouterr().out
    assert [s.kind for s in steps] == ["train", "train", "benchmark"]
    assert all(s.estimate_s > 0 for s in steps)
    assert "3 of 3 steps to run, estimated" in out
    assert steps[1].estimate_s > steps[0].estimate_s  # distillation costs extra
    assert not (tmp_path / "out").exists()  # a dry run writes nothing


@pytest.mark.parametrize("positions", [1, 3])
def test_charts_for_one_and_several_drafted_positions(tmp_path, positions):
    from drafter.experiments.report import plot_results, results_table

    cells = [
        {"name": name, "method": "ground_truth", "scope": "assistant_only", "family": "redrafter",
         "train_dataset": "sharegpt", "train_arguments": {"draft_vocab_size": 4096}, "reference_accuracy": {},
         "training": {"train_steps": 3, "train_seconds": 60.0, "drafter_parameters": 1e6},
         "evaluations": {"mtbench": {"tau": 1.2, "speedup": 1.1, "identical": 2, "prompts": 2,
                                     "acceptance_by_position": [0.5 / (k + 1) for k in range(positions)]}}}
        for name in ("a", "b")
    ]
    cells[1]["evaluations"] = {}  # not measured: no bar, no line, a dash in the table
    results = {"grid": {"axes": {"eval_dataset": ["mtbench"]}}, "cells": cells, "baselines": {},
               "stale_or_missing_benchmarks": ["mtbench"]}
    paths = plot_results(results, tmp_path)
    assert all(p.stat().st_size > 1000 for p in paths)
    table = results_table(results)
    assert "| a |" in table and "1.10x" in table and "| b |" in table
    assert "Not measured for the current cells" in table
