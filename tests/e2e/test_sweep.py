"""experiment_paper_reproduction.py end to end: a sweep on a tiny model, killed, resumed, then skipped."""

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

from drafter.engine.loading import EMBEDDED_BASE_MODEL, load_tokenizer
from drafter.experiments import ExperimentGrid, ExperimentRunner
from drafter.store import read_jsonl_rows
from tests.fakes import REPO_ROOT as REPO
from tests.fakes import make_tiny_llama

pytestmark = pytest.mark.e2e


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
