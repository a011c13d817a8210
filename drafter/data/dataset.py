"""Tokenised train/eval datasets for drafter training, cached on disk, and the batch collator."""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import datasets
import numpy as np
import torch

from ..engine.loading import tokenizer_fingerprint
from ..store import cache_root, discard_dir, fingerprint, save_dataset_atomically
from .builtin import CONVERTER_VERSION
from .chat import IGNORE_INDEX, tokenize_example
from .sources import load_conversations, source_fingerprint

logger = logging.getLogger(__name__)

# Bump when tokenisation output changes, so stale caches are not reused.
TOKENIZED_FORMAT_VERSION = 1

_TOKENIZED_FEATURES = datasets.Features(
    {
        "input_ids": datasets.Sequence(datasets.Value("int32")),
        "labels": datasets.Sequence(datasets.Value("int32")),
        "num_labels": datasets.Value("int32"),
    }
)


def tokenized_cache_key(tokenizer: Any, dataset_name: str, params: Mapping[str, Any]) -> str:
    """Hash of everything that determines the tokenised dataset."""
    payload = {
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "dataset": source_fingerprint(dataset_name),
        "params": dict(params),
        "versions": [TOKENIZED_FORMAT_VERSION, CONVERTER_VERSION],
    }
    return fingerprint(payload, length=20)


def _num_eval(eval_examples: Union[int, float], total: int) -> int:
    """Held-out count: an int is a count, a float in (0, 1) a fraction; always leaves >= 1 training row."""
    if isinstance(eval_examples, float) and not eval_examples.is_integer():
        if not 0.0 < eval_examples < 1.0:
            raise ValueError(f"a fractional eval_examples must be in (0, 1), got {eval_examples}")
        wanted = int(round(eval_examples * total))
    else:
        wanted = int(eval_examples)
        if wanted < 0:
            raise ValueError(f"eval_examples must be >= 0, got {eval_examples}")
    return max(0, min(wanted, total - 1))


def split_train_eval(dataset: datasets.Dataset, eval_examples: Union[int, float], seed: int) -> datasets.DatasetDict:
    """Deterministic held-out split (seeded permutation), done on raw rows before tokenisation."""
    n_eval = _num_eval(eval_examples, len(dataset))
    order = np.random.default_rng(seed).permutation(len(dataset))
    eval_indices = np.sort(order[:n_eval])
    train_indices = np.sort(order[n_eval:])
    return datasets.DatasetDict(
        {"train": dataset.select(train_indices.tolist()), "eval": dataset.select(eval_indices.tolist())}
    )


def _tokenize_batch(
    batch: Dict[str, List[Any]], tokenizer: Any, max_length: int, assistant_only: bool
) -> Dict[str, List[Any]]:
    """datasets.map function: tokenise each row; rows that fail to render get empty outputs (dropped later)."""
    size = len(next(iter(batch.values())))
    out: Dict[str, List[Any]] = {"input_ids": [], "labels": [], "num_labels": []}
    for i in range(size):
        example = {key: values[i] for key, values in batch.items()}
        try:
            tokens = tokenize_example(tokenizer, example, max_length, assistant_only)
        except Exception as error:  # e.g. a template that rejects this role order: skip the row, not the run
            logger.debug("skipping example %s: %s", example.get("id"), error)
            tokens = {"input_ids": [], "labels": []}
        out["input_ids"].append(tokens["input_ids"])
        out["labels"].append(tokens["labels"])
        # Position 0 is never a target after the causal shift, so it does not count as trainable.
        out["num_labels"].append(sum(1 for label in tokens["labels"][1:] if label != IGNORE_INDEX))
    return out


