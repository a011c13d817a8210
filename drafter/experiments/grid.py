"""A declarative experiment grid: which drafters to train (cells), under which equal budget, evaluated where.

A grid file (YAML) looks like::

    name: quick
    output_dir: outputs/experiments/quick
    base_model: embedded:SmolLM2-135M-Instruct-Q4_1
    axes:                                  # the cartesian product of these is the set of cells
      method: [ground_truth, self_distilled]
      scope: [assistant_only]
      family: [redrafter]
      train_dataset: [sharegpt]
      eval_dataset: [mtbench]             # every cell is evaluated on every eval dataset
    cells:                                 # extra cells: axis values (default: each axis' first) + overrides
      - {family: arctic_lstm}
      - {draft_vocab_size: 16384, max_steps: 60}
    training: {max_steps: 40, ...}         # train_speculator arguments shared by every cell: the equal budget
    family_arguments: {redrafter: {...}, arctic_lstm: {...}}
    method_arguments: {knowledge_distillation: {kd_alpha: 1.0}, distilled_dataset: {distill_max_examples: 96}}
    teacher: {max_examples: 128, max_tokens: 96}     # the base model's answers for `self_distilled`
    evaluation: {max_num_prompts: 10, max_new_tokens: 64, beam_width: 2, beam_length: 2, ...}

Methods: ``ground_truth`` (cross-entropy on the dataset's answers), ``knowledge_distillation`` (plus KL to the
base model's distributions), ``distilled_dataset`` (targets = the base model's own N-token continuations at
every position, ReDrafter paper), ``self_distilled`` (train on the base model's regenerated answers, Arctic
recipe). Scope ``assistant_only`` labels only answers; ``full`` labels every token of the chat.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from ..engine.loading import EMBEDDED_BASE_MODEL
from ..models.registry import FAMILY_NAMES as FAMILIES

METHODS = ("ground_truth", "knowledge_distillation", "distilled_dataset", "self_distilled")
SCOPES = ("full", "assistant_only")
AXES = ("method", "scope", "family", "train_dataset", "eval_dataset")
TRAINING_AXES = AXES[:-1]  # what a trained drafter depends on (eval_dataset does not)

# Arguments the axes decide; setting them in a shared section would silently turn one method into another.
AXIS_CONTROLLED = {
    "drafter_type", "dataset_name", "train_on_assistant_only", "use_knowledge_distillation",
    "use_distilled_dataset", "output_dir", "llm_name_or_path", "run_name",
}

# Arguments that decide the train/held-out split: one value for the whole grid (`training:` only), so every cell
# holds out the same conversations and the teacher's answers can be filtered against them.
SPLIT_KEYS = ("max_train_examples", "num_eval_examples", "seed")

DEFAULT_TEACHER = {"max_examples": 800, "max_tokens": 128, "temperature": 0.0, "batch_size": 16, "data_seed": 0}
DEFAULT_EVALUATION = {
    "max_num_prompts": 80,
    "max_new_tokens": 64,
    "beam_width": 2,
    "beam_length": 2,
    "top_k_tokens_per_head": None,  # arctic_lstm cells: a per-head top-k tree when set, else beam search
    "repeats": 1,
    "warmup": 1,
    "baselines": ["hf_generate"],
}


class GridError(ValueError):
    """The grid file is inconsistent (unknown axis value, conflicting argument, ...)."""


@dataclass(frozen=True)
class Cell:
    """One drafter to train: its position on the training axes plus argument overrides (e.g. a vocabulary size)."""

    method: str
    scope: str
    family: str
    train_dataset: str
    overrides: tuple[tuple[str, Any], ...] = ()

    @property
    def name(self) -> str:
        """Filesystem-safe, unique within a grid, readable in tensorboard: family-method-scope-dataset[-k=v...]."""
        dataset = Path(str(self.train_dataset).rstrip("/\\")).stem or "data"
        parts = [self.family, self.method, self.scope, dataset]
        parts += [f"{key}={'full' if key == 'draft_vocab_size' and value is None else value}"
                  for key, value in self.overrides]
        return re.sub(r"[^A-Za-z0-9_.=+-]", "_", "-".join(parts))

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "method": self.method, "scope": self.scope, "family": self.family,
                "train_dataset": self.train_dataset, "overrides": dict(self.overrides)}


@dataclass
class ExperimentGrid:
    name: str
    output_dir: str
    base_model: str = EMBEDDED_BASE_MODEL
    axes: dict[str, list] = field(default_factory=dict)
    cells: list[dict] = field(default_factory=list)
    training: dict[str, Any] = field(default_factory=dict)
    family_arguments: dict[str, dict] = field(default_factory=dict)
    method_arguments: dict[str, dict] = field(default_factory=dict)
    teacher: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown_axes = set(self.axes or {}) - set(AXES)
        if unknown_axes:
            raise GridError(f"unknown axes {sorted(unknown_axes)}; the axes are {list(AXES)}")
        for axis, values in (self.axes or {}).items():
            if values is not None and not isinstance(values, list):
                raise GridError(f"axes.{axis} must be a list, e.g. [{values}]")
        self.axes = {axis: list((self.axes or {}).get(axis) or []) for axis in AXES}
        for axis, default in (("scope", "assistant_only"), ("family", "redrafter"), ("method", "ground_truth"),
                              ("train_dataset", "sharegpt"), ("eval_dataset", "mtbench")):
            self.axes[axis] = self.axes[axis] or [default]
        for section, defaults in (("teacher", DEFAULT_TEACHER), ("evaluation", DEFAULT_EVALUATION)):
            unknown = set(getattr(self, section) or {}) - set(defaults)
            if unknown:
                raise GridError(f"unknown {section} keys {sorted(unknown)}; known: {sorted(defaults)}")
        self.teacher = {**DEFAULT_TEACHER, **(self.teacher or {})}
        self.evaluation = {**DEFAULT_EVALUATION, **(self.evaluation or {})}
        self._validate()

    @classmethod
    def from_yaml(cls, path: str | Path, **changes: Any) -> "ExperimentGrid":
        with open(path) as f:
            spec = yaml.safe_load(f) or {}
        unknown = set(spec) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise GridError(f"{path}: unknown top-level keys {sorted(unknown)}")
        spec.update({k: v for k, v in changes.items() if v is not None})
        if "name" not in spec or "output_dir" not in spec:
            raise GridError(f"{path}: a grid needs 'name' and 'output_dir'")
        return cls(**spec)

    def _validate(self) -> None:
        for axis, allowed in (("method", METHODS), ("scope", SCOPES), ("family", FAMILIES)):
            values = set(self.axes[axis]) | {c[axis] for c in self.cells if axis in c}
            bad = values - set(allowed)
            if bad:
                raise GridError(f"unknown {axis} {sorted(bad)}; choose from {list(allowed)}")
        shared = [("training", self.training)]
        shared += [(f"family_arguments.{k}", v) for k, v in self.family_arguments.items()]
        shared += [(f"method_arguments.{k}", v) for k, v in self.method_arguments.items()]
        shared += [(f"cells[{i}]", c) for i, c in enumerate(self.cells)]
        for where, arguments in shared:
            conflict = AXIS_CONTROLLED & set(arguments or {})
            if conflict:
                raise GridError(f"{where} sets {sorted(conflict)}, which the grid's axes decide")
            if where != "training" and set(SPLIT_KEYS) & set(arguments or {}):
                raise GridError(f"{where} sets {sorted(set(SPLIT_KEYS) & set(arguments))}: the held-out split is "
                                "one for the whole grid; set these under training:")
        if "hf_generate" not in self.evaluation["baselines"]:
            raise GridError("evaluation.baselines must include hf_generate (the reference for speed-up)")
        if "eval_dataset" in {key for c in self.cells for key in c}:
            raise GridError("cells take training axes only; every cell is evaluated on every axes.eval_dataset")
        names = [cell.name for cell in self.expand()]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise GridError(f"two cells share the name(s) {duplicated}: a cell listed twice, or training datasets "
                            "whose file names are the same")

    def expand(self) -> list[Cell]:
        """The product of the training axes, then the extra cells, in order."""
        cells = [Cell(*values) for values in itertools.product(*(self.axes[a] for a in TRAINING_AXES))]
        for extra in self.cells:
            axis_values = {a: extra.get(a, self.axes[a][0]) for a in TRAINING_AXES}
            overrides = tuple(sorted((k, v) for k, v in extra.items() if k not in TRAINING_AXES))
            cells.append(Cell(**axis_values, overrides=overrides))
        return cells

    @property
    def eval_datasets(self) -> list[str]:
        return list(self.axes["eval_dataset"])

    @property
    def root(self) -> Path:
        return Path(self.output_dir)

    def cell_dir(self, cell: Cell) -> Path:
        return self.root / "cells" / cell.name

    def tensorboard_dir(self, cell: Cell) -> Path:
        """One tensorboard run per cell, side by side: `tensorboard --logdir <output_dir>/runs`."""
        return self.root / "runs" / cell.name

    def train_arguments(self, cell: Cell, dataset_name: Optional[str] = None) -> dict[str, Any]:
        """The flat `train_speculator` arguments of a cell; `dataset_name` replaces the training data
        (self_distilled cells train on the teacher's answers)."""
        arguments = copy.deepcopy(self.training)
        arguments.update(copy.deepcopy(self.family_arguments.get(cell.family, {})))
        arguments.update(copy.deepcopy(self.method_arguments.get(cell.method, {})))
        arguments.update(dict(cell.overrides))
        arguments.update(
            llm_name_or_path=self.base_model,
            drafter_type=cell.family,
            dataset_name=dataset_name or cell.train_dataset,
            train_on_assistant_only=cell.scope == "assistant_only",
            use_knowledge_distillation=cell.method == "knowledge_distillation",
            use_distilled_dataset=cell.method == "distilled_dataset",
            output_dir=str(self.cell_dir(cell)),
            run_name=f"{self.name}/{cell.name}",
        )
        return arguments

    def reference_split(self) -> dict[str, Any]:
        """How every training dataset is split into train/held-out rows (shared by all cells, so accuracy is
        measured on the same held-out conversations and the teacher never answers a held-out prompt)."""
        from ..training.arguments import DataArguments, DrafterTrainingArguments

        defaults = {f.name: f.default for f in dataclasses.fields(DataArguments)}
        defaults["seed"] = next(f.default for f in dataclasses.fields(DrafterTrainingArguments) if f.name == "seed")
        return {
            "max_examples": self.training.get("max_train_examples", defaults["max_train_examples"]),
            "eval_examples": self.training.get("num_eval_examples", defaults["num_eval_examples"]),
            "seed": self.training.get("seed", defaults["seed"]),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "output_dir": self.output_dir, "base_model": self.base_model, "axes": self.axes,
            "cells": self.cells, "training": self.training, "family_arguments": self.family_arguments,
            "method_arguments": self.method_arguments, "teacher": self.teacher, "evaluation": self.evaluation,
        }
