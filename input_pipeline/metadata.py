"""``metadata.json`` of a converted dataset: its fields, and writing, reading and checking it.

The converter writes it (``for_conversion``, ``write``); the reader, the trainer
and the exporter read it (``read``), which checks the format version, the
feature counts and table sizes, that every recorded path stays inside the
dataset directory, that the shard list, its per-shard row and block counts and
the split's row total agree with the converter's layout (an inflated ``rows`` or
a removed shard entry fails, naming it), and that every listed shard exists with
its recorded size (a truncated shard fails there, naming it).
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any, TypedDict

from input_pipeline import criteo, safe_files

if TYPE_CHECKING:
    from input_pipeline.convert.settings import Settings

FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = (1,)
SPLITS = ("train", "test", "validation")  # a dataset's splits, in this order
FILE_NAME = "metadata.json"


class Metadata(TypedDict, total=False):
    """The fields of ``metadata.json`` (plus ``data_dir``, added when read)."""

    format_version: int
    data_set: str
    num_dense: int
    num_sparse: int
    table_sizes: list[int]
    rows: dict[str, int]
    preprocessing: dict[str, Any]
    vocabulary_files: list[str] | None
    sources: list[dict[str, Any]]
    bad_lines: dict[str, Any]
    block_rows: int
    record_format: dict[str, Any]
    compression: str
    num_shards: int
    shards: dict[str, list[dict[str, Any]]]
    data_dir: str


_SPLIT_RULES = {
    "kaggle": "kaggle: 7 days in file order; days 0-5 train; day 6: first half test, "
    "second half validation",
    "terabyte": "terabyte: every day file but the last trains; the last: first half test, "
    "second half validation",
}


def for_conversion(
    settings: Settings,
    table_sizes: list[int],
    id_dtype: str,
    shards: dict[str, list[dict[str, Any]]],
    vocabulary_files: list[str] | None,
    *,
    sources: list[dict[str, Any]],
    bad_lines: dict[str, Any],
) -> Metadata:
    """The metadata of a finished conversion."""
    vocabulary_ids = (
        f"{criteo.OOV_ID} = out of vocabulary, {criteo.MISSING_ID} = missing, "
        f"{criteo.FIRST_VOCABULARY_ID} + k = value on line k of the vocabulary file"
    )
    return Metadata(
        format_version=FORMAT_VERSION,
        data_set=settings.data_set,
        num_dense=criteo.NUM_DENSE,
        num_sparse=criteo.NUM_SPARSE,
        table_sizes=table_sizes,
        rows={
            split: sum(s["rows"] for s in split_shards) for split, split_shards in shards.items()
        },
        preprocessing={
            "categorical": settings.categorical,
            "max_ind_range": settings.max_ind_range,
            "frequency_threshold": settings.frequency_threshold,
            "dense": "log(max(x, 0) + 1) as float32; empty -> 0",
            "vocabulary_ids": vocabulary_ids if settings.categorical == "vocabulary" else None,
            "data_randomize": settings.data_randomize,
            "data_sub_sample_rate": settings.data_sub_sample_rate,
            "seed": settings.seed,
            "splits": _SPLIT_RULES[settings.data_set],
        },
        vocabulary_files=vocabulary_files,
        sources=sources,
        bad_lines=bad_lines,
        block_rows=settings.block_rows,
        record_format={
            "features": {
                "num_rows": "int64",
                "label": "bytes: uint8 [num_rows]",
                "dense": f"bytes: little-endian float32 [num_rows, {criteo.NUM_DENSE}]",
                "ids": f"bytes: little-endian {id_dtype} [num_rows, {criteo.NUM_SPARSE}]",
            },
            "id_dtype": id_dtype,
            "shard_assignment": "record k of a split is in shard k % num_shards",
        },
        compression=settings.compression,
        num_shards=settings.num_shards,
        shards=shards,
    )


def write(directory: str, metadata: Metadata) -> None:
    """Writes ``directory/metadata.json``."""
    with open(os.path.join(directory, FILE_NAME), "w", encoding="utf-8") as f:
        json.dump(metadata, f, indent=2)
        f.write("\n")


def read(data_dir: str | os.PathLike, check_files: bool = True) -> Metadata:
    """Reads and checks ``data_dir/metadata.json``; adds ``data_dir`` (absolute).

    ``check_files=False`` skips the shard layout and file checks (for readers
    that need only the preprocessing settings and vocabularies).

    Raises:
      FileNotFoundError: no metadata.json, or a listed shard is missing.
      ValueError: unsupported format, inconsistent metadata, or a shard whose size
        differs from the recorded one (truncated or modified).
    """
    data_dir = os.path.abspath(os.fspath(data_dir))
    path = os.path.join(data_dir, FILE_NAME)
    metadata = _load(data_dir, path)
    _check_fields(path, metadata)
    for relative in metadata.get("vocabulary_files") or []:
        safe_files.confined(data_dir, relative, f"{path}: vocabulary file")
    if check_files:
        for split in metadata["shards"]:
            _check_split_layout(path, metadata, split)
            _check_shard_files(data_dir, path, metadata, split)
    metadata["data_dir"] = data_dir
    return metadata


def _load(data_dir: str, path: str) -> Metadata:
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} not found: {data_dir} is not a converted dataset "
            "(make one with python -m input_pipeline.convert)"
        )
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error


def _check_fields(path: str, metadata: Metadata) -> None:
    version = metadata.get("format_version")
    if version not in SUPPORTED_FORMAT_VERSIONS:
        raise ValueError(
            f"{path}: format_version {version!r} is not supported "
            f"(this reader reads {SUPPORTED_FORMAT_VERSIONS})"
        )
    for key in ("num_dense", "num_sparse", "table_sizes", "shards", "record_format"):
        if key not in metadata:
            raise ValueError(f"{path}: missing key {key!r}")
    if (metadata["num_dense"], metadata["num_sparse"]) != (criteo.NUM_DENSE, criteo.NUM_SPARSE):
        raise ValueError(
            f"{path}: expected {criteo.NUM_DENSE} dense and {criteo.NUM_SPARSE} sparse features"
        )
    sizes = metadata["table_sizes"]
    if len(sizes) != criteo.NUM_SPARSE or any(int(s) < 1 for s in sizes):
        raise ValueError(
            f"{path}: table_sizes must be {criteo.NUM_SPARSE} positive ints, got {sizes}"
        )


def _check_shard_files(data_dir: str, path: str, metadata: Metadata, split: str) -> None:
    for shard in metadata["shards"][split]:
        shard_path = safe_files.confined(data_dir, shard["file"], f"{path}: {split} shard")
        if not os.path.isfile(shard_path):
            raise FileNotFoundError(f"{path}: {split} shard {shard_path} is missing")
        actual = os.path.getsize(shard_path)
        if actual != shard["bytes"]:
            raise ValueError(
                f"shard {shard_path} has {actual} bytes but {path} records {shard['bytes']}"
                " (truncated or modified)"
            )


def _check_split_layout(path: str, metadata: Metadata, split: str) -> None:
    """The split's shard list against the converter's layout: ``num_shards``
    entries, block ``k`` of the split in shard ``k % num_shards``, every block
    full but the split's last, and the rows summing to the split's ``rows``."""
    shards = metadata["shards"][split]
    rows = metadata.get("rows", {}).get(split)
    block_rows = int(metadata.get("block_rows", 0))
    count = int(metadata.get("num_shards", len(shards)))
    if len(shards) != count:
        raise ValueError(
            f"{path}: {split} lists {len(shards)} shards, num_shards is {count} "
            "(an entry was removed or added): convert the data again"
        )
    listed = sum(int(s["rows"]) for s in shards)
    if rows is not None and int(rows) != listed:
        raise ValueError(
            f"{path}: rows[{split!r}] = {rows} but its shards record {listed} rows "
            "(metadata modified): convert the data again"
        )
    if block_rows < 1:
        return
    blocks = -(-listed // block_rows)
    for index, shard in enumerate(shards):
        expected_blocks = (blocks - index + count - 1) // count
        expected_rows = expected_blocks * block_rows
        if blocks and (blocks - 1) % count == index:
            expected_rows -= blocks * block_rows - listed
        if (int(shard["blocks"]), int(shard["rows"])) != (expected_blocks, expected_rows):
            raise ValueError(
                f"{path}: shard {shard['file']} records {shard['blocks']} blocks and "
                f"{shard['rows']} rows; the split's layout gives {expected_blocks} and "
                f"{expected_rows} (metadata modified): convert the data again"
            )
