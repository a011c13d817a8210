"""How the command lines report a user's mistake: ``error: <one line>`` on stderr and exit status 2 (argparse's
convention), no traceback. ``--debug`` (or DRAFTER_DEBUG=1) shows the traceback instead.

Every ValueError (and its kin below) that reaches a command line is a problem with what the user asked for (a
value out of range, a file that is not there or not readable, a cache made from other inputs, a drafter that
does not fit the base model); messages name the problem and the fix.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Iterable, List, Mapping, Optional, Tuple

USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
               NotImplementedError, ImportError, KeyError)


class UsageError(ValueError):
    """Arguments that contradict each other or are missing."""


# (argument, test, rule) of a bounded numeric argument, e.g. ("batch_size", lambda v: v >= 1, ">= 1").
ArgumentRange = Tuple[str, Callable[[Any], bool], str]


def check_ranges(values: Mapping[str, Any], ranges: Iterable[ArgumentRange]) -> None:
    """Refuse, before anything loads, a numeric argument out of its range (ValueError naming it and the rule);
    an argument that is not set (None, or absent from `values`) passes."""
    for name, valid, rule in ranges:
        value = values.get(name)
        if value is not None and not valid(value):
            raise ValueError(f"--{name} {value}: must be {rule}")


def run_main(main: Callable[[List[str]], object], argv: Optional[List[str]] = None) -> int:
    """Run a command line's `main(argv)`; a user error becomes one line on stderr and exit status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("DRAFTER_DEBUG", "").strip().lower() in ("1", "true", "yes")
    if "--debug" in argv:
        argv.remove("--debug")
        debug = True
    try:
        code = main(argv)
    except USER_ERRORS as error:
        if debug:
            raise
        message = " ".join(str(error.args[0] if isinstance(error, KeyError) and error.args else error).split())
        print(f"error: {message or type(error).__name__} (--debug shows the traceback)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return code if isinstance(code, int) else 0
