"""Merging a teacher folder's shard files into ``data.jsonl``: prompt order, one row per prompt."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Sequence, Set, Union

from ..store import read_jsonl_rows, shard_files, write_json, write_jsonl
from .config import DATA_FILE, METADATA_FILE, SKIPPED_REASON

logger = logging.getLogger(__name__)


def rows_by_id(output_dir: Path) -> Dict[str, Dict[str, Any]]:
    """Every row of the folder's shard files by id (the first, should a row ever be there twice)."""
    rows: Dict[str, Dict[str, Any]] = {}
    for shard in shard_files(output_dir):
        for row in read_jsonl_rows(shard):
            rows.setdefault(row["id"], row)
    return rows


def done_ids(output_dir: Path) -> Set[str]:
    """Ids of the prompts that some shard file of the folder already holds."""
    return set(rows_by_id(output_dir))


def last_turn_rows(rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Per conversation (rows' `index`), its row of the highest turn that has an answer, in conversation order."""
    best: Dict[int, Dict[str, Any]] = {}
    for row in rows:
        if row.get("finish_reason") == SKIPPED_REASON:
            continue
        kept = best.get(row["index"])
        if kept is None or row.get("turn", 1) > kept.get("turn", 1):
            best[row["index"]] = row
    return [best[index] for index in sorted(best)]


def merge_teacher_shards(output_dir: Union[str, os.PathLike], allow_partial: bool = False) -> Path:
    """Merge the shard files of a teacher folder into ``data.jsonl`` (prompt order, one row per prompt; with all
    turns, one row per conversation: its last answered turn).

    Refuses (ValueError) while prompts are missing unless `allow_partial`. Rows of prompts that were too long
    are left out. Written atomically; returns the path of data.jsonl.
    """
    from filelock import FileLock

    output_dir = Path(output_dir)
    metadata_path = output_dir / METADATA_FILE
    if not metadata_path.is_file():
        raise FileNotFoundError(f"{output_dir} is not a teacher-data folder (no {METADATA_FILE})")
    with FileLock(str(output_dir / ".merge.lock")):
        metadata = json.loads(metadata_path.read_text(encoding="utf-8"))
        expected = int(metadata["identity"]["prompts"]["count"])
        by_id: Dict[str, Dict[str, Any]] = {}
        duplicates = 0
        for shard in shard_files(output_dir):
            for row in read_jsonl_rows(shard):
                if row["id"] in by_id:
                    duplicates += 1
                    continue
                by_id[row["id"]] = row
        if duplicates:
            logger.warning("%s: %d duplicate rows ignored while merging", output_dir, duplicates)
        if len(by_id) < expected and not allow_partial:
            raise ValueError(
                f"{output_dir}: {expected - len(by_id)} of {expected} prompts are not generated yet; run the "
                "missing shards (they resume), or merge with allow_partial / --allow_partial."
            )
        rows = sorted(by_id.values(), key=lambda row: (row["index"], row.get("turn", 1)))
        if metadata["identity"].get("turns") == "all":  # one row per conversation: its last answered turn
            kept = last_turn_rows(rows)
        else:
            kept = [row for row in rows if row.get("finish_reason") != SKIPPED_REASON]
        data_path = output_dir / DATA_FILE
        write_jsonl(data_path, kept)
        finish_reasons: Dict[str, int] = {}
        for row in rows:
            finish_reasons[row["finish_reason"]] = finish_reasons.get(row["finish_reason"], 0) + 1
        metadata["merged"] = {
            "num_examples": len(kept),
            "num_prompts_done": len(rows),
            "complete": len(rows) >= expected,
            "num_generated_tokens": sum(int(row.get("num_tokens", 0)) for row in rows),
            "finish_reasons": finish_reasons,
            "num_truncated_prompts": sum(1 for row in rows if row.get("prompt_truncated")),
        }
        write_json(metadata_path, metadata, sort_keys=True, trailing_newline=True)
    logger.info("Merged %d teacher examples into %s", len(kept), data_path)
    return data_path