def _tokenize_split(
    split: datasets.Dataset,
    name: str,
    tokenizer: Any,
    max_length: int,
    assistant_only: bool,
    num_proc: int,
    work_dir: Path,
) -> datasets.Dataset:
    """Tokenise one split and drop rows with no trainable label (the count is logged)."""
    if len(split) == 0:
        return datasets.Dataset.from_dict({"input_ids": [], "labels": []}, features=_without_num_labels())
    # Explicit cache files in our work dir: keeps datasets' own cache out of the source cache directory.
    tokenized = split.map(
        _tokenize_batch,
        batched=True,
        batch_size=64,
        remove_columns=split.column_names,
        features=_TOKENIZED_FEATURES,
        fn_kwargs={"tokenizer": tokenizer, "max_length": max_length, "assistant_only": assistant_only},
        num_proc=num_proc if num_proc and num_proc > 1 else None,
        load_from_cache_file=False,
        cache_file_name=str(work_dir / f"{name}-tokenized.arrow"),
        desc=f"Tokenizing {name}",
    )
    kept = tokenized.filter(
        lambda counts: [count > 0 for count in counts],
        input_columns=["num_labels"],
        batched=True,
        load_from_cache_file=False,
        cache_file_name=str(work_dir / f"{name}-filtered.arrow"),
        desc=f"Dropping {name} rows without labels",
    )
    dropped = len(tokenized) - len(kept)
    if dropped:
        logger.warning("%s: dropped %d of %d examples with no trainable label", name, dropped, len(tokenized))
    return kept.remove_columns("num_labels")


def _without_num_labels() -> datasets.Features:
    return datasets.Features({k: v for k, v in _TOKENIZED_FEATURES.items() if k != "num_labels"})


def build_tokenized_datasets(
    tokenizer: Any,
    dataset_name: str,
    model_max_length: int = 512,
    train_on_assistant_only: bool = True,
    max_examples: Optional[int] = None,
    eval_examples: Union[int, float] = 64,
    seed: int = 0,
    cache_dir: Optional[Union[str, os.PathLike]] = None,
    num_proc: int = 1,
) -> datasets.DatasetDict:
    """Load, split and tokenise a source into ``{"train", "eval"}`` with ``input_ids`` and ``labels`` columns.

    Args:
        tokenizer: the base model's tokenizer (its chat template renders chats).
        dataset_name: any name :func:`drafter.data.load_conversations` accepts.
        model_max_length: sequences are truncated to this many tokens.
        train_on_assistant_only: label only assistant replies (else every token of the chat).
        max_examples: seeded subset of the source taken before the split (train + eval together).
        eval_examples: held-out rows, a count or a fraction in (0, 1); split off before tokenisation.
        seed: seed of the subset and of the split.
        cache_dir: where tokenised datasets are cached (default ``<DRAFTER_CACHE or ~/.cache/drafter>/tokenized``).
            The key hashes the tokenizer, the source (with local file size/mtime) and all parameters above, so
            a re-run with the same inputs skips loading and tokenisation.
        num_proc: worker processes for tokenisation.

    Rows without any trainable label (after truncation) are dropped and counted in a warning.
    """
    params = {
        "model_max_length": int(model_max_length),
        "train_on_assistant_only": bool(train_on_assistant_only),
        "max_examples": max_examples,
        "eval_examples": eval_examples,
        "seed": int(seed),
    }
    key = tokenized_cache_key(tokenizer, dataset_name, params)
    root = Path(cache_dir).expanduser() if cache_dir is not None else cache_root() / "tokenized"
    source_label = Path(str(dataset_name)).stem.replace(os.sep, "_") or "dataset"
    cache_path = root / f"{source_label}-{key}"
    if (cache_path / "dataset_dict.json").exists():
        try:
            cached = datasets.load_from_disk(str(cache_path))
            logger.info("Loaded tokenized '%s' from cache %s", dataset_name, cache_path)
            return cached
        except Exception as error:  # a damaged cache is rebuilt rather than fatal
            logger.warning("Rebuilding unreadable cache %s (%s)", cache_path, error)
            discard_dir(cache_path)

    raw = load_conversations(dataset_name, max_examples=max_examples, seed=seed)
    splits = split_train_eval(raw, eval_examples, seed)
    root.mkdir(parents=True, exist_ok=True)
    work_dir = root / f".work-{key}-{uuid.uuid4().hex[:8]}"
    work_dir.mkdir()
    try:
        tokenized = datasets.DatasetDict(
            {
                name: _tokenize_split(
                    split, name, tokenizer, model_max_length, train_on_assistant_only, num_proc, work_dir
                )
                for name, split in splits.items()
            }
        )
        if len(tokenized["train"]) == 0:
            raise _no_labels_error(dataset_name, splits["train"], model_max_length, train_on_assistant_only)
        info = {"dataset_name": str(dataset_name), "params": params, "key": key}
        save_dataset_atomically(tokenized, cache_path, info=info)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    logger.info(
        "Tokenized '%s': %d train / %d eval examples, cached at %s",
        dataset_name,
        len(tokenized["train"]),
        len(tokenized["eval"]),
        cache_path,
    )
    # Re-open the saved copy so the result is memory-mapped from the cache, not from the deleted work files.
    return datasets.load_from_disk(str(cache_path))


