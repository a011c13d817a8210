"""Append-only JSONL shard files: one row per finished item, flushed as it is written, so a killed writer
loses at most the row it was writing, and a resumed writer continues after the last complete row."""

from __future__ import annotations

import json
import logging
import lzma
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

logger = logging.getLogger(__name__)

SHARD_GLOB = "shard-*-of-*.jsonl"


def shard_file_name(num_shards: int, shard_index: int) -> str:
    return f"shard-{shard_index:05d}-of-{num_shards:05d}.jsonl"


def shard_files(folder: Union[str, os.PathLike]) -> List[Path]:
    """The shard files of a folder, in shard order."""
    return sorted(Path(folder).glob(SHARD_GLOB))


def read_jsonl_rows(path: Union[str, os.PathLike], repair: bool = False) -> List[Dict[str, Any]]:
    """Complete rows of a JSONL file that may end in a partially written line (a killed writer).

    Lines are split on ``\\n`` only (answers may hold U+2028 and other line separators). With `repair`, the file
    is truncated just after its last complete row, so appending continues cleanly. A ``.xz`` file (a data set
    kept compressed) is read through lzma; it is never appended to, so it cannot be repaired.
    """
    path = Path(path)
    if not path.is_file():
        return []
    compressed = path.suffix == ".xz"
    if compressed and repair:
        raise ValueError(f"{path}: a compressed file cannot be repaired in place")
    with (lzma.open if compressed else open)(path, "rb") as f:
        data = f.read()
    rows: List[Dict[str, Any]] = []
    good_end = 0
    position = 0
    while position < len(data):
        newline = data.find(b"\n", position)
        if newline < 0:
            break  # no newline: the last line was cut while being written
        line = data[position:newline]
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                logger.warning("%s: unreadable line at byte %d; it and what follows are dropped", path, position)
                break
        position = newline + 1
        good_end = position
    if good_end < len(data):
        if repair:
            logger.warning("%s: cutting %d bytes of a partially written row", path, len(data) - good_end)
            with open(path, "r+b") as f:
                f.truncate(good_end)
        else:
            logger.debug("%s: ignoring %d trailing bytes (a row being written?)", path, len(data) - good_end)
    return rows


class ShardAppender:
    """Appends rows to one shard file, each flushed at once; fsync on close.

    Args:
        path: the shard file (a partially written last row of an earlier, killed writer is cut first).
        on_row: called with every row right after it is written (tests use it to simulate a kill).
    """

    def __init__(self, path: Union[str, os.PathLike], on_row: Optional[Callable[[Dict[str, Any]], None]] = None):
        self.path = Path(path)
        read_jsonl_rows(self.path, repair=True)
        self.on_row = on_row
        self._file = open(self.path, "a", encoding="utf-8")

    def write(self, row: Dict[str, Any]) -> None:
        self._file.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._file.flush()
        if self.on_row is not None:
            self.on_row(row)

    def close(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()

    def __enter__(self) -> "ShardAppender":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
