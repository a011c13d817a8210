"""Training wall-clock time that survives a resume (every checkpoint records the total so far), and the time
budget (`--max_train_minutes`) that ends training cleanly when it is spent."""

from __future__ import annotations

import json
import os
import time
from typing import Any, Optional

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

CLOCK_FILE = "train_clock.json"


class TrainingClock(TrainerCallback):
    """Seconds spent in `Trainer.train`, including the runs before a resume (read from the checkpoint).

    With `budget_seconds`, training stops after the first optimizer step that ends past the budget (counted
    over resumes too), saving a checkpoint there unless checkpoints are off (so a resume with a larger budget
    loses no step); the caller then saves the model and evaluates as after any other last step. Under several
    processes the ranks agree (any rank past the budget stops them all), so none waits on a collective alone.
    """

    def __init__(self, resumed_from: Optional[str] = None, budget_seconds: Optional[float] = None) -> None:
        self.previous_seconds = seconds_recorded_in(resumed_from)
        self.started: Optional[float] = None
        self.budget_seconds = budget_seconds
        self.stopped_by_budget = False

    @property
    def this_run_seconds(self) -> float:
        return time.perf_counter() - self.started if self.started is not None else 0.0

    @property
    def total_seconds(self) -> float:
        return self.previous_seconds + self.this_run_seconds

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.started = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.budget_seconds is None:
            return
        over = self.total_seconds >= self.budget_seconds
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            flag = torch.tensor([float(over)], device=args.device if args.device.type != "cpu" else "cpu")
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            over = bool(flag.item())
        if over:
            self.stopped_by_budget = True
            control.should_training_stop = True
            control.should_save = args.save_strategy != "no"

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if state.is_world_process_zero and os.path.isdir(folder):
            with open(os.path.join(folder, CLOCK_FILE), "w") as f:
                json.dump({"train_seconds": self.total_seconds, "global_step": state.global_step}, f)


def seconds_since_process_start() -> float:
    """Wall seconds since this process started (Linux: from /proc, so interpreter start-up and imports count);
    elsewhere, since this module was imported."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = float(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.monotonic() - _IMPORTED


def mark_command_start() -> None:
    """Called when a training command starts (after its imports, which the run reserve covers)."""
    global _COMMAND_STARTED
    _COMMAND_STARTED = time.monotonic()


def training_budget_seconds(max_train_minutes: Optional[float], max_run_minutes: Optional[float]) -> Optional[float]:
    """The training loop's budget: --max_train_minutes, capped by what --max_run_minutes leaves after what the
    command has spent so far and a reserve for saving, evaluation and start-up (15 s or a tenth of the run, the
    larger)."""
    budgets = []
    if max_train_minutes is not None:
        budgets.append(max_train_minutes * 60)
    if max_run_minutes is not None:
        reserve = max(15.0, 6.0 * max_run_minutes)
        spent = time.monotonic() - _COMMAND_STARTED
        budgets.append(max(0.0, max_run_minutes * 60 - spent - reserve))
    return min(budgets) if budgets else None


_IMPORTED = _COMMAND_STARTED = time.monotonic()


def seconds_recorded_in(checkpoint: Optional[str]) -> float:
    """Training seconds up to `checkpoint` (0 for none, or for a checkpoint written without a clock)."""
    if not checkpoint:
        return 0.0
    try:
        with open(os.path.join(checkpoint, CLOCK_FILE)) as f:
            return float(json.load(f)["train_seconds"])
    except (OSError, ValueError, KeyError):
        return 0.0
