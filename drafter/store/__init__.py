"""The lowest layer: where files live and how they are written. No torch, no models.

* `paths`: the one cache root (``$DRAFTER_CACHE``, else ``~/.cache/drafter``);
* `atomic`: atomic file, JSON and dataset writes (a killed writer leaves the old file, never half a new one);
* `fingerprint`: the one hashing scheme for cache keys and folder identities, and the "stale cache" check;
* `shards`: append-only JSONL shard files that survive kills, read back exactly once and merged.
"""

from .atomic import atomic_dir, atomic_path, discard_dir, save_dataset_atomically, write_json, write_jsonl
from .fingerprint import (
    StaleCacheError,
    check_identity,
    fingerprint,
    fingerprint_bytes,
    fingerprint_file,
    fingerprint_rows,
)
from .paths import cache_root
from .shards import ShardAppender, read_jsonl_rows, shard_file_name, shard_files

__all__ = [
    "ShardAppender",
    "StaleCacheError",
    "atomic_dir",
    "atomic_path",
    "cache_root",
    "check_identity",
    "discard_dir",
    "fingerprint",
    "fingerprint_bytes",
    "fingerprint_file",
    "fingerprint_rows",
    "read_jsonl_rows",
    "save_dataset_atomically",
    "shard_file_name",
    "shard_files",
    "write_json",
    "write_jsonl",
]
