"""experiment_paper_reproduction.py: the grid, the plan, and a killed-then-resumed sweep on a tiny model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from drafter.data.generate import read_jsonl_rows
from drafter.experiments import Cell, ExperimentGrid, ExperimentRunner, GridError
from drafter.models.loading import EMBEDDED_BASE_MODEL, load_tokenizer
from tests.tiny_models import make_tiny_llama

REPO = Path(__file__).resolve().parent.parent


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


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    """A tiny random Llama with the embedded tokenizer (real chat template), and a small local chat dataset."""
    root = tmp_path_factory.mktemp("tiny_experiment")
    base_dir = root / "base"
    make_tiny_llama(seed=0, vocab_size=49152, hidden_size=32).save_pretrained(base_dir)
    load_tokenizer(EMBEDDED_BASE_MODEL).save_pretrained(base_dir)
    rows = [
        {"id": f"c{i}", "messages": [
            {"role": "user", "content": f"Count from {i}.\u2028Go on."},  # a line separator inside the JSON
            {"role": "assistant", "content": " ".join(str(i + k) for k in range(12))},
        ]}
        for i in range(40)
    ]
    data = root / "chats.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    grid = {
        "name": "tiny",
        "output_dir": str(root / "out"),
        "base_model": str(base_dir),
        "axes": {"method": ["ground_truth", "self_distilled"], "family": ["redrafter"],
                 "train_dataset": [str(data)], "eval_dataset": ["mtbench", str(data)]},
        "cells": [{"family": "arctic_lstm"}],
        "training": {"max_steps": 3, "num_eval_examples": 6, "model_max_length": 64, "draft_vocab_size": 256,
                     "per_device_train_batch_size": 4, "per_device_eval_batch_size": 4, "save_strategy": "no",
                     "report_to": ["tensorboard"], "logging_steps": 1, "disable_tqdm": True, "seed": 0},
        "family_arguments": {"redrafter": {"drafter_num_layers": 1, "drafter_predict_n_tokens": 2},
                             "arctic_lstm": {"n_speculator_heads": 2}},
        "teacher": {"max_examples": 24, "max_tokens": 8, "batch_size": 4},
        "evaluation": {"max_num_prompts": 2, "max_new_tokens": 6, "warmup": 0},
    }
    grid_file = root / "grid.yaml"
    grid_file.write_text(yaml.safe_dump(grid))
    return grid_file, root / "out"


def _sweep(grid_file: Path, log: Path) -> subprocess.Popen:
    """The sweep CLI in its own process, output to `log` (a file: a pipe nobody reads could fill and block)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    with open(log, "w") as sink:
        return subprocess.Popen(
            [sys.executable, str(REPO / "experiment_paper_reproduction.py"), str(grid_file)],
            cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT, text=True,
        )


def _finish(process: subprocess.Popen, log: Path, timeout: int) -> str:
    process.wait(timeout=timeout)
    return log.read_text()


@pytest.mark.e2e
def test_killed_sweep_resumes_and_a_finished_sweep_skips_everything(tiny_setup):
    grid_file, out = tiny_setup
    first_cell = out / "cells" / "redrafter-ground_truth-assistant_only-chats"

    # 1. Kill the sweep as soon as its first cell has finished training.
    log = out.parent / "sweep.log"
    process = _sweep(grid_file, log)
    deadline = time.time() + 300
    while not (first_cell / "drafter_eval.json").exists():
        assert process.poll() is None, log.read_text()
        assert time.time() < deadline, "first cell never finished"
        time.sleep(0.5)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "results.json").exists()
    first_model_mtime = (first_cell / "model.safetensors").stat().st_mtime

    # 2. Run again: the finished cell is skipped, the rest is done, results are written.
    process = _sweep(grid_file, log)
    output = _finish(process, log, timeout=600)
    assert process.returncode == 0, output
    assert (first_cell / "model.safetensors").stat().st_mtime == first_model_mtime
    assert (first_cell / "train.log").read_text().count("$ ") == 1  # trained exactly once
    results = json.loads((out / "results.json").read_text())
    names = [c["name"] for c in results["cells"]]
    assert names == ["redrafter-ground_truth-assistant_only-chats", "redrafter-self_distilled-assistant_only-chats",
                     "arctic_lstm-ground_truth-assistant_only-chats"]
    data_file = str(grid_file.parent / "chats.jsonl")
    for cell in results["cells"]:
        assert cell["training"]["train_steps"] == 3
        assert 0.0 <= cell["reference_accuracy"]["eval_step1_top1"] <= 1.0
        for eval_dataset in ("mtbench", data_file):
            evaluation = cell["evaluations"][eval_dataset]
            assert evaluation["identical"] == evaluation["prompts"] == 2  # lossless in the sweep's benchmark too
            # tau counts the bonus token plus the accepted drafted positions
            assert evaluation["tau"] == pytest.approx(1 + sum(evaluation["acceptance_by_position"]))
    # the self-distilled cell trained on the teacher's answers, minus every held-out conversation
    runner = ExperimentRunner(ExperimentGrid.from_yaml(grid_file), echo=False)
    held_out = runner.held_out_ids(data_file)
    assert len(held_out) == 6
    teacher_file = Path(results["cells"][1]["train_arguments"]["dataset_name"])
    trained_ids = {row["id"] for row in read_jsonl_rows(teacher_file)}
    assert trained_ids and not trained_ids & held_out
    benchmark = json.loads((out / "benchmarks" / "chats.json").read_text())
    assert set(benchmark["prompt_ids"]) <= held_out  # cross-evaluation prompts come from the held-out split
    assert "hf_generate" in results["baselines"]["mtbench"]
    assert {"torch", "transformers"} <= set(results["versions"]) and results["environment"]["python"]
    table = (out / "results.md").read_text()
    assert table.count("| redrafter-") == 4 and "arctic_lstm" in table  # 2 cells x 2 eval datasets + arctic
    for chart in ("tau_speedup.png", "acceptance_by_position.png"):
        assert (out / chart).stat().st_size > 1000
    assert any((out / "runs" / names[0]).rglob("events.out.tfevents.*"))  # one tensorboard run per cell

    # 3. A third run finds everything done.
    benchmark_mtime = (out / "benchmarks" / "mtbench.json").stat().st_mtime
    process = _sweep(grid_file, log)
    output = _finish(process, log, timeout=300)
    assert process.returncode == 0, output
    assert "0 of 7 steps to run" in output
    assert (out / "benchmarks" / "mtbench.json").stat().st_mtime == benchmark_mtime

    # 4. A grid edited under finished cells is refused before any work, naming the cells.
    spec = yaml.safe_load(grid_file.read_text())
    spec["training"]["max_steps"] = 4
    edited = grid_file.parent / "edited.yaml"
    edited.write_text(yaml.safe_dump(spec))
    process = _sweep(edited, log)
    output = _finish(process, log, timeout=300)
    assert process.returncode == 1
    assert "| changed |" in output and "other arguments than the grid now gives" in output
    assert (out / "benchmarks" / "mtbench.json").stat().st_mtime == benchmark_mtime


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
