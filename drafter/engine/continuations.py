"""Continuations of every position of a sequence at once, through the engine's decode loop.

Given right-padded sequences and, per sequence, M positions t, the base model continues every prefix
``sequence[: t + 1]`` by up to N tokens. The whole sequence is run once (its KV cache is the shared prefix of
every continuation); then step j feeds the j-th continuation token of all M positions together, as M query
tokens appended to the cache, with a block attention mask: the query of position t sees prefix keys <= t and
its own earlier continuation tokens (a diagonal in each appended block), at position id t + j. That is N
forward passes per batch of sequences, never one generation per position.

Rows of the loop are the (sequence, position) pairs; a finished row (EOS or N tokens) stops emitting while the
batch keeps its shape (every step costs the same M queries per sequence).
"""

from __future__ import annotations

from typing import List, Sequence

import torch
from transformers import DynamicCache

from .decode import BatchedDecoder, StepOutput
from .kv_cache import as_mask
from .result import OutputTracker, PhaseTimer
from .sampling import RowGenerators, SamplingConfig, select_tokens


class ContinuationState:
    """The loop state of `ContinuationDecoder`: the (B, M) grid of continuations and the rows still running.

    Attributes:
        grid: (B, M) the newest token of every continuation (0 where a sequence has fewer than M positions).
        counts: positions per sequence; flattened row r is (sequence b, position m) in sequence-major order.
        rows: flattened ids of the rows still running.
    """

    def __init__(self, cache: DynamicCache, grid: torch.Tensor, counts: List[int], query_pos: torch.Tensor,
                 prefix: torch.Tensor, rng: RowGenerators | None):
        self.cache = cache
        self.grid = grid
        self.counts = counts
        self.query_pos = query_pos  # (B, M) position of each continued prefix's last token
        self.prefix = prefix  # (B, M, L) which prefix keys each continuation sees
        self.rng = rng
        self.step = 0  # continuation tokens already fed back
        self.cells = [(b, m) for b, count in enumerate(counts) for m in range(count)]
        self.rows = list(range(len(self.cells)))

    @property
    def next_tokens(self) -> torch.Tensor:
        """(rows,) the newest token of each running row."""
        index = [self.cells[r] for r in self.rows]
        return self.grid[[b for b, _ in index], [m for _, m in index]]

    def select(self, keep: Sequence[int]) -> None:
        """Keep only the rows at positions `keep` (the grid keeps its shape)."""
        self.rows = [self.rows[i] for i in keep]


class ContinuationDecoder(BatchedDecoder):
    """`continue_positions`: up to N base-model tokens after every given position of every sequence."""

    @torch.inference_mode()
    def continue_positions(
        self,
        sequences: List[List[int]],
        positions: List[List[int]],
        num_tokens: int,
        eos_token_id: Sequence[int],
        sampling: SamplingConfig,
        rng: RowGenerators | None = None,
        pad_token_id: int = 0,
    ) -> List[List[int]]:
        """Continuations, one list of <= num_tokens ids per (sequence, position) in sequence-major order.

        Args:
            rng: with sampling, one stream per sequence (counts = positions per sequence), so a sequence's
                continuations depend on neither its batch nor its batch size.
        """
        counts = [len(p) for p in positions]
        tracker = OutputTracker(sum(counts), num_tokens, list(eos_token_id))
        if not tracker.sequences or num_tokens <= 0:
            return tracker.sequences
        state = self._prefill_positions(sequences, positions, sampling, rng, pad_token_id)
        self.run(state, sampling, tracker, PhaseTimer(self.lm.device))
        return tracker.sequences

    def _select(self, hidden: torch.Tensor, counts: List[int], sampling: SamplingConfig, rng) -> torch.Tensor:
        """(B, M) tokens from (B, M, H) hidden states; the output layer runs per sequence on its real positions."""
        batch, num = hidden.shape[:2]
        logits = torch.cat([self.lm.logits(hidden[b, :count]) for b, count in enumerate(counts) if count])
        chosen = select_tokens(logits, sampling, rng)
        tokens = torch.zeros((batch, num), dtype=torch.long, device=hidden.device)
        valid = torch.arange(num, device=hidden.device)[None, :] < torch.tensor(counts, device=hidden.device)[:, None]
        tokens[valid] = chosen
        return tokens

    def _prefill_positions(self, sequences, positions, sampling, rng, pad_token_id) -> ContinuationState:
        lm, device = self.lm, self.lm.device
        batch, length = len(sequences), max(len(s) for s in sequences)
        num = max(len(p) for p in positions)
        input_ids = torch.full((batch, length), pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((batch, length), dtype=torch.long)
        query_pos = torch.zeros((batch, num), dtype=torch.long)
        valid = torch.zeros((batch, num), dtype=torch.bool)
        for b, (sequence, pos) in enumerate(zip(sequences, positions)):
            input_ids[b, : len(sequence)] = torch.tensor(sequence)
            attention_mask[b, : len(sequence)] = 1
            query_pos[b, : len(pos)] = torch.tensor(pos, dtype=torch.long)
            valid[b, : len(pos)] = True
        query_pos, valid = query_pos.to(device), valid.to(device)
        cache = DynamicCache(config=self.base_model.config)
        hidden = lm.forward(input_ids.to(device), attention_mask.to(device), None, cache)
        counts = [len(p) for p in positions]
        rows = torch.arange(batch, device=device)[:, None]
        grid = self._select(hidden[rows, query_pos], counts, sampling, rng)
        # The continuation of position t sees the ground truth up to t (never padding).
        prefix = (torch.arange(length, device=device)[None, None, :] <= query_pos[:, :, None]) & valid[:, :, None]
        return ContinuationState(cache, grid, counts, query_pos, prefix, rng)

    def decode_step(self, state: ContinuationState, sampling: SamplingConfig, timer: PhaseTimer) -> StepOutput:
        lm = self.lm
        with timer.phase("verification"):
            state.step += 1
            batch, num = state.grid.shape
            own = torch.eye(num, dtype=torch.bool, device=lm.device)[None].expand(batch, -1, -1)  # (B, M, M)
            allowed = torch.cat([state.prefix] + [own] * state.step, dim=-1)[:, None]  # (B, 1, M, L + step * M)
            hidden = lm.forward(state.grid, as_mask(allowed, lm.dtype), state.query_pos + state.step, state.cache)
            state.grid = self._select(hidden, state.counts, sampling, state.rng)
            new_tokens = [[token] for token in state.next_tokens.tolist()]
        return StepOutput(new_tokens=new_tokens, num_drafted_accepted=[0] * len(new_tokens))
