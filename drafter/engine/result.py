"""What a generation run returns, and the per-sequence bookkeeping that produces it (stop rules, streaming)."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, List, Optional, Sequence, Set, Union

import torch

StepCallback = Callable[[List[List[int]]], None]
"""Streaming hook: called with, for every sequence of the batch (input order), the tokens emitted since the
last call (an empty list for sequences with nothing new)."""

FinishCallback = Callable[[int, List[int]], None]
"""Called once per sequence as soon as it is complete (EOS or max_new_tokens), with its input index and all of
its tokens: lets a caller write finished rows while the rest of the batch is still decoding."""


@dataclass
class GenerationTiming:
    """Wall-clock seconds spent in each phase. On an accelerator, work is asynchronous: pass `profile=True` to
    `generate` to synchronize at phase boundaries, otherwise device time is billed to whichever phase waits."""

    prefill_s: float = 0.0
    drafting_s: float = 0.0
    verification_s: float = 0.0
    bookkeeping_s: float = 0.0

    @property
    def total_s(self) -> float:
        return self.prefill_s + self.drafting_s + self.verification_s + self.bookkeeping_s


@dataclass
class GenerationResult:
    """Output of one batched generation call.

    Attributes:
        sequences: generated token ids per input sequence (prompt excluded; EOS included when hit).
        num_steps: decoding iterations after the prefill (base-model forwards over new tokens).
        steps_per_sequence: iterations each sequence took part in.
        accepted_per_sequence: tokens accepted per sequence over its steps (drafted + bonus; not truncated).
        accepted_by_position: for drafted position k (0 = first drafted token), how many sequence-steps
            accepted it (empty for plain decoding).
        timing: phase split of the wall time.
    """

    sequences: List[List[int]]
    num_steps: int = 0
    steps_per_sequence: List[int] = field(default_factory=list)
    accepted_per_sequence: List[int] = field(default_factory=list)
    accepted_by_position: List[int] = field(default_factory=list)
    timing: GenerationTiming = field(default_factory=GenerationTiming)

    @property
    def num_generated_tokens(self) -> int:
        return sum(len(s) for s in self.sequences)

    @property
    def accepted_tokens_per_step(self) -> float:
        """Mean tokens gained per sequence per verification step (tau), counting the bonus token: plain
        decoding gives 1.0; 0.0 when no step ran."""
        steps = sum(self.steps_per_sequence)
        return sum(self.accepted_per_sequence) / steps if steps else 0.0

    @property
    def acceptance_rate_by_position(self) -> List[float]:
        """Fraction of sequence-steps that accepted each drafted position."""
        steps = sum(self.steps_per_sequence)
        return [c / steps if steps else 0.0 for c in self.accepted_by_position]


def eos_set(eos_token_id: Union[int, Sequence[int], None]) -> Set[int]:
    if eos_token_id is None:
        return set()
    if isinstance(eos_token_id, int):
        return {eos_token_id}
    return {int(t) for t in eos_token_id}


class OutputTracker:
    """Collects emitted tokens per sequence; applies EOS and max_new_tokens; feeds the streaming callback.

    Sequences are addressed by their index in the input batch.
    """

    def __init__(
        self,
        batch_size: int,
        max_new_tokens: int,
        eos_token_id: Union[int, Sequence[int], None],
        callback: Optional[StepCallback] = None,
        num_draft_steps: int = 0,
        on_finish: Optional[FinishCallback] = None,
    ):
        self.max_new_tokens = max_new_tokens
        self.eos = eos_set(eos_token_id)
        self.callback = callback
        self.on_finish = on_finish
        self.sequences: List[List[int]] = [[] for _ in range(batch_size)]
        self.finished = [max_new_tokens <= 0] * batch_size
        self.steps = [0] * batch_size
        self.accepted = [0] * batch_size
        self.accepted_by_position = [0] * num_draft_steps
        self._pending: List[List[int]] = [[] for _ in range(batch_size)]

    def emit(self, seq: int, tokens: Sequence[int]) -> None:
        """Append tokens to sequence `seq`, stopping after an EOS or at max_new_tokens."""
        out = self.sequences[seq]
        for token in tokens:
            if self.finished[seq]:
                break
            out.append(token)
            self._pending[seq].append(token)
            if token in self.eos or len(out) >= self.max_new_tokens:
                self.finished[seq] = True
                if self.on_finish is not None:
                    self.on_finish(seq, out)

    def record_step(self, seq: int, num_drafted_accepted: int) -> None:
        self.steps[seq] += 1
        self.accepted[seq] += num_drafted_accepted + 1
        for k in range(num_drafted_accepted):
            self.accepted_by_position[k] += 1

    def flush(self) -> None:
        """Hand the tokens emitted since the last flush to the callback."""
        if self.callback is not None and any(self._pending):
            self.callback(self._pending)
        self._pending = [[] for _ in self.sequences]

    def result(self, num_steps: int, timing: GenerationTiming) -> GenerationResult:
        return GenerationResult(
            sequences=self.sequences,
            num_steps=num_steps,
            steps_per_sequence=self.steps,
            accepted_per_sequence=self.accepted,
            accepted_by_position=self.accepted_by_position,
            timing=timing,
        )


class PhaseTimer:
    """Accumulates wall time per phase into a GenerationTiming; optionally synchronizes the device first."""

    def __init__(self, device: torch.device, synchronize: bool = False):
        self.timing = GenerationTiming()
        self._sync = synchronize and device.type == "cuda"
        self._device = device

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if self._sync:
            torch.cuda.synchronize(self._device)
        start = time.perf_counter()
        try:
            yield
        finally:
            if self._sync:
                torch.cuda.synchronize(self._device)
            attr = f"{name}_s"
            setattr(self.timing, attr, getattr(self.timing, attr) + time.perf_counter() - start)
