"""The one hashing scheme behind every cache key and folder identity, and the stale-cache check.

A fingerprint is the SHA-256 of the payload's canonical JSON (sorted keys, non-JSON values through `str`),
cut to `length` hex digits. Every cache key of the toolkit (tokenized data, teacher folders, distilled
targets, converted sources, sweep benchmarks) is one, so a key changes exactly when its inputs do.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Iterable, Mapping, Optional, Union


class StaleCacheError(ValueError):
    """A cache or output folder was made from other inputs than the ones requested now."""


def fingerprint(payload: Any, length: Optional[int] = 16) -> str:
    """Hex SHA-256 of `payload` as canonical JSON; the first `length` digits (None: all 64)."""
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
    return digest if length is None else digest[:length]


def fingerprint_rows(rows: Iterable[Any]) -> str:
    """Hex SHA-256 of a sequence of JSON values, streamed: one compact JSON line per item, in order."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def fingerprint_bytes(chunks: Iterable[bytes], length: Optional[int] = 16) -> str:
    """Hex SHA-256 of a stream of byte strings (e.g. tensors' raw data)."""
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    hexdigest = digest.hexdigest()
    return hexdigest if length is None else hexdigest[:length]


def fingerprint_file(path: Union[str, os.PathLike], length: Optional[int] = 16) -> str:
    """Hex SHA-256 of a file's bytes (read in 4 MiB blocks)."""
    with open(path, "rb") as f:
        return fingerprint_bytes(iter(lambda: f.read(1 << 22), b""), length)


def check_identity(
    stored: Mapping[str, Any],
    requested: Mapping[str, Any],
    what: str,
    advice: str,
    error: type = StaleCacheError,
) -> None:
    """Raise `error` naming every differing key when `stored` (read back from JSON) differs from `requested`.

    `requested` is normalised the way JSON stores it (tuples become lists, other values strings) first.
    """
    new = json.loads(json.dumps(requested, default=str))
    if dict(stored) == new:
        return
    differences = [
        f"{key}: folder has {stored.get(key)!r}, requested {new.get(key)!r}"
        for key in sorted(set(stored) | set(new))
        if stored.get(key) != new.get(key)
    ]
    raise error(f"{what} ({'; '.join(differences)}). {advice}")
