"""A batched KV cache whose sequences hold different numbers of tokens.

Built on transformers' `DynamicCache` (v5: `cache.layers[i].keys / .values`, each (B, H_kv, S, D)). Sequence b
owns cache slots [start_b, end_b): prompts are left padded, so start_b = P_max - P_b, and after each step a
sequence's accepted tokens are moved to slots end_b, end_b + 1, ... The slots outside [start_b, end_b) are
holes: stale tree nodes or padding, hidden by the attention mask. Because every query gets explicit position
ids (token count so far + tree depth), holes never shift positions.

Each forward appends its Q query tokens at slots S .. S+Q-1 (DynamicLayer concatenates); `commit` then copies
the K/V of the accepted ones into place and cuts the cache back to max_b end_b. Nothing is recomputed.
"""

from __future__ import annotations

from typing import List, Sequence

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class SlotKVCache:
    """DynamicCache plus the valid slot range [starts, ends) of every sequence.

    Attributes:
        cache: the transformers cache passed to the base model's decoder.
        starts, ends: (B,) long device tensors; ends_host / starts_host mirror them on the host.
    """

    def __init__(self, cache: DynamicCache, starts: Sequence[int], ends: Sequence[int], device: torch.device):
        self.cache = cache
        self.starts_host: List[int] = list(starts)
        self.ends_host: List[int] = list(ends)
        self.starts = torch.tensor(self.starts_host, dtype=torch.long, device=device)
        self.ends = torch.tensor(self.ends_host, dtype=torch.long, device=device)

    @property
    def num_slots(self) -> int:
        """S, the cache length (the same for all sequences and layers)."""
        return max(self.ends_host) if self.ends_host else 0

    @property
    def context_lengths(self) -> torch.Tensor:
        """(B,) tokens held per sequence = position id of the next token."""
        return self.ends - self.starts

    def check_layers(self) -> None:
        """Only plain full-attention layers can be compacted slot by slot."""
        for layer in self.cache.layers:
            if type(layer) is not DynamicLayer:
                raise NotImplementedError(
                    f"Cache layer type {type(layer).__name__} is not supported (sliding-window, chunked or "
                    "recurrent layers); only full-attention DynamicLayer caches are."
                )

    def attention_mask(self, query_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """4-D mask for a forward of Q new tokens on top of the cache.

        Args:
            query_mask: (B, Q, Q) bool, which new tokens each new token sees (tree ancestors, or causal).
            dtype: torch.bool for a boolean mask (SDPA), else the model's compute dtype for an additive one.
        Returns:
            (B, 1, Q, S + Q): allowed = True / 0.0, masked = False / the dtype's minimum. transformers passes a 4-D
            mask through unchanged to the attention function (SDPA takes either form; eager adds it to the scores).
        """
        slots = torch.arange(self.num_slots, device=query_mask.device)
        cached = (slots[None, :] >= self.starts[:, None]) & (slots[None, :] < self.ends[:, None])  # (B, S)
        cached = cached[:, None, :].expand(-1, query_mask.shape[1], -1)
        allowed = torch.cat([cached, query_mask], dim=-1)[:, None]
        return as_mask(allowed, dtype)

    def commit(self, path_nodes: torch.Tensor, num_new: torch.Tensor, num_new_host: Sequence[int]) -> None:
        """Keep exactly the accepted new tokens after a forward that appended Q tokens.

        Args:
            path_nodes: (B, K) indices among the Q appended tokens to keep, in order; entries past num_new are
                ignored (they may point anywhere among the Q).
            num_new: (B,) how many to keep per sequence (device); num_new_host: the same on the host.
        """
        old_slots = self.num_slots
        batch, keep = path_nodes.shape
        source = old_slots + path_nodes  # (B, K) slots the forward wrote
        target = self.ends[:, None] + torch.arange(keep, device=path_nodes.device)  # (B, K)
        self.ends_host = [e + n for e, n in zip(self.ends_host, num_new_host)]
        new_slots = self.num_slots
        for layer in self.cache.layers:
            total = layer.keys.shape[2]
            if total < old_slots + keep:
                raise RuntimeError("commit expects the forward's tokens to be appended to the cache")
            # Gather first, then scatter: sources and targets may overlap. Targets past num_new land in holes
            # below `total` (ends + K <= old_slots + Q), and are cut away or masked.
            for name in ("keys", "values"):
                states = getattr(layer, name)
                heads, dim = states.shape[1], states.shape[3]
                src = source.to(states.device)[:, None, :, None].expand(batch, heads, keep, dim)
                dst = target.to(states.device)[:, None, :, None].expand(batch, heads, keep, dim)
                states.scatter_(2, dst, states.gather(2, src))
                setattr(layer, name, states[:, :, :new_slots])
        self.ends = self.ends + num_new

    def append_all(self, count: int) -> None:
        """Keep all `count` tokens of the last forward (only valid when every sequence ends at the last slot)."""
        if any(e != self.num_slots for e in self.ends_host):
            raise RuntimeError("append_all needs aligned sequence ends")
        self.ends_host = [e + count for e in self.ends_host]
        self.ends = self.ends + count

    def merge(self, other: "SlotKVCache") -> None:
        """Append the rows of `other` to this batch (continuous batching: prompts joining running sequences).

        Both caches are first padded at the front to the same slot count (holes, masked like any other); each
        row keeps its [start, end) range, shifted by its cache's padding."""
        slots = max(self.num_slots, other.num_slots)
        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            for name in ("keys", "values"):
                a, b = getattr(mine, name), getattr(theirs, name)
                setattr(mine, name, torch.cat([_pad_front(a, slots), _pad_front(b.to(a.device), slots)], dim=0))
        shift_a, shift_b = slots - self.num_slots, slots - other.num_slots
        self.starts_host = [s + shift_a for s in self.starts_host] + [s + shift_b for s in other.starts_host]
        self.ends_host = [e + shift_a for e in self.ends_host] + [e + shift_b for e in other.ends_host]
        self.starts = torch.cat([self.starts + shift_a, other.starts.to(self.starts.device) + shift_b])
        self.ends = torch.cat([self.ends + shift_a, other.ends.to(self.ends.device) + shift_b])

    def select(self, rows: Sequence[int]) -> None:
        """Keep only `rows` of the batch (in that order) and drop slots no kept sequence uses at the front."""
        index = torch.tensor(list(rows), dtype=torch.long, device=self.ends.device)
        self.starts_host = [self.starts_host[r] for r in rows]
        self.ends_host = [self.ends_host[r] for r in rows]
        front = min(self.starts_host) if rows else 0
        new_slots = self.num_slots
        for layer in self.cache.layers:
            for name in ("keys", "values"):
                states = getattr(layer, name)
                setattr(layer, name, states[index.to(states.device), :, front:new_slots])
        self.starts_host = [s - front for s in self.starts_host]
        self.ends_host = [e - front for e in self.ends_host]
        self.starts = self.starts[index] - front
        self.ends = self.ends[index] - front


def _pad_front(states: torch.Tensor, slots: int) -> torch.Tensor:
    """(B, H, S, D) -> (B, H, slots, D) with zero slots in front."""
    missing = slots - states.shape[2]
    if missing == 0:
        return states
    pad = states.new_zeros(states.shape[0], states.shape[1], missing, states.shape[3])
    return torch.cat([pad, states], dim=2)


def prefill_mask(starts: torch.Tensor, length: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, P, P) causal mask (bool or additive, see `SlotKVCache.attention_mask`) for left-padded prompts
    starting at slots starts (B,).

    Padding queries attend to themselves only, so their (unused) outputs and K/V stay finite.
    """
    slots = torch.arange(length, device=starts.device)
    causal = slots[None, :, None] >= slots[None, None, :]  # (1, P, P) query >= key
    real_key = slots[None, None, :] >= starts[:, None, None]  # (B, 1, P)
    allowed = (causal & real_key) | torch.eye(length, dtype=torch.bool, device=starts.device)
    return as_mask(allowed[:, None], dtype)


def as_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean `allowed` as a boolean mask (dtype torch.bool) or an additive one (0 / dtype minimum)."""
    if dtype == torch.bool:
        return allowed
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)
