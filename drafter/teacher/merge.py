"""Merging a teacher folder's shard files into ``data.jsonl`` (prompt order, one row per prompt), and the reverse:
seeding a new folder's shard files from a merged one, so generation extends a kept data set."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Sequence, Set, Union

from ..store import read_jsonl_rows, shard_file_name, shard_files, write_json, write_jsonl
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


# The answers of a merged folder: data.jsonl, or data.jsonl.xz where the set is kept compressed (benchmarks/teacher/).
MERGED_DATA_FILES = (DATA_FILE, DATA_FILE + ".xz")


def continue_from_merged(source_dir: Union[str, os.PathLike], output_dir: Union[str, os.PathLike],
                         num_shards: int) -> int:
    """Seed an empty teacher folder with the answers of a merged one, as the shard files they belong to (prompt
    index mod `num_shards`), so generating into `output_dir` continues the source's set instead of starting over.

    The source's metadata.json comes along: generating with other settings than the source's is refused as for
    any resumed folder. Returns the number of answers copied; 0 when `output_dir` already has shard files or
    metadata (seeded before, or a run of its own: generation resumes from what it holds). Refuses an all-turns
    source, whose data.jsonl keeps only each conversation's last answered turn.
    """
    from filelock import FileLock

    source_dir, output_dir = Path(source_dir), Path(output_dir)
    data_path = next((source_dir / name for name in MERGED_DATA_FILES if (source_dir / name).is_file()), None)
    if data_path is None or not (source_dir / METADATA_FILE).is_file():
        raise FileNotFoundError(f"{source_dir} is not a merged teacher-data folder (it needs {METADATA_FILE} and "
                                f"{' or '.join(MERGED_DATA_FILES)})")
    metadata = json.loads((source_dir / METADATA_FILE).read_text(encoding="utf-8"))
    if metadata["identity"].get("turns") == "all":
        raise ValueError(f"{source_dir} answers all turns; its {DATA_FILE} keeps only each conversation's last "
                         "turn, so it cannot seed a folder: continue that run from its own shard files")
    output_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(output_dir / ".continue.lock")):  # the shards of one run start together
        if shard_files(output_dir) or (output_dir / METADATA_FILE).exists():
            return 0
        rows = read_jsonl_rows(data_path)
        by_shard: Dict[int, List[Dict[str, Any]]] = {}
        for row in rows:
            by_shard.setdefault(row["index"] % num_shards, []).append(row)
        for shard, shard_rows in sorted(by_shard.items()):
            write_jsonl(output_dir / shard_file_name(num_shards, shard), shard_rows)
        metadata.pop("merged", None)  # recomputed when this folder is merged
        write_json(output_dir / METADATA_FILE, metadata, sort_keys=True, trailing_newline=True)
    logger.info("%s: seeded with the %d answers of %s", output_dir, len(rows), source_dir)
    return len(rows)
