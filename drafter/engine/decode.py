"""The one batched decoding loop: plain decoding, speculative decoding, teacher data and distilled
continuations all run through `BatchedDecoder`.

prefill -> first token from the last prompt position -> repeat `decode_step` until every sequence has hit
EOS or max_new_tokens. Finished sequences leave the batch (their cache rows are dropped), so late steps only
pay for the sequences still running. Subclasses say what one step is (one token, a verified token tree, one
token at every position of a conversation) by implementing `prefill` and `decode_step`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Union

import torch
from transformers import PreTrainedModel

from .base_lm import BaseLM, Prompts, normalize_prompts
from .kv_cache import SlotKVCache
from .result import FinishCallback, GenerationResult, OutputTracker, PhaseTimer, StepCallback
from .sampling import Randomness, RowGenerators, SamplingConfig, select_tokens


@dataclass
class DecodingState:
    """Everything the loop carries between steps for the sequences still running.

    Attributes:
        cache: KV cache holding every decided token except `next_tokens`.
        hidden: (B, H) the drafting context: the base's last hidden state at the last cached position.
        next_tokens: (B,) the base model's next token: decided and emitted, not yet in the cache.
        rows: input-batch index of each row.
        rng: the random source; per-row streams (`RowGenerators`) follow their rows when rows leave.
        drafter_cache: a drafter's own cache over the verified context (EAGLE-3), in the slot layout of `cache`;
            `hidden` is then the drafter's output at the last verified position.
        row_context: host-side objects a decoder keeps per row (e.g. each row's token history for context
            lookup); they follow their rows.
    """

    cache: SlotKVCache
    hidden: torch.Tensor
    next_tokens: torch.Tensor
    rows: List[int]
    rng: Randomness = None
    drafter_cache: Optional[SlotKVCache] = None
    row_context: Optional[List[Any]] = None

    def select(self, keep: Sequence[int]) -> None:
        """Keep only the rows at positions `keep`."""
        index = torch.tensor(list(keep), dtype=torch.long, device=self.hidden.device)
        self.cache.select(keep)
        if self.drafter_cache is not None:
            self.drafter_cache.select(keep)
        self.hidden = self.hidden[index]
        self.next_tokens = self.next_tokens[index]
        self.rows = [self.rows[i] for i in keep]
        if self.row_context is not None:
            self.row_context = [self.row_context[i] for i in keep]
        if isinstance(self.rng, RowGenerators):
            self.rng.select(keep)

    def merge(self, other: "DecodingState") -> None:
        """Append the rows of `other` (prompts that joined; same random source kind)."""
        self.cache.merge(other.cache)
        if self.drafter_cache is not None:
            self.drafter_cache.merge(other.drafter_cache)
        self.hidden = torch.cat([self.hidden, other.hidden])
        self.next_tokens = torch.cat([self.next_tokens, other.next_tokens])
        self.rows = self.rows + other.rows
        if self.row_context is not None:
            self.row_context = self.row_context + other.row_context
        if isinstance(self.rng, RowGenerators):
            self.rng.extend(other.rng)


@dataclass
class StepOutput:
    """Host-side result of one decoding step, per row of the state (before EOS / length truncation)."""

    new_tokens: List[List[int]]
    num_drafted_accepted: List[int]


def make_rng(device: torch.device, seed: Optional[int], generator: Optional[torch.Generator]) -> Randomness:
    """The batch's random source: `generator` if given, else a fresh device generator seeded with `seed`."""
    if generator is not None:
        return generator
    if seed is None:
        return None
    return torch.Generator(device=device).manual_seed(seed)


