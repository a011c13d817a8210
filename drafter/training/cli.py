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
    flatten_recipe,
    is_nested_recipe,
)
from .run import run

# --quick: sized on a 2-core CPU to finish in <= 300 s including model conversion and data preparation
# (see BENCHMARKS.md). The reduced draft vocabulary and narrow head keep the drafter's vocabulary
# projection from costing more than the base model's forward pass. Explicit flags override these.
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
    "learning_rate": 3e-3,
    "warmup_steps": 5,
    "lr_scheduler_type": "cosine",
    "weight_decay": 0.0,
    "logging_steps": 5,
    "save_strategy": "no",
    "eval_strategy": "no",
    "output_dir": "outputs/quick-redrafter",
    "dataloader_num_workers": 0,
}


def parse_arguments(argv: list[str]) -> tuple[ModelArguments, DataArguments, DrafterTrainingArguments]:
    parser = HfArgumentParser((ModelArguments, DataArguments, DrafterTrainingArguments))
    if argv and argv[0].endswith((".yaml", ".yml", ".json")):
        recipe = load_recipe(argv[0])
        if len(argv) > 1:  # command-line overrides of the recipe
            explicit = _explicit_keys(argv[1:])
            for args in parser.parse_args_into_dataclasses(argv[1:]):
                recipe.update({k: v for k, v in _as_dict(args).items() if k in explicit})
        return parser.parse_dict(recipe)
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(argv)
    if training_args.quick:
        explicit = _explicit_keys(argv)
        overrides = {k: v for k, v in QUICK_PRESET.items() if k not in explicit}
        return parser.parse_dict(
            {**_as_dict(model_args), **_as_dict(data_args), **_as_dict(training_args), **overrides}
        )
    return model_args, data_args, training_args


def load_recipe(path: str) -> dict:
    """A YAML/JSON recipe as flat argument names (the nested ArcticTraining shape is flattened)."""
    with open(path) as f:
        recipe = json.load(f) if path.endswith(".json") else yaml.safe_load(f)
    recipe = recipe or {}
    return flatten_recipe(recipe) if is_nested_recipe(recipe) else recipe


def _explicit_keys(argv: list[str]) -> set[str]:
    keys = {arg[2:].split("=")[0] for arg in argv if arg.startswith("--")}
    return keys | {key[3:] for key in keys if key.startswith("no_")}


def _as_dict(args: Any) -> dict:
    # Only init fields: TrainingArguments also carries derived attributes that parse_dict rejects.
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.init}


def main(argv: Optional[list[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    model_args, data_args, training_args = parse_arguments(argv)
    if training_args.demo:
        resolved = {"model": _as_dict(model_args), "data": _as_dict(data_args), "training": _as_dict(training_args)}
        print(json.dumps(resolved, indent=2, default=str))
        return
    run(model_args, data_args, training_args)


