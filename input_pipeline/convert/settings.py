"""The converter's settings, split codes and input error: what every stage of it shares."""

from __future__ import annotations

import dataclasses

DEFAULT_BLOCK_ROWS = 4096
DEFAULT_NUM_SHARDS = 8
KAGGLE_DAYS = 7


TRAIN, TEST, VALIDATION = 0, 1, 2


class BadInputError(ValueError):
    """Malformed raw input; the message names the file (and line when known)."""


@dataclasses.dataclass
class Settings:
    """How one conversion runs (validated by ``convert.job.settings``)."""

    data_set: str
    categorical: str  # "hash" or "vocabulary"
    max_ind_range: int
    frequency_threshold: int
    data_randomize: str
    data_sub_sample_rate: float
    num_shards: int
    compression: str
    block_rows: int
    seed: int
