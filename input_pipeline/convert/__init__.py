"""Raw Criteo text -> TFRecord shards (block layout) + ``metadata.json``.

Usage::

  python -m input_pipeline.convert --data_set=kaggle --raw_data_file=train.txt \\
      --output_dir=data/kaggle [--max_ind_range=N] [--frequency_threshold=T] \\
      [--categorical=vocabulary|hash] \\
      [--data_randomize=total|day|none] [--data_sub_sample_rate=R] [--num_shards=N] \\
      [--bad_lines=error|skip] [--compression=none|gzip] [--overwrite]

The package holds the converter's jobs, one module each:

- ``sources``: which raw files, in which order; ``reading``: chunks of whole lines;
  ``progress``: rows/s and ETA; ``parsing``: chunks parsed by ``criteo.py``'s
  rules, the bad-line policy, and each kept row's day and split;
- ``split_plan``: the reference's split rule; ``vocabulary``: value counts and
  vocabulary files; ``row_cache``: parsed rows kept between passes; ``id_lookup``:
  values -> table ids; ``records``: the block record's encoding; ``shards``: shard
  writing; ``spill``: the bounded-memory shuffle; ``ahead``: the ordered thread map;
- ``output_dir``: what a dataset consists of, refusing what is not ours,
  publishing; ``job``: the passes and ``convert``; ``cli``: the command line.
  ``input_pipeline.metadata`` defines ``metadata.json``.

Splits (the reference's): Kaggle's lines are cut, in file order, into 7 "days"
(the first ``total % 7`` get one extra line); days 0-5 train, day 6's first half
(``ceil(n / 2)`` lines) is ``test`` and its second half ``validation``. Terabyte:
every day file but the last trains; the last (``day_23``) is halved the same way.
Bad lines keep their place in this count, so skipping one never moves a boundary.

Categorical mode (``--categorical``): ``vocabulary`` (the default) builds one
vocabulary per feature from the training rows, so each table has the rows the data
needs. ``--max_ind_range=N`` first reduces every value ``% N`` (the reference's
``getCriteoAdData``: a table then has at most N value ids);
``--frequency_threshold=T`` gives values seen fewer than T times the
out-of-vocabulary id (default T = 1: every value seen gets its own contiguous id).
``hash`` (needs ``--max_ind_range=N``) is one pass without vocabularies,
``id = value % N``: every table has exactly N rows, for data whose vocabularies
cannot be counted first. ``criteo.py`` defines the ids.

``--data_sub_sample_rate=R`` drops that fraction of negative training rows
(seeded; test and validation are untouched). ``--data_randomize``: ``total``
shuffles training rows across days, ``day`` within each day, ``none`` keeps file
order; test and validation keep file order. Shuffling is a uniform random
permutation made in bounded memory: rows go to randomly chosen spill buckets on
disk (next to the output), each bucket is then loaded, permuted and written out
(a bucket that came out too large is split again the same way).

Passes: Kaggle first counts lines (byte scan). Hash mode then converts in one
pass. Vocabulary mode parses the text once: the counting pass counts value
frequencies over the training rows and keeps every parsed row on disk (fixed-size
binary records next to the output, ~160 bytes a row; training rows go into their shuffle
buckets), and the writing pass looks those values up in the vocabularies and
writes the shards, without reading the text again. Parsing runs on worker threads
over 4 MiB chunks of lines (a C++ kernel for clean chunks, or NumPy where it
cannot be built; else the TensorFlow ops of ``criteo.py``, the same ops as the
serving signature).

Memory is bounded independently of the input size: a few 4 MiB text chunks and
their parsed arrays in flight, one pending block per split, up to 64 MiB of spill
buffers, and one shuffle bucket (<= 500k rows, ~80 MB, twice while permuting).
Measured peak RSS: ~1.1 GB for 1M and for 4M rows, of which ~0.6 GB is the
TensorFlow runtime. Vocabulary mode also holds the value counts: ~16 bytes per
distinct value, up to 3x while merging (``--max_ind_range`` caps them).

Output: ``{split}-{i:05d}-of-{n:05d}.tfrecord[.gz]`` shards; record ``k`` of a split
(a block of up to ``block_rows`` rows) goes to shard ``k % n``, so reading the
shards round-robin restores the row order. Each record is a ``tf.train.Example``
with ``num_rows`` (int64), ``label`` (bytes: uint8 per row), ``dense`` (bytes:
little-endian float32 ``[rows, 13]``) and ``ids`` (bytes: little-endian ``id_dtype``
``[rows, 26]``). Everything is written into a temporary directory next to
``output_dir`` and renamed into place once complete, so a failed or interrupted run
never leaves a complete-looking dataset; an existing non-empty ``output_dir`` is
refused unless ``overwrite`` (then replaced only after the new one is complete,
and only if it is a dataset of this converter: its ``metadata.json`` and exactly the
files it lists). One converter at a time writes an output (a lock file next to it);
a run removes the temporary directories interrupted runs left for the same output.
"""

import importlib

# Where each public name lives. Resolved on first use, so that running the
# command (``python -m input_pipeline.convert``) can quiet TensorFlow's start-up
# lines before anything imports TensorFlow.
_PUBLIC = {
    "convert": "job",
    "dataset_files": "output_dir",
    "BadLines": "parsing",
    "MAX_LINE_BYTES": "reading",
    "chunk_lines": "reading",
    "count_source_lines": "reading",
    "iter_chunks": "reading",
    "serialize_block": "records",
    "BadInputError": "settings",
    "Source": "sources",
    "resolve_sources": "sources",
    "kaggle_day_sizes": "split_plan",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
