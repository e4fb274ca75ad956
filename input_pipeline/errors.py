"""One-line error reports for every command-line entry point.

``error: <what, which file/line/flag, what to do>`` on stderr and exit status 2;
the traceback only on request (``--verbose`` on the command line, or
``TF_CPP_MIN_LOG_LEVEL=0`` in the environment). Standard library only, so the
converter, the exporter, the trainer and the bench scripts can all use it.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence

EXIT_BAD_INPUT = 2
# Library messages name a setting as `field` (its name in the typed configs and the
# functions' arguments); a command line shows it as --flag, through its own table.
FIELD = re.compile(r"`([a-z][a-z0-9_]*)`")
_TF_NOISE = re.compile(r"\[\[\{\{node [^}]*\}\}\]\]|\[Op:[^\]]*\]|\{\{function_node [^}]*\}\}")


def verbose_requested(argv: Sequence[str] | None = None) -> bool:
    """True when the user asked for tracebacks."""
    argv = sys.argv if argv is None else argv
    flag = any(a in ("--verbose", "--verbose=true", "--verbose=True", "--verbose=1") for a in argv)
    return flag or os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0"


class ArgumentParser(argparse.ArgumentParser):
    """``argparse`` with ``--verbose`` and one-line usage errors (exit status 2)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.add_argument("--verbose", action="store_true", help="print tracebacks on errors")

    def error(self, message: str):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def _without_tf_stack(message: str) -> str:
    """A TensorFlow op error's message without the Python stack where the op was
    defined (``Detected at node ... defined at``, then indented ``File`` lines)."""
    kept = [
        part
        for part in message.split("\n\n")
        if part.strip()
        and not part.startswith(("Graph execution error:", "Detected at node"))
        and not all(line[:1].isspace() for line in part.splitlines() if line)
    ]
    message = "\n".join(kept) if kept else message
    # tf.data wraps it in "Error in user-defined function ... transformation ...:".
    start = message.find("assertion failed:")
    return message[start:] if start > 0 else message


def with_flag_names(message: str, flag_names: Mapping[str, str] | None = None) -> str:
    """``message`` with each `field` written as the command line's ``--flag``.

    ``flag_names`` maps a field to its flag where the two names differ.
    """
    names = flag_names or {}
    return FIELD.sub(lambda match: "--" + names.get(match[1], match[1]), message)


def one_line(error: BaseException, flag_names: Mapping[str, str] | None = None) -> str:
    """The error's message on one line, with a hint for the kinds a user can fix;
    config fields are named by their flags (``with_flag_names``)."""
    message = with_flag_names(getattr(error, "message", None) or str(error), flag_names)
    if isinstance(error, KeyError):
        message = f"missing entry {message}"
    message = " ".join(_TF_NOISE.sub("", _without_tf_stack(message)).split())
    if len(message) > 600:
        message = message[:600] + " ..."
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return f"{message}: the disk is full; free space or write elsewhere (nothing was replaced)"
    if isinstance(error, OSError) and error.errno in (errno.EACCES, errno.EPERM):
        return f"{message}: permission denied; choose a path you may write"
    if isinstance(error, (ValueError, OSError, RuntimeError, LookupError, MemoryError)):
        return message
    return f"{message} ({type(error).__name__}; rerun with --verbose for the traceback)"


def report(
    error: BaseException,
    argv: Sequence[str] | None = None,
    flag_names: Mapping[str, str] | None = None,
) -> int:
    """Prints ``error: ...`` (and the traceback if requested); returns exit status 2."""
    if verbose_requested(argv):
        traceback.print_exception(error, file=sys.stderr)
    print(f"error: {one_line(error, flag_names)}", file=sys.stderr)
    return EXIT_BAD_INPUT


def parse_absl_flags(argv: Sequence[str]) -> list[str]:
    """``absl.app.run``'s ``flags_parser``: a bad or missing flag becomes one
    ``error:`` line and exit status 2 (instead of absl's usage dump, status 1)."""
    from absl import flags

    try:
        return flags.FLAGS(list(argv))
    except flags.Error as error:
        print(f"error: {error} (see {os.path.basename(argv[0])} --help)", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def run_cli(entry: Callable[[], object], flag_names: Mapping[str, str] | None = None) -> None:
    """Runs a command's ``main`` and exits: its int result is the status (0
    otherwise); any failure is one ``error:`` line and status 2."""
    try:
        result = entry()
    except Exception as error:  # noqa: BLE001  (every failure: one line, exit 2)
        sys.exit(report(error, flag_names=flag_names))
    sys.exit(result if isinstance(result, int) else 0)
