"""Building a feature cache: tokenize a dataset (the training pipeline's own cache), run the frozen base model
once over every example, and store what the drafter trains on.

    python -m drafter.features --dataset_name sharegpt --output_dir DIR [--llm_name_or_path NAME]
        [--model_max_length 512] [--max_examples N] [--num_eval_examples 64] [--seed 0]
        [--hidden_dtype bfloat16] [--hidden_layers -1] [--distill_num_future_tokens 0] [--batch_size 8]

The disk size is printed before the first forward; a killed build resumes at its next shard.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import torch

from ..data import build_tokenized_datasets, tokenized_cache_key
from ..engine.base_lm import BaseLM
from ..engine.dtypes import torch_dtype
from .cache import FEATURES_FORMAT_VERSION, SPLITS, FeatureCache, hidden_key

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeatureSpec:
    """What a feature cache holds (part of its identity).

    Args:
        model_max_length, train_on_assistant_only, max_examples, num_eval_examples, seed: the tokenized dataset,
            exactly as training builds it (`build_tokenized_datasets`).
        hidden_dtype: storage dtype of hidden states (bfloat16 halves the disk of float32; float32 is exact).
        hidden_layers: which hidden states to store; -1 is the last (what ReDrafter / Arctic read).
        distill_num_future_tokens: N > 0 also stores the distilled dataset's greedy N-token continuations of the
            training split (`drafter.teacher.distill`).
        examples_per_shard: examples per shard file (the unit of resume).
    """

    model_max_length: int = 512
    train_on_assistant_only: bool = True
    max_examples: Optional[int] = None
    num_eval_examples: int = 64
    seed: int = 0
    hidden_dtype: str = "bfloat16"
    hidden_layers: Sequence[int] = field(default=(-1,))
    distill_num_future_tokens: int = 0
    examples_per_shard: int = 256

    def __post_init__(self) -> None:
        torch_dtype(self.hidden_dtype)  # a clear error for an unknown name
        if -1 not in self.hidden_layers:
            raise ValueError(f"hidden_layers must include -1 (the last hidden state), got {list(self.hidden_layers)}")
        if self.examples_per_shard < 1 or self.distill_num_future_tokens < 0:
            raise ValueError("examples_per_shard must be >= 1 and distill_num_future_tokens >= 0")

    def tokenized_params(self) -> Dict[str, Any]:
        return dict(model_max_length=self.model_max_length, train_on_assistant_only=self.train_on_assistant_only,
                    max_examples=self.max_examples, eval_examples=self.num_eval_examples, seed=self.seed)


def feature_identity(lm: BaseLM, tokenizer: Any, dataset_name: str, spec: FeatureSpec) -> Dict[str, Any]:
    """Everything that determines the cache's content."""
    params = asdict(spec)
    params["hidden_layers"] = list(spec.hidden_layers)
    params.pop("examples_per_shard")  # how it is cut into files, not what it holds
    return {
        "format_version": FEATURES_FORMAT_VERSION,
        "base_model": lm.fingerprint(),
        "tokenized": tokenized_cache_key(tokenizer, dataset_name, spec.tokenized_params()),
        "params": params,
    }


def estimated_bytes(num_tokens: int, lm: BaseLM, spec: FeatureSpec) -> int:
    per_token = lm.hidden_size * torch.finfo(torch_dtype(spec.hidden_dtype)).bits // 8 * len(spec.hidden_layers)
    return num_tokens * (per_token + 8 + 4 * spec.distill_num_future_tokens)


