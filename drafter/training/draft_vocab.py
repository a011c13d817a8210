"""Reduced draft vocabulary: the N most frequent training targets, mapped back to base token ids."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm


def count_target_tokens(label_rows, vocab_size: int, ignore_index: int = -100) -> torch.Tensor:
    """(vocab_size,) counts of every trainable target token over an iterable of label lists."""
    counts = torch.zeros(vocab_size, dtype=torch.long)
    for labels in tqdm(label_rows, desc="Counting target tokens", leave=False):
        labels = torch.as_tensor(labels, dtype=torch.long)
        labels = labels[labels != ignore_index]
        counts += torch.bincount(labels, minlength=vocab_size)
    return counts


def select_draft_vocabulary(counts: torch.Tensor, draft_vocab_size: int) -> tuple[torch.Tensor, float]:
    """The draft-to-base map (most frequent first) and the fraction of targets it covers."""
    if not 0 < draft_vocab_size <= counts.numel():
        raise ValueError(f"draft_vocab_size must be in 1..{counts.numel()}, got {draft_vocab_size}")
    top = torch.topk(counts, draft_vocab_size, sorted=True)
    coverage = top.values.sum().item() / max(counts.sum().item(), 1)
    return top.indices, coverage
