"""Runs an experiment grid: teacher data, one training job per cell, one speed benchmark per evaluation dataset.

Everything is resumable and cached:
- teacher answers live in the shared teacher cache (`python -m drafter.teacher.generate`, resumable per prompt);
- each cell trains in its own process (`python -m drafter.training`) into `<output_dir>/cells/<cell>`; a cell
  with `drafter_eval.json` is done and skipped, a killed cell resumes from its last checkpoint;
- tokenised data, distilled targets and the converted base model come from the toolkit's caches;
- one benchmark per evaluation dataset times plain decoding and EVERY cell's drafter in one run (prompts
  interleaved), saved under `<output_dir>/benchmarks/`; it is redone only when the set of cells or the
  evaluation settings change.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from ..store import fingerprint, fingerprint_file, read_jsonl_rows, write_json, write_jsonl
from .grid import Cell, ExperimentGrid, GridError
from .processes import run_logged

logger = logging.getLogger(__name__)

# Rough costs on the 2-core development CPU (BENCHMARKS.md), only for --dry_run's time estimate.
CPU_COSTS = {
    "process_start_s": 25.0,  # imports, base model from the safetensors cache, tokenised data from cache
    "base_forward_s_per_ktoken": 0.9,  # frozen base forward during training, per 1,000 padded tokens
    # drafter forward+backward per 1,000 padded tokens, by draft vocabulary size (49,152 = SmolLM2's full)
    "drafter_s_per_ktoken": {4096: 0.23, 8192: 0.35, 16384: 0.67, 49152: 2.96},
    "distill_s_per_example": 1.2,  # 256-token conversation, 5 future tokens
    "teacher_tokens_per_s": 70.0,
    "decode_tokens_per_s": 30.0,  # plain greedy decoding, batch 1
    "eval_s": 15.0,
}


@dataclass
class Step:
    """One unit of work in the plan."""

    kind: str  # teacher | train | reference_eval | benchmark
    label: str
    status: str  # done | to run | changed | stale
    estimate_s: float
    run: Callable[[], None]

    @property
    def done(self) -> bool:
        return self.status == "done"


# Where a cell's files go; moving a sweep's output folder does not change what its cells trained.
LOCATION_KEYS = ("output_dir", "run_name")


def _comparable(arguments: dict[str, Any]) -> dict[str, Any]:
    """Arguments as recorded in cell.json (JSON types), without the location keys."""
    plain = json.loads(json.dumps(arguments, default=str))
    return {k: v for k, v in plain.items() if k not in LOCATION_KEYS}


def read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


class ExperimentRunner:
    """Plans and runs a grid. `python` is the interpreter for the per-cell training processes."""

    def __init__(self, grid: ExperimentGrid, python: str = sys.executable, echo: bool = True) -> None:
        self.grid = grid
        self.python = python
        self.echo = echo
        self.cells = grid.expand()

    # ------------------------------------------------------------------------------------------- data

    def teacher_folder(self, dataset: str) -> Path:
        from ..teacher.config import TeacherGenerationConfig, teacher_cache_dir

        t = self.grid.teacher
        config = TeacherGenerationConfig(max_tokens=int(t["max_tokens"]), temperature=float(t["temperature"]))
        return teacher_cache_dir(self.grid.base_model, dataset, t["max_examples"], int(t["data_seed"]), config,
                                 "transformers", "float32")

    def teacher_train_file(self, dataset: str) -> Path:
        """The teacher's answers minus the prompts held out for evaluation (so no cell trains on them)."""
        return self.grid.root / "data" / f"{self.teacher_folder(dataset).name}-train.jsonl"

    def held_out_conversations(self, dataset: str) -> Any:
        """The rows of `dataset` that every cell holds out (the grid's reference split), as a Dataset."""
        from ..data import load_conversations, split_train_eval

        split = self.grid.reference_split()
        rows = load_conversations(dataset, max_examples=split["max_examples"], seed=split["seed"])
        return split_train_eval(rows, split["eval_examples"], split["seed"])["eval"]

    def held_out_ids(self, dataset: str) -> set[str]:
        return set(self.held_out_conversations(dataset)["id"])

    def make_teacher_data(self, dataset: str) -> None:
        folder = self.teacher_folder(dataset)
        t = self.grid.teacher
        if not (folder / "data.jsonl").exists():
            self._subprocess(
                ["-m", "drafter.teacher.generate", "--dataset_name", dataset, "--max_examples", str(t["max_examples"]),
                 "--data_seed", str(t["data_seed"]), "--max_tokens", str(t["max_tokens"]),
                 "--gen_temp", str(t["temperature"]), "--batch_size", str(t["batch_size"]),
                 "--llm_name_or_path", self.grid.base_model, "--output_dir", str(folder)],
                log=self.grid.root / "logs" / f"teacher-{folder.name}.log",
            )
        held_out = self.held_out_ids(dataset)
        rows = read_jsonl_rows(folder / "data.jsonl")
        kept = [row for row in rows if row["id"] not in held_out]
        target = self.teacher_train_file(dataset)
        write_jsonl(target, kept)
        self._say(f"Teacher data for {dataset}: {len(kept)} answers ({len(rows) - len(kept)} held-out prompts "
                  f"dropped) -> {target}")

    # ----------------------------------------------------------------------------------------- training

    def cell_arguments(self, cell: Cell) -> dict[str, Any]:
        dataset = str(self.teacher_train_file(cell.train_dataset)) if cell.method == "self_distilled" else None
        return self.grid.train_arguments(cell, dataset_name=dataset)

    def cell_state(self, cell: Cell) -> str:
        """"done", "to run", or "changed" (trained or started with other arguments than the grid now gives)."""
        folder = self.grid.cell_dir(cell)
        recorded = read_json(folder / "cell.json")
        if recorded is None:
            return "to run"
        if _comparable(recorded["train_arguments"]) != _comparable(self.cell_arguments(cell)):
            return "changed"
        return "done" if (folder / "drafter_eval.json").exists() else "to run"

    def train_cell(self, cell: Cell) -> None:
        from transformers.trainer_utils import get_last_checkpoint

        folder = self.grid.cell_dir(cell)
        folder.mkdir(parents=True, exist_ok=True)
        arguments = self.cell_arguments(cell)
        write_json(folder / "cell.json", {**cell.describe(), "train_arguments": arguments})
        recipe = dict(arguments)
        checkpoint = get_last_checkpoint(str(folder))
        if checkpoint:
            recipe["resume_from_checkpoint"] = checkpoint
            self._say(f"  resuming {cell.name} from {checkpoint}")
        recipe_path = folder / "train_recipe.json"
        write_json(recipe_path, recipe)
        self._subprocess(["-m", "drafter.training", str(recipe_path)], log=folder / "train.log",
                         env={"TENSORBOARD_LOGGING_DIR": str(self.grid.tensorboard_dir(cell))})

    def needs_reference_eval(self, cell: Cell) -> bool:
        """Accuracy is compared on one held-out split per training dataset, assistant tokens only; cells that
        trained on other data or labels are evaluated on it again."""
        return cell.method == "self_distilled" or cell.scope != "assistant_only"

    def reference_eval(self, cell: Cell) -> None:
        folder = self.grid.cell_dir(cell)
        arguments = self.grid.train_arguments(cell)
        arguments.update(
            phase="eval", drafter_name_or_path=str(folder), train_on_assistant_only=True,
            use_distilled_dataset=False, use_knowledge_distillation=False,
            output_dir=str(folder / "reference_eval"), report_to=["none"],
        )
        recipe_path = folder / "reference_eval_recipe.json"
        write_json(recipe_path, arguments)
        self._subprocess(["-m", "drafter.training", str(recipe_path)], log=folder / "reference_eval.log")

    # -------------------------------------------------------------------------------------- evaluation

    def benchmark_path(self, eval_dataset: str) -> Path:
        label = Path(str(eval_dataset).rstrip("/\\")).stem or "eval"
        same_stem = [d for d in self.grid.eval_datasets if (Path(str(d).rstrip("/\\")).stem or "eval") == label]
        if len(same_stem) > 1:  # e.g. a/data.jsonl and b/data.jsonl
            label += "-" + fingerprint(eval_dataset)[:8]
        return self.grid.root / "benchmarks" / f"{label}.json"

    def drafter_fingerprint(self, cell: Cell) -> Optional[str]:
        """Hash of the trained drafter's weights: a retrained cell invalidates the benchmarks it was in."""
        weights = self.grid.cell_dir(cell) / "model.safetensors"
        return fingerprint_file(weights) if weights.exists() else None

    def benchmark_key(self, eval_dataset: str) -> str:
        cells = {cell.name: [_comparable(self.cell_arguments(cell)), self.drafter_fingerprint(cell)]
                 for cell in self.cells}
        return fingerprint({"eval_dataset": eval_dataset, "evaluation": self.grid.evaluation, "cells": cells,
                           "split": self.grid.reference_split()})

    def benchmark_state(self, eval_dataset: str) -> str:
        """"done", "to run", or "stale" (measured for other cells, drafters or settings than the grid's now)."""
        recorded = read_json(self.benchmark_path(eval_dataset))
        if recorded is None:
            return "to run"
        return "done" if recorded.get("key") == self.benchmark_key(eval_dataset) else "stale"

    def eval_prompts(self, eval_dataset: str) -> list[dict]:
        """MT-Bench: its questions in file order. Any other source: first turns of its held-out split (the
        conversations no cell trained on)."""
        from ..data import first_turn_prompts, load_prompts

        limit = self.grid.evaluation["max_num_prompts"]
        if eval_dataset == "mtbench":
            return load_prompts("mtbench", max_examples=limit)
        return first_turn_prompts(self.held_out_conversations(eval_dataset), eval_dataset)[:limit]

    def run_benchmark(self, eval_dataset: str) -> None:
        import torch

        from ..engine.loading import load_base_model, load_tokenizer
        from ..evaluation.benchmark import BenchmarkConfig, environment
        from ..evaluation.compare import TreeShape, compare_drafters
        from ..models import AutoDrafter, get_family

        settings = self.grid.evaluation
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        base = load_base_model(self.grid.base_model, dtype="float32", device=device)
        tokenizer = load_tokenizer(self.grid.base_model)
        drafters, shapes = {}, {}
        for cell in self.cells:
            drafter = AutoDrafter.from_pretrained(str(self.grid.cell_dir(cell))).to(device=device, dtype=base.dtype)
            drafters[cell.name] = drafter.eval()
            topk = get_family(cell.family).draft_tree == "topk"
            shapes[cell.name] = TreeShape(
                beam_width=settings["beam_width"], beam_length=settings["beam_length"],
                top_k_tokens_per_head=settings["top_k_tokens_per_head"] if topk else None,
            )
        config = BenchmarkConfig(
            max_new_tokens=settings["max_new_tokens"], repeats=settings["repeats"], warmup=settings["warmup"],
            baselines=tuple(settings["baselines"]),
        )
        prompts = self.eval_prompts(eval_dataset)
        self._say(f"Benchmark on {len(prompts)} '{eval_dataset}' prompts: {' | '.join(config.baselines)} and "
                  f"{len(drafters)} drafters, interleaved per prompt")
        started = time.perf_counter()
        summary = compare_drafters(base, tokenizer, drafters, shapes, prompts, config, progress=self.echo)
        summary.update(
            key=self.benchmark_key(eval_dataset),
            eval_dataset=eval_dataset,
            prompt_ids=[p["id"] for p in prompts],
            seconds=time.perf_counter() - started,
            settings=dict(settings),
            environment=environment(),
        )
        write_json(self.benchmark_path(eval_dataset), summary)

    # ---------------------------------------------------------------------------------------- planning

    def plan(self) -> list[Step]:
        steps: list[Step] = []
        teacher_ready: set[str] = set()
        for cell in self.cells:
            dataset = cell.train_dataset
            if cell.method == "self_distilled" and dataset not in teacher_ready:  # just before its first use
                teacher_ready.add(dataset)
                done = self.teacher_train_file(dataset).exists()
                steps.append(Step("teacher", f"teacher answers for {dataset}", "done" if done else "to run",
                                  self._estimate_teacher(dataset), lambda d=dataset: self.make_teacher_data(d)))
            steps.append(Step("train", cell.name, self.cell_state(cell), self._estimate_train(cell),
                              lambda c=cell: self.train_cell(c)))
            if self.needs_reference_eval(cell):
                done = (self.grid.cell_dir(cell) / "reference_eval" / "drafter_eval.json").exists()
                steps.append(Step("reference_eval", cell.name, "done" if done else "to run",
                                  CPU_COSTS["process_start_s"] + CPU_COSTS["eval_s"],
                                  lambda c=cell: self.reference_eval(c)))
        for eval_dataset in self.grid.eval_datasets:
            steps.append(Step("benchmark", eval_dataset, self.benchmark_state(eval_dataset),
                              self._estimate_benchmark(), lambda d=eval_dataset: self.run_benchmark(d)))
        return steps

    def check_can_run(self, steps: list[Step]) -> None:
        """Refuse, before any work, a grid that contradicts what its output folder already holds."""
        recorded = read_json(self.grid.root / "grid.json")
        if recorded is not None:
            before = ExperimentGrid(**recorded).reference_split()
            if before != self.grid.reference_split():
                raise RuntimeError(
                    f"{self.grid.root} was started with the held-out split {before}; the grid now gives "
                    f"{self.grid.reference_split()}. Use a new output_dir (cells and teacher data depend on it)."
                )
        changed = [s.label for s in steps if s.status == "changed"]
        if changed:
            raise RuntimeError(
                f"cells trained or started with other arguments than the grid now gives: {changed}; delete "
                f"their folders under {self.grid.root / 'cells'} to retrain them, or restore the grid file"
            )

    def check_cell_arguments(self) -> None:
        """Unknown, mistyped or out-of-range training arguments fail now (also in a dry run), not hours into the
        sweep."""
        from transformers import HfArgumentParser

        from ..training.arguments import (
            DataArguments,
            DrafterTrainingArguments,
            ModelArguments,
            coerce_argument_types,
            validate_arguments,
        )

        parser = HfArgumentParser((ModelArguments, DataArguments, DrafterTrainingArguments))
        for cell in self.cells:
            try:
                validate_arguments(*parser.parse_dict(coerce_argument_types(self.cell_arguments(cell)),
                                                      allow_extra_keys=False))
            except (ValueError, TypeError) as error:
                raise GridError(f"cell {cell.name}: invalid training arguments: {error}") from None

    def _estimate_train(self, cell: Cell) -> float:
        arguments = self.cell_arguments(cell)
        steps = int(arguments.get("max_steps", 100))
        batch = int(arguments.get("per_device_train_batch_size", 8))
        batch *= int(arguments.get("gradient_accumulation_steps", 1))
        ktokens = batch * int(arguments.get("model_max_length", 512)) / 1000
        vocab = arguments.get("draft_vocab_size") or 49152
        table = CPU_COSTS["drafter_s_per_ktoken"]
        nearest = min(table, key=lambda size: abs(size - vocab))
        per_step = ktokens * (CPU_COSTS["base_forward_s_per_ktoken"] + table[nearest] * vocab / nearest)
        seconds = CPU_COSTS["process_start_s"] + steps * per_step + CPU_COSTS["eval_s"]
        if cell.method == "distilled_dataset":
            examples = arguments.get("distill_max_examples") or steps * batch
            seconds += examples * CPU_COSTS["distill_s_per_example"]
        return seconds

    def _estimate_teacher(self, dataset: str) -> float:
        t = self.grid.teacher
        if (self.teacher_folder(dataset) / "data.jsonl").exists():  # cached: only the held-out filter is left
            return CPU_COSTS["process_start_s"]
        return CPU_COSTS["process_start_s"] + t["max_examples"] * t["max_tokens"] / CPU_COSTS["teacher_tokens_per_s"]

    def _estimate_benchmark(self) -> float:
        e = self.grid.evaluation
        prompts = e["max_num_prompts"] * max(1, e["repeats"]) + e["warmup"]
        per_method = prompts * e["max_new_tokens"] / CPU_COSTS["decode_tokens_per_s"]
        return CPU_COSTS["process_start_s"] + per_method * (len(e["baselines"]) + len(self.cells))

    # ------------------------------------------------------------------------------------------ running

    def run(self, dry_run: bool = False) -> list[Step]:
        self.check_cell_arguments()
        steps = self.plan()
        self._say(format_plan(self.grid, steps))
        if dry_run:
            return steps
        self.check_can_run(steps)
        self.grid.root.mkdir(parents=True, exist_ok=True)
        write_json(self.grid.root / "grid.json", self.grid.to_dict())
        todo = [s for s in steps if not s.done]
        for number, step in enumerate(todo, 1):
            self._say(f"\n[{number}/{len(todo)}] {step.kind}: {step.label} (estimate {step.estimate_s / 60:.1f} min)")
            started = time.perf_counter()
            step.run()
            self._say(f"[{number}/{len(todo)}] {step.kind}: {step.label} done in "
                      f"{(time.perf_counter() - started) / 60:.1f} min")
        return steps

    def _subprocess(self, arguments: list[str], log: Path, env: Optional[dict[str, str]] = None) -> None:
        run_logged([self.python, *arguments], log, env, echo=self.echo)

    def _say(self, text: str) -> None:
        if self.echo:
            print(text, flush=True)
        else:
            logger.info(text)


def format_plan(grid: ExperimentGrid, steps: list[Step]) -> str:
    todo = [s for s in steps if not s.done]
    lines = [f"Experiment '{grid.name}' -> {grid.output_dir}", "", "| step | what | status | estimate (2-core CPU) |",
             "|---|---|---|---|"]
    for step in steps:
        lines.append(f"| {step.kind} | {step.label} | {step.status} | {step.estimate_s / 60:.1f} min |")
    total = sum(s.estimate_s for s in todo)
    lines.append(f"\n{len(todo)} of {len(steps)} steps to run, estimated {total / 60:.0f} min on a 2-core CPU "
                 "(a GPU is much faster)")
    return "\n".join(lines)
