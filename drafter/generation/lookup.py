"""Context lookup: candidates copied from a sequence's own tokens, verified in the same tree as the drafter's.

Chat answers repeat their prompt and themselves (names, code, list markers, a small model's loops). Prompt lookup
decoding (Saxena, 2023; transformers' `prompt_lookup_num_tokens`) proposes, after the last n tokens, what
followed their previous occurrence. Here that proposal is one more branch of the drafter's token tree, so a step
accepts whichever is longer: the drafter's beam or the copied span. Verification is unchanged: greedy output is
token for token plain greedy output, and sampling keeps the base model's distribution (the recursive rejection
sampling of `verification.sampling_accept` holds for any set of distinct deterministic children).

The index is host-side and incremental (a dict from n-gram to the end of its most recent occurrence), built from
token ids the decoding loop already reads back, so it adds no device synchronization.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch


def check_ngram_sizes(max_ngram: int, min_ngram: int) -> None:
    """Refuses suffix lengths the lookup cannot try."""
    if not 1 <= min_ngram <= max_ngram:
        raise ValueError(f"need 1 <= min_ngram <= max_ngram, got {min_ngram} and {max_ngram}")


class ContextLookup:
    """The token history of one sequence (prompt + everything emitted) and its n-gram index.

    Args:
        tokens: the sequence so far; its last token is the next step's root.
        max_ngram / min_ngram: suffix lengths tried, longest first.
    """

    def __init__(self, tokens: Sequence[int], max_ngram: int = 3, min_ngram: int = 1):
        check_ngram_sizes(max_ngram, min_ngram)
        self.max_ngram = max_ngram
        self.min_ngram = min_ngram
        self.tokens: List[int] = []
        # n-gram -> index of its last token, for the most recent occurrence that has a successor.
        self._last_end: Dict[Tuple[int, ...], int] = {}
        self.extend(tokens)

    def extend(self, new_tokens: Sequence[int]) -> None:
        """Append emitted tokens."""
        tokens, last_end = self.tokens, self._last_end
        for token in new_tokens:
            end = len(tokens) - 1  # the n-grams ending here get `token` as their successor
            for n in range(self.min_ngram, min(self.max_ngram, end + 1) + 1):
                last_end[tuple(tokens[end - n + 1 : end + 1])] = end
            tokens.append(int(token))

    def propose(self, num_tokens: int) -> List[int]:
        """Up to `num_tokens` tokens predicted to follow the sequence: what followed the most recent earlier
        occurrence of its longest matching suffix. A match inside the current tail continues periodically (a
        repeated span is predicted to repeat again). Empty when no suffix of min_ngram tokens occurred before."""
        tokens = self.tokens
        for n in range(min(self.max_ngram, len(tokens)), self.min_ngram - 1, -1):
            end = self._last_end.get(tuple(tokens[-n:]))
            if end is not None:
                period = len(tokens) - 1 - end  # >= 1: the occurrence ends before the last token
                start = end + 1
                return [tokens[start + i % period] for i in range(num_tokens)]
        return []


def lookup_candidates(lookups: Sequence[ContextLookup], num_tokens: int, device: torch.device
                      ) -> Tuple[torch.Tensor, torch.Tensor]:
    """One candidate per sequence for the token tree: (B, 1, 1 + K) tokens (the root, then the proposal; K = the
    longest proposal in the batch, padded with the root) and (B, 1) lengths, root included (1 = no proposal)."""
    proposals = [lookup.propose(num_tokens) for lookup in lookups]
    width = 1 + max(len(p) for p in proposals)
    rows = [[lookup.tokens[-1]] + p + [lookup.tokens[-1]] * (width - 1 - len(p))
            for lookup, p in zip(lookups, proposals)]
    beams = torch.tensor(rows, dtype=torch.long).view(len(rows), 1, width)
    lengths = torch.tensor([[1 + len(p)] for p in proposals], dtype=torch.long)
    return beams.to(device), lengths.to(device)


def join_candidates(beams: torch.Tensor, extra: torch.Tensor, extra_lengths: torch.Tensor
                    ) -> Tuple[torch.Tensor, torch.Tensor]:
    """The drafter's beams (B, W, L) and extra candidates (B, E, L') as one ragged set (B, W + E, max(L, L')) with
    (B, W + E) lengths; shorter rows are padded with their root token."""
    batch, width, length = beams.shape
    total = max(length, extra.shape[-1])

    def padded(x: torch.Tensor) -> torch.Tensor:
        pad = x[:, :, :1].expand(x.shape[0], x.shape[1], total - x.shape[-1])
        return torch.cat([x, pad], dim=-1)

    lengths = torch.cat([torch.full((batch, width), length, dtype=torch.long, device=beams.device), extra_lengths], 1)
    return torch.cat([padded(beams), padded(extra)], dim=1), lengths
