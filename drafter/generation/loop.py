"""The batched decoding loop shared by speculative and plain autoregressive generation.

prefill -> first token from the last prompt position -> repeat `decode_step` until every sequence has hit
EOS or max_new_tokens. Finished sequences leave the batch (their cache rows are dropped), so late steps only
pay for the sequences still running.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import List, Optional, Sequence, Union

import torch
from transformers import PreTrainedModel

from .base_runner import BaseModelRunner, Prompts, normalize_prompts
from .kv_cache import SlotKVCache
from .result import GenerationResult, OutputTracker, PhaseTimer, StepCallback
from .sampling import SamplingConfig, select_tokens


@dataclass
class DecodingState:
    """Everything the loop carries between steps for the sequences still running.

    Attributes:
        cache: KV cache holding every decided token except `next_tokens`.
        hidden: (B, H) base last hidden state at the last cached position (the drafting context).
        next_tokens: (B,) the base model's next token: decided and emitted, not yet in the cache.
        rows: input-batch index of each row.
    """

    cache: SlotKVCache
    hidden: torch.Tensor
    next_tokens: torch.Tensor
    rows: List[int]

    def select(self, keep: Sequence[int]) -> None:
        """Keep only the rows at positions `keep`."""
        index = torch.tensor(list(keep), dtype=torch.long, device=self.hidden.device)
        self.cache.select(keep)
        self.hidden = self.hidden[index]
        self.next_tokens = self.next_tokens[index]
        self.rows = [self.rows[i] for i in keep]


@dataclass
class StepOutput:
    """Host-side result of one decoding step, per row of the state (before EOS / length truncation)."""

    new_tokens: List[List[int]]
    num_drafted_accepted: List[int]


def make_generator(
    device: torch.device, seed: Optional[int], generator: Optional[torch.Generator]
) -> Optional[torch.Generator]:
    if generator is not None:
        return generator
    if seed is None:
        return None
    return torch.Generator(device=device).manual_seed(seed)


class BatchedDecoder:
    """Base class: runs the loop; subclasses implement `decode_step`."""

    num_draft_positions: int = 0

    def __init__(self, base_model: PreTrainedModel):
        self.base_model = base_model
        self.runner = BaseModelRunner(base_model)

    def decode_step(
        self,
        state: DecodingState,
        sampling: SamplingConfig,
        generator: Optional[torch.Generator],
        timer: Optional[PhaseTimer] = None,
    ) -> StepOutput:
        """Advance every sequence of `state` by one step (in place); return the new tokens per row."""
        raise NotImplementedError

    @torch.inference_mode()
    def prefill(
        self,
        prompts: List[List[int]],
        sampling: SamplingConfig,
        generator: Optional[torch.Generator] = None,
    ) -> DecodingState:
        """Fill the cache with the prompts and choose each sequence's first new token."""
        cache, hidden = self.runner.prefill(prompts)
        first = select_tokens(self.runner.logits(hidden), sampling, generator)
        return DecodingState(cache=cache, hidden=hidden, next_tokens=first, rows=list(range(len(prompts))))

    def _check_modes(self) -> None:
        if self.base_model.training:
            warnings.warn("base model is in training mode (dropout on): call .eval() for exact decoding", stacklevel=3)

    def generate(
        self,
        prompts: Prompts,
        max_new_tokens: int = 128,
        eos_token_id: Union[int, Sequence[int], None] = None,
        temperature: float = 0.0,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        seed: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
        attention_mask: Optional[torch.Tensor] = None,
        callback: Optional[StepCallback] = None,
        profile: bool = False,
    ) -> GenerationResult:
        """Generate continuations for a batch of prompts.

        Args:
            prompts: list of token-id lists (any lengths), or a padded (B, P) tensor with `attention_mask`.
            max_new_tokens: exact cap on generated tokens per sequence.
            eos_token_id: token id(s) ending a sequence (the EOS is emitted; nothing after it).
            temperature: 0 for greedy decoding, else the sampling temperature.
            top_k, top_p: optional sampling filters (as in transformers).
            seed / generator: random source for sampling (a device generator; `seed` makes a fresh one).
            callback: streaming hook, called after the prefill and after each step with every sequence's
                newly emitted tokens.
            profile: synchronize the device at phase boundaries so `result.timing` is exact (slower on GPU).
        """
        prompt_lists = normalize_prompts(prompts, attention_mask)
        sampling = SamplingConfig(temperature=temperature or 0.0, top_k=top_k, top_p=top_p)
        device = self.runner.device
        rng = make_generator(device, seed, generator) if not sampling.greedy else None
        tracker = OutputTracker(len(prompt_lists), max_new_tokens, eos_token_id, callback, self.num_draft_positions)
        timer = PhaseTimer(device, synchronize=profile)
        self._check_modes()
        num_steps = 0
        if max_new_tokens <= 0:
            return tracker.result(num_steps, timer.timing)

        with torch.inference_mode():
            with timer.phase("prefill"):
                state = self.prefill(prompt_lists, sampling, rng)
                for row, token in zip(state.rows, state.next_tokens.tolist()):
                    tracker.emit(row, [token])
            tracker.flush()
            self._drop_finished(state, tracker)
            while state.rows:
                step = self.decode_step(state, sampling, rng, timer)
                num_steps += 1
                with timer.phase("bookkeeping"):
                    for row, tokens, accepted in zip(state.rows, step.new_tokens, step.num_drafted_accepted):
                        tracker.record_step(row, accepted)
                        tracker.emit(row, tokens)
                    self._drop_finished(state, tracker)
                tracker.flush()
        return tracker.result(num_steps, timer.timing)

    @staticmethod
    def _drop_finished(state: DecodingState, tracker: OutputTracker) -> None:
        keep = [i for i, row in enumerate(state.rows) if not tracker.finished[row]]
        if len(keep) < len(state.rows):
            state.select(keep)
