"""The raw input files of a conversion: which files, in which order, and why one cannot be read."""

from __future__ import annotations

import dataclasses
import glob
import os
import re
import stat

from input_pipeline.convert.settings import BadInputError


@dataclasses.dataclass
class Source:
    """One raw input file."""

    path: str
    size: int
    lines: int | None = None

    @property
    def gzipped(self) -> bool:
        return self.path.endswith(".gz")


# ---------------------------------------------------------------------------
# Input files and chunked reading.


def _day_number(path: str) -> int:
    match = re.search(r"(\d+)(?:\.[A-Za-z]+)*$", os.path.basename(path))
    return int(match.group(1)) if match else -1


def resolve_sources(data_set: str, raw_data_file: str | os.PathLike) -> list[Source]:
    """The raw files to read, in order.

    ``raw_data_file`` is a file, a directory (Kaggle: its ``train.txt[.gz]``;
    Terabyte: its ``day_N[.gz]`` files) or a glob. Terabyte files are ordered by
    their trailing day number, the last one being the test/validation day.
    """
    pattern = os.fspath(raw_data_file)
    if any(ch in pattern for ch in "*?["):
        paths = sorted(glob.glob(pattern))
        if not paths:
            raise FileNotFoundError(f"No raw data files match {pattern!r}")
    elif os.path.isdir(pattern):
        if data_set == "kaggle":
            paths = [
                os.path.join(pattern, name)
                for name in ("train.txt", "train.txt.gz")
                if os.path.isfile(os.path.join(pattern, name))
            ][:1]
        else:
            paths = [p for p in glob.glob(os.path.join(pattern, "day_*")) if os.path.isfile(p)]
        if not paths:
            raise FileNotFoundError(f"No raw Criteo {data_set} files found in directory {pattern}")
    elif os.path.isfile(pattern):
        paths = [pattern]
    else:
        raise _not_a_regular_file(pattern)
    if data_set == "terabyte":
        paths = sorted(paths, key=lambda p: (_day_number(p), p))
        if len(paths) < 2:
            raise BadInputError(
                f"Terabyte needs at least 2 day files (the last is test/validation), got {paths}"
            )
    return [Source(os.path.abspath(p), os.path.getsize(p)) for p in paths]


def _not_a_regular_file(path: str) -> Exception:
    """Why ``path`` cannot be read as a raw file (what is there, not just "not found")."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.lexists(path):
            return FileNotFoundError(
                f"`raw_data_file`={path}: a symlink to {os.readlink(path)!r}, which does not exist"
            )
        return FileNotFoundError(f"Raw data file not found: {path}")
    except OSError as error:  # ELOOP, EACCES, ...
        return BadInputError(f"`raw_data_file`={path}: cannot be opened: {error.strerror}")
    kind = "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "not a regular file or directory"
    return BadInputError(
        f"`raw_data_file`={path} is {kind}; the converter reads its input more than once: "
        "give a regular file (e.g. copy the stream to a file first)"
    )
