"""The one cache root of the toolkit."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """Where converted models, tokenized data, teacher data and distilled targets live: ``$DRAFTER_CACHE``,
    else ``~/.cache/drafter``."""
    return Path(os.environ.get("DRAFTER_CACHE") or Path.home() / ".cache" / "drafter").expanduser()
