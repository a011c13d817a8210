"""A batched KV cache whose sequences hold different numbers of tokens, in storage allocated ahead of use.

A transformers `Cache` (v5: `cache.layers[i].keys / .values`, each (B, H_kv, S, D)) of `SlotLayer`s. Sequence b
owns cache slots [start_b, end_b): prompts are left padded, so start_b = P_max - P_b, and after each step a
sequence's accepted tokens are moved to slots end_b, end_b + 1, ... The slots outside [start_b, end_b) are
holes: stale tree nodes or padding, hidden by the attention mask. Because every query gets explicit position
ids (token count so far + tree depth), holes never shift positions.

Each forward writes its Q query tokens at slots S .. S+Q-1 in place; `commit` then moves the K/V of the accepted
ones into place and cuts the cache back to max_b end_b. Nothing is recomputed, and no step copies the whole
cache: transformers' `DynamicLayer` concatenates every layer's cache with the new tokens at each forward
(~18 MB a step for the embedded model at 400 cached tokens), a `SlotLayer` writes the new slots only.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from transformers import DynamicCache, PretrainedConfig
from transformers.cache_utils import DynamicLayer

# Slots allocated past a layer's first forward, and at least as many again whenever it grows: a prompt's
# cache then holds a typical answer (plus the last step's tree) without reallocating.
HEADROOM_SLOTS = 256


class SlotLayer(DynamicLayer):
    """One full-attention layer's K/V: `keys` / `values` (B, H_kv, S, D) are views of the first S slots of
    storage (B, H_kv, capacity, D). A forward's new tokens are written after slot S (the storage grows
    geometrically when full); `set_length`, `move_slots`, `take_rows` and `concatenate` are what `SlotKVCache`
    does to it between forwards."""

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self._store(key_states[:, :, :0], value_states[:, :, :0], capacity=key_states.shape[2] + HEADROOM_SLOTS)
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Write Q new tokens (B, H_kv, Q, D) at slots S .. S+Q-1; returns the (B, H_kv, S+Q, D) keys and values."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start = self.num_slots
        end = start + key_states.shape[2]
        # transformers' own DynamicLayer methods (reset, batch_select_indices, ...) assign new tensors to keys /
        # values: those then become the storage's contents.
        if not self._views_of_storage():
            self._store(self.keys, self.values, capacity=end + HEADROOM_SLOTS)
        if end > self.capacity:
            self._store(self.keys, self.values, capacity=max(2 * self.capacity, end + HEADROOM_SLOTS))
        self._key_storage[:, :, start:end].copy_(key_states)
        self._value_storage[:, :, start:end].copy_(value_states)
        self.set_length(end)
        return self.keys, self.values

    @property
    def num_slots(self) -> int:
        return self.keys.shape[2] if self.is_initialized else 0

    def _views_of_storage(self) -> bool:
        return (self.keys.data_ptr() == self._key_storage.data_ptr()
                and self.values.data_ptr() == self._value_storage.data_ptr())

    @property
    def capacity(self) -> int:
        return self._key_storage.shape[2]

    def set_length(self, slots: int) -> None:
        """Keep the first `slots` slots (<= capacity; slots past the old length hold whatever was written)."""
        self.keys = self._key_storage[:, :, :slots]
        self.values = self._value_storage[:, :, :slots]

    def move_slots(self, source: torch.Tensor, target: torch.Tensor) -> None:
        """Copy slots `source` (B, K) to slots `target` (B, K), per row, in place. Sources and targets may overlap:
        everything is gathered before anything is written."""
        batch, count = source.shape
        for states in (self.keys, self.values):
            heads, dim = states.shape[1], states.shape[3]
            src = source.to(states.device)[:, None, :, None].expand(batch, heads, count, dim)
            dst = target.to(states.device)[:, None, :, None].expand(batch, heads, count, dim)
            states.scatter_(2, dst, states.gather(2, src))

    def take_rows(self, index: torch.Tensor, front: int) -> None:
        """Keep rows `index` (in that order) and only the slots from `front` on."""
        index = index.to(self.device)
        self._store(self.keys[index, :, front:], self.values[index, :, front:], capacity=self.capacity - front)

    def concatenate(self, other: "SlotLayer", slots: int) -> None:
        """Append the rows of `other` after this layer's rows, both padded at the front to `slots` slots."""
        keys = torch.cat([_pad_front(self.keys, slots), _pad_front(other.keys.to(self.device), slots)])
        values = torch.cat([_pad_front(self.values, slots), _pad_front(other.values.to(self.device), slots)])
        self._store(keys, values, capacity=max(self.capacity, other.capacity, slots + HEADROOM_SLOTS))

    def _store(self, keys: torch.Tensor, values: torch.Tensor, capacity: int) -> None:
        """New storage of `capacity` slots holding `keys` / `values` (B, H_kv, S, D) in its first S slots."""
        batch, heads, slots, dim = keys.shape
        self._key_storage = keys.new_empty(batch, heads, capacity, dim)
        self._value_storage = values.new_empty(batch, heads, capacity, values.shape[3])
        self._key_storage[:, :, :slots].copy_(keys)
        self._value_storage[:, :, :slots].copy_(values)
        self.set_length(slots)


