"""The `train_speculator.py` command line: presets, recipes and the resolved configuration."""

from __future__ import annotations

import json

import yaml

import train_speculator
from drafter.engine.loading import EMBEDDED_BASE_MODEL


def test_quick_preset_fills_defaults_but_explicit_flags_win():
    model_args, data_args, training_args = train_speculator.parse_arguments(
        ["--quick", "--max_steps", "3", "--output_dir", "somewhere"]
    )
    assert model_args.llm_name_or_path == EMBEDDED_BASE_MODEL
    assert data_args.dataset_name == "sharegpt"
    assert model_args.draft_vocab_size == train_speculator.QUICK_PRESET["draft_vocab_size"]
    assert training_args.max_steps == 3
    assert training_args.output_dir == "somewhere"


def test_demo_prints_resolved_configuration(capsys):
    train_speculator.main(["--quick", "--demo"])
    resolved = json.loads(capsys.readouterr().out)
    assert resolved["model"]["llm_name_or_path"] == EMBEDDED_BASE_MODEL
    assert resolved["training"]["max_steps"] == train_speculator.QUICK_PRESET["max_steps"]


def test_yaml_recipe(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"dataset_name": "mtbench", "drafter_num_layers": 3, "output_dir": "x"}))
    model_args, data_args, training_args = train_speculator.parse_arguments([str(recipe)])
    assert (data_args.dataset_name, model_args.drafter_num_layers, training_args.output_dir) == ("mtbench", 3, "x")


