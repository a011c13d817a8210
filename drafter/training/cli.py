"""The `train_speculator.py` command line (also `python -m drafter.training`): presets, recipes, overrides."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from typing import Any, Optional

import yaml
from transformers import HfArgumentParser

from .arguments import (
    DataArguments,
    DrafterTrainingArguments,
    ModelArguments,
    coerce_argument_types,
    flatten_recipe,
    is_nested_recipe,
    validate_arguments,
)
from .clock import mark_command_start
from .run import run

# --quick: sized on a 2-core CPU to finish in <= 300 s including model conversion and data preparation
# (see BENCHMARKS.md); max_run_minutes makes that hold on slower machines too. The reduced draft vocabulary and
# narrow head keep the drafter's vocabulary projection from costing more than the base model's forward pass.
# Explicit flags override these.
QUICK_PRESET = {
    "dataset_name": "sharegpt",
    "max_train_examples": 1000,
    "num_eval_examples": 32,
    "model_max_length": 256,
    "train_on_assistant_only": True,
    "drafter_predict_n_tokens": 4,
    "exit_dim_multiplier": 1.0,
    # chosen from the equal-wall-clock comparison of full/16k/8k/4k draft vocabularies (BENCHMARKS.md, issue 7)
    "draft_vocab_size": 4096,
    "per_device_train_batch_size": 8,
    "per_device_eval_batch_size": 8,
    "max_steps": 70,
    # The whole command in <= 300 s on any 2-core machine: training stops early where the CPU is slower.
    "max_run_minutes": 4.6,
    "learning_rate": 3e-3,
    "warmup_steps": 5,
    "lr_scheduler_type": "cosine",
    "weight_decay": 0.0,
    "logging_steps": 5,
    "save_strategy": "no",
    "eval_strategy": "no",
    "output_dir": "outputs/quick-redrafter",
    "overwrite_output_dir": True,  # a demo: running it again replaces the quick drafter
    "dataloader_num_workers": 0,
}


def parse_arguments(argv: list[str]) -> tuple[ModelArguments, DataArguments, DrafterTrainingArguments]:
    """Arguments from flags, or from a YAML/JSON recipe (first argument) with flag overrides; the --quick preset
    fills what the user did not set. Flags cannot be abbreviated, a `--save_steps` / `--eval_steps` the user sets
    implies that strategy, values are type-checked and range-checked, all before anything loads."""
    parser = HfArgumentParser((ModelArguments, DataArguments, DrafterTrainingArguments), allow_abbrev=False)
    if argv and argv[0].endswith((".yaml", ".yml", ".json")):
        values = load_recipe(argv[0])
        explicit = set(values) | _explicit_keys(argv[1:])
        if len(argv) > 1:  # command-line overrides of the recipe
            for args in parser.parse_args_into_dataclasses(argv[1:]):
                values.update({k: v for k, v in _as_dict(args).items() if k in _explicit_keys(argv[1:])})
    else:
        parsed = parser.parse_args_into_dataclasses(argv)
        values = {k: v for args in parsed for k, v in _as_dict(args).items()}
        explicit = _explicit_keys(argv)
        if values.get("quick"):
            values.update({k: v for k, v in QUICK_PRESET.items() if k not in explicit})
    for steps, strategy in (("save_steps", "save_strategy"), ("eval_steps", "eval_strategy")):
        if steps in explicit and strategy not in explicit and values.get(steps):
            values[strategy] = "steps"
    arguments = parser.parse_dict(coerce_argument_types(values))
    validate_arguments(*arguments)
    return arguments


def load_recipe(path: str) -> dict:
    """A YAML/JSON recipe as flat argument names (the nested ArcticTraining shape is flattened)."""
    try:
        with open(path, encoding="utf-8") as f:
            recipe = json.load(f) if path.endswith(".json") else yaml.safe_load(f)
    except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"recipe {path} cannot be read: {' '.join(str(error).split())}") from None
    recipe = recipe or {}
    if not isinstance(recipe, dict):
        raise ValueError(f"recipe {path} must be a mapping of argument names to values, not a {type(recipe).__name__}")
    return flatten_recipe(recipe) if is_nested_recipe(recipe) else recipe


def _explicit_keys(argv: list[str]) -> set[str]:
    keys = {arg[2:].split("=")[0] for arg in argv if arg.startswith("--")}
    return keys | {key[3:] for key in keys if key.startswith("no_")}


def _as_dict(args: Any) -> dict:
    # Only init fields: TrainingArguments also carries derived attributes that parse_dict rejects.
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.init}


def main(argv: Optional[list[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    mark_command_start()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    model_args, data_args, training_args = parse_arguments(argv)
    if training_args.demo:
        resolved = {"model": _as_dict(model_args), "data": _as_dict(data_args), "training": _as_dict(training_args)}
        print(json.dumps(resolved, indent=2, default=str))
        return
    run(model_args, data_args, training_args)


