"""Chunked reading of raw text: whole lines per chunk, gzip, CRLF, too-long lines, I/O errors."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from input_pipeline.convert.settings import BadInputError
from input_pipeline.convert.sources import Source

if TYPE_CHECKING:
    from input_pipeline.convert.progress import Progress

READ_CHUNK_BYTES = 1 << 22
MAX_LINE_BYTES = 1 << 20


EXAMPLE_CHARS = 200  # of a skipped line kept in metadata.json
LONG_LINE_PLACEHOLDER = b"-"  # stands for a skipped too-long line (a bad line: 1 field)


class ReadPosition:
    """Bytes consumed so far in the file being read (for progress)."""

    def __init__(self) -> None:
        self.bytes = 0


def chunk_lines(chunk: bytes) -> int:
    """Lines in a chunk of ``iter_chunks`` (it never ends with the newline)."""
    return chunk.count(b"\n") + 1


def iter_chunks(
    path: str, position: ReadPosition | None = None, long_lines: dict[int, bytes] | None = None
) -> Iterator[bytes]:
    """Yields the file's text in chunks of whole lines, without the final newline.

    ``\\r\\n`` endings become ``\\n``; a last line without newline is kept. Raises
    ``BadInputError`` for a truncated or corrupt gzip stream, an I/O error, or a
    line longer than 1 MiB unless ``long_lines`` is given: then such a line is
    read past, yielded as ``LONG_LINE_PLACEHOLDER`` (it keeps its place in the count) and
    its number -> first bytes recorded in ``long_lines``.
    """
    with open(path, "rb") as raw:
        stream = gzip.GzipFile(fileobj=raw, mode="rb") if path.endswith(".gz") else raw
        rest = b""
        lines_before = 0
        skipping = False  # inside a too-long line
        while True:
            block = _read_block(path, stream, lines_before)
            if position is not None:
                position.bytes = raw.tell()
            if skipping:
                cut = block.find(b"\n")
                if cut < 0 and block:
                    continue
                skipping = False
                lines_before += 1
                yield LONG_LINE_PLACEHOLDER
                block = block[cut + 1 :] if cut >= 0 else b""
                if not block:
                    continue
            if not block:
                if rest:
                    if rest.endswith(b"\r"):
                        rest = rest[:-1]
                    yield _cut_long_lines(path, rest, lines_before + 1, long_lines)
                return
            data = rest + block
            end = data.rfind(b"\n")
            if end < 0:
                if len(data) > MAX_LINE_BYTES:
                    if long_lines is None:
                        raise BadInputError(
                            f"{path}:{lines_before + 1}: line longer than {MAX_LINE_BYTES} bytes"
                            " (`bad_lines`=skip skips such lines)"
                        )
                    long_lines[lines_before + 1] = data[:EXAMPLE_CHARS]
                    rest, skipping = b"", True
                    continue
                rest = data
                continue
            chunk, rest = data[:end], data[end + 1 :]
            chunk = _cut_long_lines(path, chunk, lines_before + 1, long_lines)
            if b"\r" in chunk or chunk.endswith(b"\r"):
                chunk = (chunk + b"\n").replace(b"\r\n", b"\n")[:-1]
            lines_before += chunk_lines(chunk)
            yield chunk


def _cut_long_lines(
    path: str, chunk: bytes, first_line: int, long_lines: dict[int, bytes] | None
) -> bytes:
    """``chunk`` with each line longer than ``MAX_LINE_BYTES`` replaced by
    ``LONG_LINE_PLACEHOLDER`` and recorded (or, without ``long_lines``, an error)."""
    # A line longer than MAX_LINE_BYTES covers a whole aligned window of half that
    # size without a newline: if every window has one, there is none (a few finds).
    half = MAX_LINE_BYTES // 2
    if all(chunk.find(b"\n", k, k + half) >= 0 for k in range(0, len(chunk) - half + 1, half)):
        return chunk
    ends = np.flatnonzero(np.frombuffer(chunk, np.uint8) == ord("\n"))
    starts = np.concatenate([[0], ends + 1])
    stops = np.concatenate([ends, [len(chunk)]])
    long = np.flatnonzero(stops - starts > MAX_LINE_BYTES)
    if not len(long):
        return chunk
    if long_lines is None:
        raise BadInputError(
            f"{path}:{first_line + int(long[0])}: line longer than {MAX_LINE_BYTES} bytes"
            " (`bad_lines`=skip skips such lines)"
        )
    pieces, position = [], 0
    for index in long.tolist():
        start, stop = int(starts[index]), int(stops[index])
        long_lines[first_line + index] = chunk[start : start + EXAMPLE_CHARS]
        pieces += [chunk[position:start], LONG_LINE_PLACEHOLDER]
        position = stop
    pieces.append(chunk[position:])
    return b"".join(pieces)


def _read_block(path: str, stream: Any, lines_before: int) -> bytes:
    """The next block of the (decompressed) file; a failure says what happened."""
    try:
        return stream.read(READ_CHUNK_BYTES)
    except OSError as error:
        if error.errno is None:  # gzip's own errors (BadGzipFile) carry no errno
            raise BadInputError(
                f"{path}: truncated or corrupt gzip stream after line {lines_before} ({error})"
            ) from error
        raise BadInputError(
            f"{path}: I/O error reading after line {lines_before} ({error.strerror}); "
            "check the disk or copy the file elsewhere"
        ) from error
    except (EOFError, zlib.error) as error:
        raise BadInputError(
            f"{path}: truncated or corrupt gzip stream after line {lines_before} ({error})"
        ) from error


def count_source_lines(
    source: Source, progress: Progress | None = None, skip_long_lines: bool = False
) -> int:
    """Counts the lines the chunk reader yields for a file."""
    lines = _count_newlines(source.path, progress)
    if lines is not None:
        return lines
    lines = 0
    position = progress.position if progress is not None else None
    long_lines = {} if skip_long_lines else None
    for chunk in iter_chunks(source.path, position, long_lines):
        count = chunk_lines(chunk)
        lines += count
        if progress is not None:
            progress.update(count)
    return lines


def _count_newlines(path: str, progress: Progress | None) -> int | None:
    """The line count of a file whose lines are all shorter than ``MAX_LINE_BYTES / 2``,
    read into one buffer without copies; None if a line may be longer or the file
    cannot be read (the chunk reader then counts, or says what is wrong).

    Every line then ends at a newline except a non-empty last one, exactly as the
    chunk reader cuts them (a ``\\r`` before a newline ends no line).
    """
    half = MAX_LINE_BYTES // 2
    buffer = bytearray(READ_CHUNK_BYTES)
    newlines = 0
    run = 0  # bytes since the last newline
    try:
        with open(path, "rb") as raw:
            stream = gzip.GzipFile(fileobj=raw, mode="rb") if path.endswith(".gz") else raw
            while size := stream.readinto(buffer):
                first = buffer.find(b"\n", 0, size)
                if first < 0:
                    run += size
                elif run + first >= half or any(
                    # A line of 2 * half bytes or more inside the buffer covers a window.
                    buffer.find(b"\n", k, k + half) < 0
                    for k in range(0, size - half + 1, half)
                ):
                    return _undo(progress, newlines)
                else:
                    count = buffer.count(b"\n", 0, size)
                    newlines += count
                    run = size - 1 - buffer.rfind(b"\n", 0, size)
                    if progress is not None:
                        progress.position.bytes = raw.tell()
                        progress.update(count)
                if run >= half:
                    return _undo(progress, newlines)
    except (OSError, EOFError, zlib.error):
        return _undo(progress, newlines)
    return newlines + (run > 0)


def _undo(progress: Progress | None, lines: int) -> None:
    """Takes back the lines a failed fast count reported."""
    if progress is not None:
        progress.lines -= lines
