"""Atomic writes: everything is written to a temporary sibling and renamed into place."""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional, Union

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
CACHE_INFO_FILE = "drafter_cache_info.json"


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of `path` to write; on success it replaces `path` in one rename.

    On an error the temporary file is removed and `path` keeps its old content.
    """
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: PathLike, data: Any, sort_keys: bool = False, trailing_newline: bool = False) -> None:
    """`data` as indented JSON (non-JSON values through `str`), atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=sort_keys, default=str)
        if trailing_newline:
            f.write("\n")


def write_jsonl(path: PathLike, rows: Iterable[Mapping[str, Any]]) -> None:
    """One JSON object per line (UTF-8, not ASCII-escaped), atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


@contextmanager
def atomic_dir(path: PathLike) -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; on success it becomes `path` in one rename.

    An existing `path` is never replaced: when another process finished the same work first, theirs is kept and
    ours dropped, so a process already reading theirs never sees it vanish (several ranks of one training run
    build the same cache at once). A damaged `path` must be removed first (`discard_dir`). On an error the
    temporary folder is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_name(f"{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp_path
        try:
            os.replace(tmp_path, path)  # fails on a non-empty folder: rename(2) never merges or overwrites one
        except OSError:
            if not path.exists():
                raise
            logger.debug("Another process wrote %s first; using theirs", path)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


def discard_dir(path: PathLike) -> None:
    """Remove a folder (a damaged cache) so `atomic_dir` can write it anew: renamed aside in one step, then
    deleted, so `path` is never seen half-deleted. Nothing happens when it is gone already."""
    path = Path(path)
    aside = path.with_name(f"{path.name}.discarded-{uuid.uuid4().hex[:8]}")
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return
    shutil.rmtree(aside, ignore_errors=True)


def save_dataset_atomically(dataset: Any, path: PathLike, info: Optional[Mapping[str, Any]] = None) -> None:
    """`datasets` `save_to_disk`, atomically (see `atomic_dir`): readers never see a half-written cache. `info`,
    when given, is written beside it as ``drafter_cache_info.json`` in the same rename."""
    with atomic_dir(path) as tmp_path:
        dataset.save_to_disk(str(tmp_path))
        if info is not None:
            write_json(tmp_path / CACHE_INFO_FILE, info)
