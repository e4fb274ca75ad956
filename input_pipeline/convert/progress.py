"""Progress of a pass over the raw files: rows/s and an ETA in the log every few seconds."""

from __future__ import annotations

import time

from absl import logging

from input_pipeline.convert.reading import ReadPosition

PROGRESS_SECONDS = 5.0


class Progress:
    """Logs rows/s and an ETA every few seconds (absl logging, stderr)."""

    def __init__(self, label: str, total_lines: int | None, total_bytes: int) -> None:
        self.label = label
        self.total_lines = total_lines
        self.total_bytes = max(total_bytes, 1)
        self.lines = 0
        self.bytes_done = 0  # bytes of finished files
        self.position = ReadPosition()
        self.start = time.perf_counter()
        self.last = self.start

    def update(self, lines: int) -> None:
        self.lines += lines
        now = time.perf_counter()
        if now - self.last < PROGRESS_SECONDS:
            return
        self.last = now
        elapsed = now - self.start
        if self.total_lines:
            fraction = self.lines / self.total_lines
        else:
            fraction = (self.bytes_done + self.position.bytes) / self.total_bytes
        fraction = min(max(fraction, 1e-9), 1.0)
        eta = elapsed * (1 - fraction) / fraction
        logging.info(
            "%s: %s lines (%.1f%%), %s rows/s, ETA %s",
            self.label,
            f"{self.lines:,}",
            100 * fraction,
            f"{self.lines / elapsed:,.0f}",
            time.strftime("%H:%M:%S", time.gmtime(eta)),
        )

    def file_done(self, size: int) -> None:
        self.bytes_done += size
        self.position.bytes = 0

    def summary(self) -> str:
        elapsed = time.perf_counter() - self.start
        rate = self.lines / max(elapsed, 1e-9)
        return f"{self.label}: {self.lines:,} lines in {elapsed:.1f} s ({rate:,.0f} rows/s)"