class BatchedDecoder:
    """Base class: runs the loop; subclasses implement `decode_step` (and may replace `prefill`)."""

    num_draft_steps: int = 0

    def __init__(self, base_model: PreTrainedModel):
        self.base_model = base_model
        self.lm = BaseLM(base_model)
        self.lm.require_4d_masks()

    def decode_step(self, state: DecodingState, sampling: SamplingConfig, timer: PhaseTimer) -> StepOutput:
        """Advance every sequence of `state` by one step (in place); return the new tokens per row."""
        raise NotImplementedError

    @torch.inference_mode()
    def prefill(self, prompts: List[List[int]], sampling: SamplingConfig, rng: Randomness = None) -> DecodingState:
        """Fill the cache with the prompts and choose each sequence's first new token."""
        cache, hidden = self.lm.prefill(prompts)
        first = select_tokens(self.lm.logits(hidden), sampling, rng)
        return DecodingState(cache=cache, hidden=hidden, next_tokens=first, rows=list(range(len(prompts))), rng=rng)

    def _check_positions(self, prompts: List[List[int]], max_new_tokens: int) -> None:
        """Refuse prompts the base model has no positions for (it would decode garbage, silently)."""
        positions = getattr(self.base_model.config.get_text_config(), "max_position_embeddings", None)
        longest = max(len(p) for p in prompts)
        # A verification step may look num_draft_steps tokens past the last one kept.
        if positions and longest + max(max_new_tokens, 0) + self.num_draft_steps > positions:
            raise ValueError(
                f"a prompt of {longest} tokens plus {max_new_tokens} new tokens exceeds the base model's {positions} "
                "positions; shorten the prompt or ask for fewer new tokens"
            )

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
        row_seeds: Optional[Sequence[int]] = None,
        on_finish: Optional[FinishCallback] = None,
        max_batch_size: Optional[int] = None,
    ) -> GenerationResult:
        """Generate continuations for a batch of prompts.

        Args:
            prompts: list of token-id lists (any lengths), or a padded (B, P) tensor with `attention_mask`.
            max_new_tokens: exact cap on generated tokens per sequence.
            eos_token_id: token id(s) ending a sequence (the EOS is emitted; nothing after it).
            temperature: 0 for greedy decoding, else the sampling temperature.
            top_k, top_p: optional sampling filters (as in transformers).
            seed / generator: random source for sampling (a device generator; `seed` makes a fresh one).
            row_seeds: instead, one seeded stream per prompt (see `RowGenerators`): a prompt's tokens then do
                not depend on the batch it is decoded in.
            callback: streaming hook, called after the prefill and after each step with every sequence's
                newly emitted tokens.
            on_finish: called with (prompt index, tokens) as soon as a sequence is complete.
            profile: synchronize the device at phase boundaries so `result.timing` is exact (slower on GPU).
            max_batch_size: continuous batching: at most this many sequences decode together; as they finish,
                waiting prompts are prefilled and join the running batch (in the given order). None: all at once.
        """
        prompt_lists = normalize_prompts(prompts, attention_mask)
        self._check_positions(prompt_lists, max_new_tokens)
        sampling = SamplingConfig(temperature=temperature or 0.0, top_k=top_k, top_p=top_p)
        device = self.lm.device
        rng: Randomness = None
        streams = None  # per-prompt seeds: each row's generator is made when it joins the batch (`_Waiting`)
        if not sampling.greedy:
            if row_seeds is not None:
                if len(row_seeds) != len(prompt_lists):
                    raise ValueError(f"{len(row_seeds)} row_seeds for {len(prompt_lists)} prompts")
                streams = row_seeds
            else:
                rng = make_rng(device, seed, generator)
        if max_batch_size is not None and max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        tracker = OutputTracker(
            len(prompt_lists), max_new_tokens, eos_token_id, callback, self.num_draft_steps, on_finish
        )
        timer = PhaseTimer(device, synchronize=profile)
        self._check_modes()
        if max_new_tokens <= 0:
            return tracker.result(0, timer.timing)
        waiting = _Waiting(prompt_lists, streams, rng, sampling, device, max_batch_size or len(prompt_lists))
        with torch.inference_mode():
            with timer.phase("prefill"):
                state = waiting.prefill(self, waiting.take(waiting.batch_size))
            return self.run(state, sampling, tracker, timer, waiting)

    @torch.inference_mode()
    def run(
        self, state, sampling: SamplingConfig, tracker: OutputTracker, timer: PhaseTimer,
        waiting: Optional["_Waiting"] = None,
    ) -> GenerationResult:
        """The loop proper, from a prefilled state (any object with `rows`, `next_tokens` and `select`); with
        `waiting`, prompts join the batch as rows finish (states then also need `merge`)."""
        self._start_rows(state, tracker)
        num_steps = 0
        while state.rows or (waiting is not None and waiting.rows):
            if waiting is not None and waiting.rows and waiting.should_refill(len(state.rows)):
                with timer.phase("prefill"):
                    joining = waiting.prefill(self, waiting.take(waiting.batch_size - len(state.rows)))
                self._start_rows(joining, tracker)
                if not state.rows:
                    state = joining
                elif joining.rows:
                    state.merge(joining)
                if not state.rows:
                    continue
            step = self.decode_step(state, sampling, timer)
            num_steps += 1
            with timer.phase("bookkeeping"):
                for row, tokens, accepted in zip(state.rows, step.new_tokens, step.num_drafted_accepted):
                    tracker.record_step(row, accepted)
                    tracker.emit(row, tokens)
                self._drop_finished(state, tracker)
            tracker.flush()
        return tracker.result(num_steps, timer.timing)

    def _start_rows(self, state, tracker: OutputTracker) -> None:
        """Emit the first token of freshly prefilled rows; drop those it finishes."""
        for row, token in zip(state.rows, state.next_tokens.tolist()):
            tracker.emit(row, [token])
        tracker.flush()
        self._drop_finished(state, tracker)

    @staticmethod
    def _drop_finished(state, tracker: OutputTracker) -> None:
        keep = [i for i, row in enumerate(state.rows) if not tracker.finished[row]]
        if len(keep) < len(state.rows):
            state.select(keep)


class _Waiting:
    """The prompts not yet in the batch (continuous batching), with their random source: `row_seeds` (one
    seeded stream per prompt) or the batch's shared `rng`."""

    def __init__(self, prompts: List[List[int]], row_seeds: Optional[Sequence[int]], rng: Randomness,
                 sampling: SamplingConfig, device: torch.device, batch_size: int):
        self.prompts = prompts
        self.row_seeds = row_seeds
        self.rng = rng
        self.sampling = sampling
        self.device = device
        self.batch_size = batch_size
        self.rows: List[int] = list(range(len(prompts)))

    def take(self, count: int) -> List[int]:
        taken, self.rows = self.rows[:count], self.rows[count:]
        return taken

    def should_refill(self, running: int) -> bool:
        """Refill when a quarter of the batch is free (or nothing runs): a prefill per finished row would cost
        more than the fuller batch gains."""
        free = self.batch_size - running
        return running == 0 or free >= max(1, self.batch_size // 4)

    def prefill(self, decoder: "BatchedDecoder", rows: List[int]) -> DecodingState:
        rng = self.rng
        if self.row_seeds is not None:  # the joining rows' own streams
            rng = RowGenerators.from_seeds([self.row_seeds[r] for r in rows], self.device)
        state = decoder.prefill([self.prompts[r] for r in rows], self.sampling, rng)
        state.rows = list(rows)
        return state