def empty_slot_cache(config: Optional[PretrainedConfig] = None, num_layers: int = 1) -> DynamicCache:
    """An empty cache of `SlotLayer`s: one per decoder layer of `config`, or `num_layers` (a drafter's own).

    Only plain full-attention layers can be compacted slot by slot; sliding-window, chunked or recurrent layers
    are refused."""
    cache = DynamicCache(config=config) if config is not None else DynamicCache()
    for layer in cache.layers:
        if type(layer) is not DynamicLayer:
            raise NotImplementedError(
                f"Cache layer type {type(layer).__name__} is not supported (sliding-window, chunked or recurrent "
                "layers); only full-attention layers are."
            )
    cache.layers = [SlotLayer() for _ in range(len(cache.layers) if config is not None else num_layers)]
    cache.layer_class_to_replicate = None  # a layer the config did not announce is an error, not a new layer
    return cache


class SlotKVCache:
    """A cache of `SlotLayer`s plus the valid slot range [starts, ends) of every sequence.

    Attributes:
        cache: the transformers cache passed to the base model's decoder (see `empty_slot_cache`).
        starts, ends: (B,) long device tensors; ends_host / starts_host mirror them on the host.
    """

    def __init__(self, cache: DynamicCache, starts: Sequence[int], ends: Sequence[int], device: torch.device):
        if any(not isinstance(layer, SlotLayer) for layer in cache.layers):
            raise TypeError("SlotKVCache needs a cache of SlotLayers (empty_slot_cache)")
        self.cache = cache
        self.starts_host: List[int] = list(starts)
        self.ends_host: List[int] = list(ends)
        self.starts = torch.tensor(self.starts_host, dtype=torch.long, device=device)
        self.ends = torch.tensor(self.ends_host, dtype=torch.long, device=device)

    @property
    def layers(self) -> List[SlotLayer]:
        return self.cache.layers

    @property
    def num_slots(self) -> int:
        """S, the cache length (the same for all sequences and layers)."""
        return max(self.ends_host) if self.ends_host else 0

    @property
    def context_lengths(self) -> torch.Tensor:
        """(B,) tokens held per sequence = position id of the next token."""
        return self.ends - self.starts

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
        keep = path_nodes.shape[1]
        source = old_slots + path_nodes  # (B, K) slots the forward wrote
        target = self.ends[:, None] + torch.arange(keep, device=path_nodes.device)  # (B, K)
        self.ends_host = [e + n for e, n in zip(self.ends_host, num_new_host)]
        new_slots = self.num_slots
        for layer in self.layers:
            if layer.num_slots < old_slots + keep:
                raise RuntimeError("commit expects the forward's tokens to be appended to the cache")
            # Targets past num_new land in holes below the forward's last slot (ends + K <= old_slots + Q), and are
            # cut away or masked.
            layer.move_slots(source, target)
            layer.set_length(new_slots)
        self.ends = self.ends + num_new

    def append_all(self, count: int) -> None:
        """Keep all `count` tokens of the last forward (only valid when every sequence ends at the last slot)."""
        if any(e != self.num_slots for e in self.ends_host):
            raise RuntimeError("append_all needs aligned sequence ends")
        self.ends_host = [e + count for e in self.ends_host]
        self.ends = self.ends + count

    def rewind(self, ends: Sequence[int]) -> None:
        """Forget every token after slot ends[b] of each row (what they held stays in the storage, unused)."""
        self.ends_host = list(ends)
        self.ends = torch.tensor(self.ends_host, dtype=torch.long, device=self.ends.device)
        for layer in self.layers:
            layer.set_length(self.num_slots)

    def merge(self, other: "SlotKVCache") -> None:
        """Append the rows of `other` to this batch (continuous batching: prompts joining running sequences).

        Both caches are first padded at the front to the same slot count (holes, masked like any other); each
        row keeps its [start, end) range, shifted by its cache's padding."""
        slots = max(self.num_slots, other.num_slots)
        for mine, theirs in zip(self.layers, other.layers):
            mine.concatenate(theirs, slots)
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
        for layer in self.layers:
            layer.set_length(self.num_slots)
            layer.take_rows(index, front)
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
