"""Token selection from base-model logits: greedy, or sampling from the warped distribution.

The warping (temperature -> top-k -> top-p) follows the order and tie rules of transformers' logits warpers, so
"the base model's distribution" means the same thing here as in `model.generate(do_sample=True, ...)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class SamplingConfig:
    """How the next token is chosen from the base model's logits.

    Args:
        temperature: 0 (or less) selects greedy decoding; otherwise logits are divided by it before sampling.
        top_k: keep only the k most likely tokens (ignored when greedy).
        top_p: keep the smallest set of most likely tokens whose probability reaches top_p (ignored when greedy).
    """

    temperature: float = 0.0
    top_k: Optional[int] = None
    top_p: Optional[float] = None

    def __post_init__(self) -> None:
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature is None or self.temperature <= 0.0


def warp_logits(logits: torch.Tensor, config: SamplingConfig) -> torch.Tensor:
    """Apply temperature, top-k and top-p to logits (..., V); removed tokens get -inf. Returns float32."""
    logits = logits.float() / config.temperature
    if config.top_k is not None and config.top_k < logits.shape[-1]:
        kth_best = torch.topk(logits, config.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    if config.top_p is not None and config.top_p < 1.0:
        # As transformers' TopPLogitsWarper: drop the low tail whose cumulative mass is <= 1 - top_p,
        # always keeping the most likely token.
        sorted_logits, sorted_idx = torch.sort(logits, dim=-1, descending=False)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cumulative <= (1.0 - config.top_p)
        drop_sorted[..., -1] = False
        drop = drop_sorted.scatter(-1, sorted_idx, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def warped_probs(logits: torch.Tensor, config: SamplingConfig) -> torch.Tensor:
    """Probabilities (..., V) float32 of the warped distribution the sampler draws from."""
    return warp_logits(logits, config).softmax(dim=-1)


def sample_from(probs: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    """One draw per row from (possibly unnormalized) probabilities (..., V) -> (...) long."""
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])


def select_tokens(
    logits: torch.Tensor, config: SamplingConfig, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """Next tokens (...) from logits (..., V): argmax when greedy, else a sample of the warped distribution."""
    if config.greedy:
        return logits.argmax(dim=-1)
    return sample_from(warped_probs(logits, config), generator)
