"""Parsing: chunks through ``criteo.py``'s rules, the bad-line policy, kept rows and their split."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow as tf

from input_pipeline import criteo
from input_pipeline.convert.ahead import map_ahead
from input_pipeline.convert.block_parse import BlockParser
from input_pipeline.convert.progress import Progress
from input_pipeline.convert.reading import EXAMPLE_CHARS, MAX_LINE_BYTES, ReadPosition, iter_chunks
from input_pipeline.convert.settings import TRAIN, BadInputError, Settings
from input_pipeline.convert.sources import Source
from input_pipeline.convert.split_plan import SplitPlan

MAX_BAD_LINE_EXAMPLES = 20
PARSE_THREADS = 2


def parsed_chunks(
    path: str,
    preprocessor: criteo.RawPreprocessor,
    raw_values: bool,
    position: ReadPosition,
    long_lines: dict[int, bytes] | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Yields each chunk of the file parsed: see ``RawPreprocessor.parse_lines``,
    plus ``bad_text`` (the rejected lines).

    Clean chunks are parsed by ``BlockParser`` (C++ kernel or NumPy); a chunk with any bad line
    goes through the TensorFlow rules, which explain each bad line.
    """
    parser = BlockParser(preprocessor, raw_values)

    def parse(chunk: bytes) -> dict[str, np.ndarray]:
        parsed = parser.parse(chunk)
        if parsed is None:
            parsed = _parse_with_tensorflow(preprocessor, chunk, raw_values)
        return parsed

    # NumPy and TensorFlow release the GIL: the next chunks parse on other
    # threads while the caller consumes this one; results keep file order.
    yield from map_ahead(parse, iter_chunks(path, position, long_lines), PARSE_THREADS)


def _parse_with_tensorflow(
    preprocessor: criteo.RawPreprocessor, chunk: bytes, raw_values: bool
) -> dict[str, np.ndarray]:
    lines = tf.strings.split(tf.constant(chunk), "\n")
    parsed = preprocessor.parse_lines(lines, raw_values=raw_values)
    return {key: value.numpy() for key, value in parsed.items()}


class BadLines:
    """Applies the ``bad_lines`` policy and keeps the count."""

    def __init__(self, policy: str) -> None:
        if policy not in ("error", "skip"):
            raise ValueError(f"bad_lines must be 'error' or 'skip', got {policy!r}")
        self.policy = policy
        self.skipped = 0
        self.examples: list[dict[str, Any]] = []
        self._long_lines: dict[str, dict[int, bytes]] = {}

    def long_lines_in(self, path: str) -> dict[int, bytes] | None:
        """Where the reader records the too-long lines of ``path`` it skips (skip mode)."""
        return self._long_lines.setdefault(path, {}) if self.policy == "skip" else None

    def handle(self, path: str, first_line: int, parsed: dict[str, np.ndarray]) -> None:
        """``first_line``: 1-based number of the chunk's first line in its file."""
        long_lines = self._long_lines.get(path, {})
        for k, index in enumerate(parsed["bad_index"].tolist()):
            line = first_line + index
            if line in long_lines:
                text = long_lines.pop(line).decode("utf-8", "replace")
                reason = f"line longer than {MAX_LINE_BYTES} bytes"
            else:
                text = parsed["bad_text"][k].decode("utf-8", "replace")
                reason = criteo.explain_bad_line(
                    int(parsed["bad_num_fields"][k]), parsed["bad_field_ok"][k].tolist(), text
                )
            if self.policy == "error":
                raise BadInputError(f"{path}:{line}: {reason}")
            self.skipped += 1
            if len(self.examples) < MAX_BAD_LINE_EXAMPLES:
                self.examples.append(
                    {"file": path, "line": line, "reason": reason, "text": text[:EXAMPLE_CHARS]}
                )


def iterate_rows(
    sources: list[Source],
    preprocessor: criteo.RawPreprocessor,
    plan: SplitPlan,
    settings: Settings,
    bad_lines: BadLines,
    progress: Progress,
    raw_values: bool,
) -> Iterator[tuple[int, np.ndarray, np.ndarray, dict[str, np.ndarray]]]:
    """Yields ``(source_index, day, split, parsed)`` per chunk: the kept rows only
    (bad lines and sub-sampled negatives removed), in file order."""
    global_base = 0
    for source_index, source in enumerate(sources):
        line_base = 0
        chunks = parsed_chunks(
            source.path,
            preprocessor,
            raw_values,
            progress.position,
            bad_lines.long_lines_in(source.path),
        )
        for chunk_index, parsed in enumerate(chunks):
            n = len(parsed["ok"])
            if len(parsed["bad_index"]):
                bad_lines.handle(source.path, line_base + 1, parsed)
            global_index = np.arange(global_base + line_base, global_base + line_base + n)
            day, split = plan.assign(source_index, global_index)
            keep = parsed["ok"]
            if settings.data_sub_sample_rate > 0:
                draw = np.random.default_rng([settings.seed, 1, source_index, chunk_index]).random(
                    n
                )
                negative = parsed["label"] == 0
                keep = keep & ~(
                    (split == TRAIN) & negative & (draw < settings.data_sub_sample_rate)
                )
            line_base += n
            progress.update(n)
            if not keep.all():
                parsed = {k: parsed[k][keep] for k in ("label", "dense", "ids")}
                day, split = day[keep], split[keep]
            yield source_index, day, split, parsed
        if line_base == 0:
            raise BadInputError(f"{source.path}: empty file (no lines)")
        if source.lines is not None and source.lines != line_base:
            raise BadInputError(
                f"{source.path}: read {line_base} lines but counted {source.lines}; "
                "did the file change during conversion?"
            )
        source.lines = line_base
        progress.file_done(source.size)
        if settings.data_set == "kaggle":
            global_base += line_base
