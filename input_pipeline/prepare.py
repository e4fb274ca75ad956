"""Converted data for a training run: convert the raw Criteo file once, then reuse it.

The reference trains from the raw file in one command: it converts when no
processed data exists yet, else it reads what is there. ``ensure_converted`` does
the same with ``input_pipeline.convert`` (its progress lines, its lock, its refusal
to replace what is not a dataset of its own), and when the directory already holds
a converted dataset it checks that the dataset's ``metadata.json`` matches the
settings asked for (data set, raw files, id cap, shuffle, sub-sampling), so a
changed setting is an error instead of silently training on other data.

``generate_and_convert`` writes Criteo-shaped text with a planted signal and
converts it the same way (the project's own end-to-end data).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Iterator
from typing import Any

from absl import logging

from input_pipeline import metadata as metadata_file

DATA_SETS = ("kaggle", "terabyte")
RANDOMIZE = ("total", "day", "none")


@dataclasses.dataclass(frozen=True)
class ConversionConfig:
    """How a run's converted data is made, or what it must have been made with.

    A field that is ``None`` was not asked for and is not checked against an
    existing dataset; with ``raw_data_file`` every field is set (it is what a
    conversion would use).

    Attributes:
      processed_data_dir: the converted dataset's directory.
      raw_data_file: raw Criteo text (file, directory or glob); "" = none given.
      data_set: ``kaggle`` or ``terabyte`` (the split rule).
      max_ind_range: hash ids modulo this; 0 = contiguous vocabulary ids.
      data_randomize: ``total``, ``day`` or ``none`` (training rows' order).
      data_sub_sample_rate: fraction of negative training rows dropped.
      seed: seed of the sub-sampling and the shuffle.
      generate_rows: > 0: generate this many planted-signal rows instead of raw text.
    """

    processed_data_dir: str
    raw_data_file: str = ""
    data_set: str | None = None
    max_ind_range: int | None = None
    data_randomize: str | None = None
    data_sub_sample_rate: float | None = None
    seed: int = 123
    generate_rows: int = 0

    def __post_init__(self) -> None:
        if self.data_set is not None and self.data_set not in DATA_SETS:
            raise ValueError(f"`data_set`={self.data_set!r}: one of {DATA_SETS}")
        if self.data_randomize is not None and self.data_randomize not in RANDOMIZE:
            raise ValueError(f"`data_randomize`={self.data_randomize!r}: one of {RANDOMIZE}")
        rate = self.data_sub_sample_rate
        if rate is not None and not 0.0 <= rate < 1.0:
            raise ValueError(
                f"`data_sub_sample_rate`={rate}: must be in [0, 1) (the fraction of "
                "negative training rows to drop)"
            )
        if self.raw_data_file and self.generate_rows > 0:
            raise ValueError(
                "`raw_data_file` and `generate_rows` both name the data to convert: "
                "give one of them"
            )


def _has_dataset(directory: str) -> bool:
    return os.path.isfile(os.path.join(directory, metadata_file.FILE_NAME))


def ensure_converted(config: ConversionConfig) -> dict[str, Any] | None:
    """Converts ``raw_data_file`` unless the directory holds a dataset; checks it if so.

    Returns:
      The new dataset's metadata when it converted, else None.

    Raises:
      ValueError: the existing dataset was made with other settings (naming them),
        or any error of ``input_pipeline.convert.convert``.
    """
    directory = config.processed_data_dir
    if _has_dataset(directory):
        check_metadata(config, metadata_file.read(directory))
        return None
    if not config.raw_data_file:
        return None  # the reader then says there is no data, and how to make it
    from input_pipeline import convert

    print(f"Converting {config.raw_data_file} into {directory} (no converted data there yet)")
    started = time.time()
    try:
        with _progress_logged():
            metadata = convert.convert(
                config.data_set,
                config.raw_data_file,
                directory,
                max_ind_range=config.max_ind_range,
                data_randomize=config.data_randomize,
                data_sub_sample_rate=config.data_sub_sample_rate,
                seed=config.seed,
            )
    except FileExistsError:
        if not _has_dataset(directory):
            raise  # something else is there, not a dataset: the converter's error says so
        # Another run converted it while this one waited for the lock: reuse it.
        check_metadata(config, metadata_file.read(directory))
        return None
    print(f"Converted in {time.time() - started:.1f} s: {metadata['rows']} rows")
    return metadata


def check_metadata(config: ConversionConfig, metadata: dict[str, Any]) -> None:
    """Raises ValueError naming the first setting the dataset was not made with."""
    pre = metadata.get("preprocessing", {})
    made = {
        "data_set": metadata.get("data_set"),
        "max_ind_range": pre.get("max_ind_range"),
        "data_randomize": pre.get("data_randomize"),
        "data_sub_sample_rate": pre.get("data_sub_sample_rate"),
    }
    for field, made_with in made.items():
        wanted = getattr(config, field)
        if wanted is not None and wanted != made_with:
            _mismatch(config, f"converted with `{field}`={made_with}", f"`{field}`={wanted}")
    if config.raw_data_file:
        from input_pipeline.convert import resolve_sources

        sources = resolve_sources(config.data_set, config.raw_data_file)
        wanted = [(s.path, s.size) for s in sources]
        made_from = [(s.get("path"), s.get("bytes")) for s in metadata.get("sources", [])]
        if wanted != made_from:
            described = ", ".join(f"{p} ({b} bytes)" for p, b in made_from) or "nothing"
            asked = f"from `raw_data_file`={config.raw_data_file}"
            _mismatch(config, f"converted from {described}", asked)


def _mismatch(config: ConversionConfig, made_with: str, wanted: str) -> None:
    raise ValueError(
        f"`processed_data_dir`={config.processed_data_dir} holds data {made_with}, "
        f"not {wanted}: remove that directory to convert again, or choose "
        "another `processed_data_dir`"
    )


@contextlib.contextmanager
def _progress_logged() -> Iterator[None]:
    """Shows the converter's progress lines (absl INFO) while converting."""
    previous = logging.get_verbosity()
    logging.set_verbosity(min(previous, logging.INFO))
    try:
        yield
    finally:
        logging.set_verbosity(previous)


def generate_and_convert(config: ConversionConfig) -> None:
    """Generates ``generate_rows`` Criteo-shaped rows with a planted signal and converts
    them into the directory, unless it already holds converted data.

    Prints the AUC of the planted (Bayes-optimal) model on the test split: the
    ceiling training can approach.
    """
    data_dir = config.processed_data_dir
    if _has_dataset(data_dir):
        print(f"Using the converted data already in {data_dir}")
        return
    from input_pipeline import convert
    from input_pipeline import planted_signal as synthetic

    rows = config.generate_rows
    raw = os.path.join(os.path.dirname(os.path.abspath(data_dir)), "generated_train.txt")
    os.makedirs(os.path.dirname(raw), exist_ok=True)
    started = time.time()
    written = synthetic.write_text(raw, num_rows=rows, seed=config.seed)
    print(f"Generated {rows:,} Criteo-shaped rows with a planted signal: {raw}")
    metadata = convert.convert(
        "kaggle", raw, data_dir, max_ind_range=config.max_ind_range or 0, block_rows=1024
    )
    # The test split is the first half of the last of 7 "days", in file order.
    days = convert.kaggle_day_sizes(rows)
    start = sum(days[:6])
    test = slice(start, start + days[6] // 2)
    ceiling = synthetic.oracle_auc(written.probabilities[test], written.labels[test])
    print(
        f"Converted them to TFRecords in {data_dir} ({time.time() - started:.1f} s): "
        f"{metadata['rows']}; the planted model's test AUC (the ceiling) is {ceiling:.4f}"
    )


def prepare(config: ConversionConfig) -> None:
    """Makes or checks the run's converted data, as ``config`` asks."""
    if config.generate_rows > 0:
        generate_and_convert(config)
    else:
        ensure_converted(config)
