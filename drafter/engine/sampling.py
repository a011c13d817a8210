"""The one sampling stack: token selection from base-model logits, greedy or from the warped distribution.

The warping (temperature -> top-k -> top-p) follows the order and tie rules of transformers' logits warpers, so
"the base model's distribution" means the same thing here as in `model.generate(do_sample=True, ...)`.

Random draws come from either
* one `torch.Generator` for the whole batch (`torch.multinomial`; speculative and plain decoding), or
* `RowGenerators`: every row its own seeded stream and one uniform per row, drawn by inverse CDF
  (teacher data, distilled continuations), so a row's tokens depend neither on the batch it is decoded in nor
  on how often the job was resumed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import List, Optional, Sequence, Union

import torch

from .dtypes import at_least_float32


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


def row_seed(seed: int, key: str) -> int:
    """The seed of one row's random stream: a hash of (seed, key), independent of batches, shards and resumes."""
    digest = hashlib.sha256(f"{int(seed)}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class RowGenerators:
    """Per-row random streams: row group i draws `counts[i]` uniforms per step from `generators[i]`.

    With the default counts (one row per generator) every row has its own stream; the distilled continuations
    give all positions of one conversation one stream (counts = positions per conversation).
    """

    def __init__(self, generators: Sequence[torch.Generator], counts: Optional[Sequence[int]] = None):
        self.generators: List[torch.Generator] = list(generators)
        self.counts: List[int] = list(counts) if counts is not None else [1] * len(self.generators)

    @classmethod
    def from_seeds(
        cls, seeds: Sequence[int], device: Union[str, torch.device], counts: Optional[Sequence[int]] = None
    ) -> "RowGenerators":
        return cls([torch.Generator(device=device).manual_seed(int(s)) for s in seeds], counts)

    def uniforms(self) -> torch.Tensor:
        """(sum(counts),) uniforms in [0, 1), group by group."""
        return torch.cat(
            [torch.rand(count, generator=g, device=g.device) for g, count in zip(self.generators, self.counts)]
        )

    def select(self, keep: Sequence[int]) -> None:
        """Keep only the row groups at positions `keep` (in that order)."""
        self.generators = [self.generators[i] for i in keep]
        self.counts = [self.counts[i] for i in keep]

    def extend(self, other: "RowGenerators") -> None:
        """Append the row groups of `other` (rows joining the batch)."""
        self.generators += other.generators
        self.counts += other.counts


Randomness = Union[torch.Generator, RowGenerators, None]


def warp_logits(logits: torch.Tensor, config: SamplingConfig) -> torch.Tensor:
    """Apply temperature, top-k and top-p to logits (..., V); removed tokens get -inf. float32 (float64 stays)."""
    logits = at_least_float32(logits) / config.temperature
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
    """Probabilities (..., V) of the warped distribution the sampler draws from."""
    return warp_logits(logits, config).softmax(dim=-1)


def sample_from(probs: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    """One draw per row from (possibly unnormalized) probabilities (..., V) -> (...) long."""
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])


def inverse_cdf_sample(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Tokens (rows,) drawn from `probs` (rows, V) with one uniform in [0, 1) per row (inverse-CDF sampling).

    Far cheaper than `torch.multinomial` per row on large vocabularies; a row's draw depends only on its own
    distribution and uniform, so not on the batch it is in.
    """
    cdf = probs.double().cumsum(dim=-1)
    # right=True: the first index whose cdf exceeds the target, which always has a non-zero probability.
    targets = (uniforms.to(cdf.device).double() * cdf[:, -1])[:, None]
    return torch.searchsorted(cdf, targets, right=True)[:, 0].clamp(max=probs.shape[-1] - 1)


def select_tokens(logits: torch.Tensor, config: SamplingConfig, rng: Randomness = None) -> torch.Tensor:
    """Next tokens (...) from logits (..., V): argmax when greedy, else a sample of the warped distribution.

    With `RowGenerators`, logits are (rows, V) and row r takes the r-th of `rng.uniforms()`.
    """
    if config.greedy:
        return logits.argmax(dim=-1)
    probs = warped_probs(logits, config)
    if isinstance(rng, RowGenerators):
        return inverse_cdf_sample(probs, rng.uniforms())
    return sample_from(probs, rng)