def _no_labels_error(dataset_name: str, rows: datasets.Dataset, max_length: int, assistant_only: bool) -> ValueError:
    """Why no training row kept a label: no assistant replies at all, or truncation cut every one."""
    replies = any(m["role"] == "assistant" for row in rows if "messages" in row for m in row["messages"])
    reason = ""
    if assistant_only and replies:
        reason = (f" (every assistant reply starts after token {max_length}: raise --model_max_length or shorten "
                  "the prompts)")
    elif assistant_only:
        reason = " (with train_on_assistant_only, rows need an assistant reply)"
    return ValueError(f"No training example of '{dataset_name}' has a trainable label{reason}")


@dataclass
class DataCollatorForDrafter:
    """Right-pads a list of features into a batch of tensors.

    ``input_ids`` are padded with `pad_token_id`, ``attention_mask`` with 0 (built as ones when absent) and
    ``labels`` with `label_pad_token_id` (-100), all to the longest sequence in the batch (optionally rounded
    up to `pad_to_multiple_of`). Returns int64 tensors of shape ``(batch, length)``; a ``distill_targets``
    column (per token a list of N continuation ids, see `drafter.teacher.distill`) becomes ``(batch, length, N)``
    padded with -100; cached hidden states (``hidden_states*``, (length, H) per example, see `drafter.features`)
    become ``(batch, length, H)`` padded with zeros.
    """

    pad_token_id: int
    label_pad_token_id: int = IGNORE_INDEX
    pad_to_multiple_of: Optional[int] = None

    def __post_init__(self) -> None:
        if self.pad_token_id is None:
            raise ValueError("DataCollatorForDrafter needs a pad_token_id (e.g. tokenizer.pad_token_id or eos id)")

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> Dict[str, torch.Tensor]:
        if not features:
            raise ValueError("cannot collate an empty batch")
        sequences = [_as_list(f["input_ids"]) for f in features]
        length = max(len(s) for s in sequences)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = len(features)
        input_ids = torch.full((batch, length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((batch, length), dtype=torch.long)
        has_labels = "labels" in features[0]
        labels = torch.full((batch, length), self.label_pad_token_id, dtype=torch.long)
        for row, (feature, ids) in enumerate(zip(features, sequences)):
            n = len(ids)
            input_ids[row, :n] = torch.tensor(ids, dtype=torch.long)
            mask = feature.get("attention_mask")
            attention_mask[row, :n] = torch.tensor(_as_list(mask), dtype=torch.long) if mask is not None else 1
            if has_labels:
                labels[row, :n] = torch.tensor(_as_list(feature["labels"]), dtype=torch.long)
        out = {"input_ids": input_ids, "attention_mask": attention_mask}
        if has_labels:
            out["labels"] = labels
        for key in [k for k in features[0] if k.startswith("hidden_states")]:  # from a feature cache
            states = [torch.as_tensor(f[key]) for f in features]
            padded = states[0].new_zeros((batch, length, states[0].shape[-1]))
            for row, state in enumerate(states):
                padded[row, : state.shape[0]] = state
            out[key] = padded
        if "distill_targets" in features[0]:
            rows = [torch.as_tensor(f["distill_targets"], dtype=torch.long) for f in features]
            distill = torch.full((batch, length, rows[0].shape[-1]), self.label_pad_token_id, dtype=torch.long)
            for row, targets in enumerate(rows):
                distill[row, : targets.shape[0]] = targets
            out["distill_targets"] = distill
        return out


def _as_list(values: Any) -> List[int]:
    if isinstance(values, torch.Tensor):
        return values.tolist()
    return list(values)
