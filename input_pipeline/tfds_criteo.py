"""TensorFlow Datasets builder ``criteo_kaggle`` (manual download).

One ``tf.train.Example`` per row: ``label`` (int64), ``dense_features`` (float32
[13]) and ``sparse_features`` (int64 [26]), preprocessed by ``criteo.py``'s rules
with hashing (``id = int(hex, 16) % max_ind_range``), split like the reference
(7 "days" in file order; days 0-5 ``train``, day 6 halved into ``test`` and
``validation``). Convenient for exploring with the TFDS API; for training prefer
``input_pipeline.convert`` (block layout, many times faster to read).

Usage::

  builder = tfds.builder("criteo_kaggle/hashed_10m", data_dir=...)  # after importing this module
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir="/path/with/train.txt"))
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from etils import epath

from input_pipeline import convert, criteo
from input_pipeline.features import DENSE_KEY, SPARSE_KEY


class CriteoKaggleConfig(tfds.core.BuilderConfig):
    """A categorical hashing setting."""

    def __init__(self, *, max_ind_range: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_ind_range = max_ind_range


class CriteoKaggle(tfds.core.GeneratorBasedBuilder):
    """Criteo Kaggle display-advertising click logs (``train.txt``)."""

    VERSION = tfds.core.Version("1.0.0")
    # TFDS finds a builder's source through importlib_resources, which its own
    # dependencies do not always install; the path is known, so give it directly.
    code_path = epath.Path(__file__)
    RELEASE_NOTES = {"1.0.0": "Reference splits, hashed categorical ids."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Download the Criteo Kaggle display advertising challenge data (dac.tar.gz),
    extract it, and point `manual_dir` at the directory holding `train.txt`
    (or `train.txt.gz`).
    """
    BUILDER_CONFIGS = [
        CriteoKaggleConfig(
            name="hashed_10m",
            max_ind_range=10_000_000,
            description="ids = int(hex, 16) % 10,000,000",
        ),
        CriteoKaggleConfig(
            name="hashed_1m", max_ind_range=1_000_000, description="ids = int(hex, 16) % 1,000,000"
        ),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "label": tfds.features.Scalar(dtype=np.int64),
                    DENSE_KEY: tfds.features.Tensor(shape=(criteo.NUM_DENSE,), dtype=np.float32),
                    SPARSE_KEY: tfds.features.Tensor(shape=(criteo.NUM_SPARSE,), dtype=np.int64),
                }
            ),
            supervised_keys=None,
            homepage="https://ailab.criteo.com/ressources/",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        manual = os.fspath(dl_manager.manual_dir)
        sources = convert.resolve_sources("kaggle", manual)
        total = sum(convert.count_source_lines(s) for s in sources)
        if total == 0:
            raise convert.BadInputError(f"{sources[0].path}: empty file (no lines)")
        sizes = convert.kaggle_day_sizes(total)
        eval_start = total - sizes[-1]
        test_end = eval_start + (sizes[-1] + 1) // 2
        path = sources[0].path
        return {
            "train": self._generate_examples(path, 0, eval_start),
            "test": self._generate_examples(path, eval_start, test_end),
            "validation": self._generate_examples(path, test_end, total),
        }

    def _generate_examples(self, path: str, start: int, stop: int) -> Iterator[tuple[int, dict]]:
        preprocessor = criteo.RawPreprocessor(max_ind_range=self.builder_config.max_ind_range)
        parse = tf.function(lambda chunk: preprocessor.parse_lines(tf.strings.split(chunk, "\n")))
        first = 0  # 0-based index of the chunk's first line
        for chunk in convert.iter_chunks(path):
            lines = convert.chunk_lines(chunk)
            if first + lines > start and first < stop:
                parsed = {k: v.numpy() for k, v in parse(tf.constant(chunk)).items()}
                if len(parsed["bad_index"]):
                    convert.BadLines("error").handle(path, first + 1, parsed)
                for i in range(max(start - first, 0), min(stop - first, lines)):
                    yield (
                        first + i,
                        {
                            "label": int(parsed["label"][i]),
                            DENSE_KEY: parsed["dense"][i],
                            SPARSE_KEY: parsed["ids"][i],
                        },
                    )
            first += lines
            if first >= stop:
                return
