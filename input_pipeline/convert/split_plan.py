"""The reference's split rule: which day and split (train, test, validation) each line goes to."""

from __future__ import annotations

import dataclasses

import numpy as np

from input_pipeline.convert.settings import KAGGLE_DAYS, TEST, TRAIN, VALIDATION
from input_pipeline.convert.sources import Source


def kaggle_day_sizes(total_lines: int, days: int = KAGGLE_DAYS) -> list[int]:
    """Lines per Kaggle "day": equal parts, the first ``total % days`` one longer."""
    base, extra = divmod(total_lines, days)
    return [base + (1 if d < extra else 0) for d in range(days)]


@dataclasses.dataclass
class SplitPlan:
    """Where each line goes: (day, split) as a function of its global line index."""

    data_set: str
    day_starts: np.ndarray  # global index of each day's first line (Kaggle)
    eval_start: int  # global index of the first test line (Kaggle)
    test_end: int  # global index of the first validation line

    num_sources: int

    def assign(self, source_index: int, global_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Day and split of lines given their global indices (Kaggle: across all
        files; Terabyte: within their file)."""
        evaluation = np.where(global_index < self.test_end, TEST, VALIDATION)
        if self.data_set == "kaggle":
            day = np.searchsorted(self.day_starts, global_index, side="right") - 1
            return day, np.where(global_index < self.eval_start, TRAIN, evaluation)
        day = np.full(global_index.shape, source_index)
        if source_index < self.num_sources - 1:
            return day, np.full(global_index.shape, TRAIN)
        return day, evaluation


def plan_splits(data_set: str, sources: list[Source]) -> SplitPlan:
    if data_set == "kaggle":
        total = sum(s.lines or 0 for s in sources)
        sizes = kaggle_day_sizes(total)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        eval_start = int(starts[-1])
        eval_lines = sizes[-1]
    else:
        # Global indices restart per file for Terabyte: only the last file is split.
        starts = np.zeros(len(sources), np.int64)
        eval_start = 0
        eval_lines = sources[-1].lines or 0
    test_end = eval_start + (eval_lines + 1) // 2
    return SplitPlan(data_set, starts, eval_start, test_end, len(sources))
