"""On-disk layout of a feature cache, and reading it back as a training dataset.

    index.json                    identity (base model, tokenizer + data, parameters), shards per split
    train/shard-00000.safetensors examples concatenated along tokens:
                                    input_ids, labels        (T,) int32
                                    offsets                  (n + 1,) int64: example i is tokens offsets[i]:offsets[i+1]
                                    hidden                   (T, H) the base's last hidden state (bf16 / fp16 / fp32)
                                    hidden.<layer>           (T, H) further layers, when asked for (EAGLE-3 fuses three)
                                    distill_targets          (T, N) int32, the distilled dataset's continuations
                                                             (training split only)
    eval/shard-00000.safetensors  the held-out split, the same way

Shards are written atomically and recorded in index.json only once complete, so a killed build resumes at the
next shard; an index made from other inputs is refused (`StaleFeaturesError`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch

from ..store import StaleCacheError, check_identity, write_json

FEATURES_FORMAT_VERSION = 1
INDEX_FILE = "index.json"
SPLITS = ("train", "eval")


class StaleFeaturesError(StaleCacheError):
    """A feature cache was built from another base model, tokenizer, dataset or parameters."""


@dataclass
class FeatureCache:
    """A feature folder and its index."""

    root: Path
    index: Dict[str, Any]

    @classmethod
    def open(cls, root: Union[str, os.PathLike], identity: Optional[Dict[str, Any]] = None) -> "FeatureCache":
        """Open an existing cache (FileNotFoundError when there is none); with `identity`, refuse a cache made
        from other inputs."""
        root = Path(root)
        path = root / INDEX_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{root} is not a feature cache (no {INDEX_FILE}); build one with "
                                    "python -m drafter.features --output_dir " + str(root))
        cache = cls(root, json.loads(path.read_text(encoding="utf-8")))
        if identity is not None:
            cache.check(identity)
        return cache

    @classmethod
    def create_or_resume(cls, root: Union[str, os.PathLike], identity: Dict[str, Any]) -> "FeatureCache":
        root = Path(root)
        if (root / INDEX_FILE).is_file():
            return cls.open(root, identity)
        cache = cls(root, {"identity": identity, "shards": {split: [] for split in SPLITS}, "complete": False})
        cache.save()
        return cache

    def check(self, identity: Dict[str, Any]) -> None:
        check_identity(
            self.index["identity"], identity,
            f"{self.root} holds features of other inputs than requested",
            "Build a new cache (another --output_dir) or delete this one.",
            error=StaleFeaturesError,
        )

    def save(self) -> None:
        write_json(self.root / INDEX_FILE, self.index, sort_keys=True, trailing_newline=True)

    def shards(self, split: str) -> List[Dict[str, Any]]:
        return self.index["shards"][split]

    def add_shard(self, split: str, number: int, tensors: Dict[str, torch.Tensor], examples: int) -> None:
        """Write shard `number` of `split` atomically, then record it."""
        from safetensors.torch import save_file

        from ..store import atomic_path

        name = f"{split}/shard-{number:05d}.safetensors"
        with atomic_path(self.root / name) as tmp:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
        self.shards(split).append({"file": name, "examples": examples, "tokens": int(tensors["input_ids"].numel())})
        self.save()

    @property
    def layers(self) -> List[int]:
        return list(self.index["identity"]["params"]["hidden_layers"])

    @property
    def num_future_tokens(self) -> int:
        return int(self.index["identity"]["params"]["distill_num_future_tokens"])

    def num_examples(self, split: str) -> int:
        return sum(shard["examples"] for shard in self.shards(split))


def hidden_key(layer: int) -> str:
    return "hidden" if layer == -1 else f"hidden.{layer}"


class FeatureDataset(torch.utils.data.Dataset):
    """One split of a feature cache as a map-style dataset of per-example dicts: ``input_ids``, ``labels``
    (lists), ``hidden_states`` ((T, H) tensor, the last hidden state), ``hidden_states.<layer>`` for further
    layers and, with `distilled` (training split only), ``distill_targets`` ((T, N)). Shards are memory-mapped,
    not loaded."""

    def __init__(self, cache: FeatureCache, split: str, distilled: bool = False):
        if distilled and (split != "train" or not cache.num_future_tokens):
            raise ValueError(f"{cache.root}: no distilled continuations in its '{split}' split")
        self.cache = cache
        self.split = split
        self.distilled = distilled
        self.layers = [layer for layer in cache.layers if layer != -1]  # further layers read with each example
        self._locations: List[tuple] = []  # (shard number, index within shard)
        for number, shard in enumerate(cache.shards(split)):
            self._locations.extend((number, i) for i in range(shard["examples"]))
        self._handles: Dict[int, Any] = {}
        self._offsets: Dict[int, List[int]] = {}

    def __len__(self) -> int:
        return len(self._locations)

    def _shard(self, number: int):
        if number not in self._handles:
            from safetensors import safe_open

            handle = safe_open(str(self.cache.root / self.cache.shards(self.split)[number]["file"]), "pt")
            self._handles[number] = handle
            self._offsets[number] = handle.get_tensor("offsets").tolist()
        return self._handles[number], self._offsets[number]

    def __getitem__(self, item: Union[int, str]):
        if isinstance(item, str):  # a whole column, as a datasets.Dataset gives it (ids only)
            if item not in ("input_ids", "labels"):
                raise KeyError(f"column '{item}': only input_ids and labels are available as columns")
            return [self._ids(i, item) for i in range(len(self))]
        number, index = self._locations[item]
        handle, offsets = self._shard(number)
        start, end = offsets[index], offsets[index + 1]
        example: Dict[str, Any] = {
            "input_ids": self._ids(item, "input_ids"),
            "labels": self._ids(item, "labels"),
            "hidden_states": handle.get_slice("hidden")[start:end],
        }
        for layer in self.layers:
            example[f"hidden_states.{layer}"] = handle.get_slice(hidden_key(layer))[start:end]
        if self.distilled:
            example["distill_targets"] = handle.get_slice("distill_targets")[start:end]
        return example

    def read_layers(self, layers: List[int]) -> None:
        """Read only these of the further layers (the rest stay on disk): a drafter of the last hidden state trains
        from a cache built for EAGLE-3 without loading and collating the three layers it fuses."""
        unknown = [layer for layer in layers if layer not in self.cache.layers]
        if unknown:
            raise ValueError(f"{self.cache.root} stores no base layers {unknown} (it has {self.cache.layers})")
        self.layers = [layer for layer in layers if layer != -1]

    def _ids(self, item: int, name: str) -> List[int]:
        number, index = self._locations[item]
        handle, offsets = self._shard(number)
        return handle.get_slice(name)[offsets[index] : offsets[index + 1]].tolist()

    def __getstate__(self):  # dataloader workers open their own handles
        state = dict(self.__dict__)
        state["_handles"], state["_offsets"] = {}, {}
        return state
