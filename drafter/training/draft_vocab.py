"""Reduced draft vocabulary: the N most frequent training targets, mapped back to base token ids."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm


def count_target_tokens(
    label_rows, vocab_size: int, ignore_index: int = -100, chunk_size: int = 2048
) -> torch.Tensor:
    """(vocab_size,) counts of every trainable target token over a sequence of label lists."""
    counts = torch.zeros(vocab_size, dtype=torch.long)
    for start in tqdm(range(0, len(label_rows), chunk_size), desc="Counting target tokens", leave=False):
        # one bincount per chunk: per-row calls dominate the cost on large datasets
        chunk = [torch.as_tensor(row, dtype=torch.long) for row in label_rows[start : start + chunk_size]]
        labels = torch.cat(chunk) if chunk else torch.zeros(0, dtype=torch.long)
        counts += torch.bincount(labels[labels != ignore_index], minlength=vocab_size)
    return counts


def select_draft_vocabulary(counts: torch.Tensor, draft_vocab_size: int) -> tuple[torch.Tensor, float]:
    """The draft-to-base map (most frequent first) and the fraction of targets it covers."""
    if not 0 < draft_vocab_size <= counts.numel():
        raise ValueError(f"draft_vocab_size must be in 1..{counts.numel()}, got {draft_vocab_size}")
    top = torch.topk(counts, draft_vocab_size, sorted=True)
    coverage = top.values.sum().item() / max(counts.sum().item(), 1)
    return top.indices, coverage
