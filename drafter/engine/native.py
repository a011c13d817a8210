"""The toolkit's native CPU kernel (`csrc/rows_linear.cpp`), compiled on first use and cached.

It is built with torch's own extension builder (`torch.utils.cpp_extension.load`) under torch's extensions folder
(``$TORCH_EXTENSIONS_DIR``, else ``~/.cache/torch_extensions``), in a folder of its own per torch installation
(a second virtual environment does not rebuild over the first's), once per machine: under a minute with g++.
Where it cannot be built (no C++ compiler, a CPU without AVX2, not x86-64) or ``DRAFTER_NATIVE_KERNELS=0`` is
set, `rows_linear_op()` returns None after one log line saying why, and the callers keep torch's kernels.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import shutil
import sys
from pathlib import Path
from typing import Callable, Optional

import torch

from ..store import fingerprint, fingerprint_bytes

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("csrc") / "rows_linear.cpp"
SWITCH_ENV = "DRAFTER_NATIVE_KERNELS"
# AVX2 + FMA, not -march=native: the cached build must also run on another AVX2 machine sharing the home folder.
COMPILE_FLAGS = ["-O3", "-mavx2", "-mfma", "-fopenmp"]


@functools.lru_cache(maxsize=None)
def native_source_fingerprint() -> str:
    """Fingerprint of the kernel's source: a changed kernel re-measures what was timed with the old one."""
    return fingerprint_bytes([SOURCE.read_bytes()])


def unavailable_reason() -> Optional[str]:
    """Why the native kernel cannot run here, or None when it can."""
    if os.environ.get(SWITCH_ENV, "").strip().lower() in ("0", "false", "no", "off"):
        return f"{SWITCH_ENV}=0"
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"not an x86-64 CPU ({platform.machine()})"
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        return f"the CPU lacks AVX2 (torch reports {torch.backends.cpu.get_cpu_capability()})"
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        return "no C++ compiler on PATH (install g++)"
    return None


@functools.lru_cache(maxsize=None)
def rows_linear_op() -> Optional[Callable[..., torch.Tensor]]:
    """`torch.ops.drafter.rows_linear(x (M, K), weight (N, K), bias (N,) or None) -> (M, N)`, float32 CPU,
    batch-invariant (see the source); None where it is unavailable (logged once, with the reason)."""
    reason = unavailable_reason()
    if reason is not None:
        logger.info("Native few-row CPU kernel off (%s); torch's kernels are used", reason)
        return None
    from torch.utils import cpp_extension

    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions")
    build_dir = root / f"drafter_rows_linear-{fingerprint([torch.__version__, torch.__file__, sys.version], 12)}"
    logger.info("Loading the native few-row CPU kernel from %s (its first build takes under a minute)", build_dir)
    try:
        build_dir.mkdir(parents=True, exist_ok=True)
        cpp_extension.load(name="drafter_rows_linear", sources=[str(SOURCE)], extra_cflags=COMPILE_FLAGS,
                           extra_ldflags=["-fopenmp"], build_directory=str(build_dir), is_python_module=False,
                           verbose=False)
    except Exception as error:  # a failed build is a slower run, not a failed one
        logger.warning("Native few-row CPU kernel could not be built (%s); torch's kernels are used",
                       " ".join(str(error).split())[:300])
        return None
    return torch.ops.drafter.rows_linear