def build_features(
    model: Any,
    tokenizer: Any,
    dataset_name: str,
    output_dir: str,
    spec: Optional[FeatureSpec] = None,
    batch_size: int = 8,
    progress: bool = True,
) -> FeatureCache:
    """Build (or resume, or just open when complete) the feature cache of `dataset_name` under `output_dir`."""
    spec = spec or FeatureSpec()
    lm = BaseLM(model)
    splits = build_tokenized_datasets(tokenizer, dataset_name, **spec.tokenized_params())
    cache = FeatureCache.create_or_resume(output_dir, feature_identity(lm, tokenizer, dataset_name, spec))
    if cache.index["complete"]:
        logger.info("Feature cache %s is complete", output_dir)
        return cache
    tokens = sum(len(ids) for split in SPLITS for ids in splits[split]["input_ids"])
    size = estimated_bytes(tokens, lm, spec)
    print(f"Feature cache {output_dir}: {tokens:,} tokens of {sum(len(splits[s]) for s in SPLITS):,} examples, "
          f"about {size / 2**30:.2f} GiB on disk ({spec.hidden_dtype}, layers {list(spec.hidden_layers)})")
    from tqdm.auto import tqdm

    for split in SPLITS:
        rows = splits[split]
        shards = math.ceil(len(rows) / spec.examples_per_shard)
        done = len(cache.shards(split))
        bar = tqdm(total=len(rows), initial=min(len(rows), done * spec.examples_per_shard), unit="example",
                   desc=f"Features ({split})", disable=not progress)
        for number in range(done, shards):
            chunk = rows.select(range(number * spec.examples_per_shard,
                                      min(len(rows), (number + 1) * spec.examples_per_shard)))
            first = number * spec.examples_per_shard
            tensors = _shard_tensors(model, lm, chunk["input_ids"], chunk["labels"], spec, batch_size, split, first)
            cache.add_shard(split, number, tensors, len(chunk))
            bar.update(len(chunk))
        bar.close()
    cache.index["complete"] = True
    cache.save()
    return cache


@torch.no_grad()
def _shard_tensors(
    model: Any, lm: BaseLM, input_ids: List[List[int]], labels: List[List[int]], spec: FeatureSpec,
    batch_size: int, split: str, first_index: int,
) -> Dict[str, torch.Tensor]:
    """The tensors of one shard (see `drafter.features.cache`); examples in order, each run unpadded within
    a length-sorted batch of right-padded rows."""
    dtype = torch_dtype(spec.hidden_dtype)
    hidden: Dict[int, List[Optional[torch.Tensor]]] = {layer: [None] * len(input_ids) for layer in spec.hidden_layers}
    order = sorted(range(len(input_ids)), key=lambda i: len(input_ids[i]), reverse=True)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        length = max(len(input_ids[i]) for i in chunk)
        ids = torch.zeros((len(chunk), length), dtype=torch.long)
        mask = torch.zeros((len(chunk), length), dtype=torch.long)
        for row, i in enumerate(chunk):
            ids[row, : len(input_ids[i])] = torch.tensor(input_ids[i])
            mask[row, : len(input_ids[i])] = 1
        states = lm.layer_hidden_states(ids.to(lm.device), mask.to(lm.device), spec.hidden_layers)
        for layer, state in zip(spec.hidden_layers, states):
            for row, i in enumerate(chunk):
                hidden[layer][i] = state[row, : len(input_ids[i])].to("cpu", dtype)
    lengths = [len(ids) for ids in input_ids]
    tensors = {
        "input_ids": torch.tensor([t for ids in input_ids for t in ids], dtype=torch.int32),
        "labels": torch.tensor([t for lab in labels for t in lab], dtype=torch.int32),
        "offsets": torch.tensor([0] + list(_cumsum(lengths)), dtype=torch.int64),
    }
    for layer in spec.hidden_layers:
        tensors[hidden_key(layer)] = torch.cat(hidden[layer])  # type: ignore[arg-type]
    if spec.distill_num_future_tokens and split == "train":  # evaluation measures the true continuation
        tensors["distill_targets"] = _distill_targets(model, input_ids, labels, spec, batch_size, first_index)
    return tensors


def _distill_targets(model, input_ids, labels, spec: FeatureSpec, batch_size: int, first_index: int) -> torch.Tensor:
    """Greedy continuations of the training split (keyed by example index, as training keys them)."""
    from ..teacher.distill import compute_distill_targets

    n = spec.distill_num_future_tokens
    keys = range(first_index, first_index + len(input_ids))
    targets = compute_distill_targets(model, input_ids, labels, num_future_tokens=n, seed=spec.seed,
                                      example_keys=list(keys), batch_size=batch_size)
    return torch.cat([torch.from_numpy(t) for t in targets]).to(torch.int32)


def _cumsum(values: List[int]):
    total = 0
    for value in values:
        total += value
        yield total
