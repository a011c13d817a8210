"""Child processes of a sweep: output echoed and logged, and never outliving the sweep."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Optional


def run_logged(command: list[str], log: Path, env: Optional[dict[str, str]] = None, echo: bool = True) -> None:
    """Run `command`, echoing its output (when `echo`) and appending it to `log`; raise with the log's tail on
    failure."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as sink:
        sink.write(f"\n$ {' '.join(command)}\n")
        sink.flush()
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
            preexec_fn=_die_with_parent,
        )
        assert process.stdout is not None
        try:
            for chunk in iter(lambda: process.stdout.read1(4096), b""):
                text = chunk.decode(errors="replace")
                sink.write(text)
                sink.flush()
                if echo:
                    sys.stdout.write(text)
                    sys.stdout.flush()
            code = process.wait()
        finally:  # Ctrl-C / an error here: never leave a trainer running that a resumed sweep would race
            if process.poll() is None:
                process.terminate()
                process.wait()
    if code != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-20:])
        raise RuntimeError(f"`{' '.join(command)}` failed with exit code {code}; log {log}:\n{tail}")


def _die_with_parent() -> None:
    """In the child, before exec: on Linux, get SIGTERM when the sweep process dies (even by SIGKILL)."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
