"""generate_speculator.py end to end on the embedded model: the chat, the MT-Bench comparison, several drafters."""

from __future__ import annotations

import json
import os

import pytest

from tests.fakes import run_cli

pytestmark = pytest.mark.e2e


def test_interactive_chat_driven_through_stdin(embedded_random_drafter):
    result = run_cli(
        ["--speculator_path", embedded_random_drafter, "--interactive", "--max_generation_length", "12",
         "--beam_width", "2"],  # a fixed shape: planning it is tested in tests/unit/test_benchmark_cli.py
        stdin="What is the capital of France?\n/reset\nName a colour.\n/exit\n",
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.count("assistant> ") == 2
    assert "(history cleared)" in out
    assert out.count("tok/s") == 2 and "tokens/step]" in out
    assert "Paris" in out


def test_mt_bench_compare_writes_json_and_chart(embedded_random_drafter, tmp_path):
    output = tmp_path / "bench.json"
    result = run_cli([
        "--speculator_path", embedded_random_drafter, "--eval_mt_bench", "--compare", "--max_num_prompts", "2",
        "--max_generation_length", "8", "--warmup", "0", "--output_file", str(output), "--beam_width", "2",
    ])
    assert result.returncode == 0, result.stderr
    data = json.loads(output.read_text())
    assert {"tau", "speedup", "identical_fraction", "methods", "environment", "settings"} <= set(data)
    assert data["identical_fraction"] == 1.0  # lossless even with an untrained drafter
    assert data["methods"]["speculative"]["prompts"] == 2
    assert (tmp_path / "bench.png").is_file()
    assert "| speculative" in result.stdout


def test_compare_times_several_drafters_in_one_run(embedded_random_drafter, tmp_path):
    output = tmp_path / "two.json"
    result = run_cli([
        "--speculator_path", embedded_random_drafter, embedded_random_drafter, "--eval_mt_bench", "--compare",
        "--max_num_prompts", "1", "--max_generation_length", "6", "--warmup", "0", "--output_file", str(output),
        "--beam_width", "2",
    ])
    assert result.returncode == 0, result.stderr
    data = json.loads(output.read_text())
    name = os.path.basename(embedded_random_drafter)
    assert data["speculators"] == [name, f"{name}-1"]
    for method in data["speculators"]:
        assert data["methods"][method]["identical"] == 1
    assert data["answers"][0][name]["identical_to_generate"] is True
