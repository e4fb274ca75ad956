"""The output directory: what a dataset consists of, refusing what is not ours, publishing."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile

from absl import logging

from input_pipeline import safe_files
from input_pipeline.convert.settings import BadInputError
from input_pipeline.convert.sources import Source


def dataset_files(data_dir: str) -> list[str]:
    """The files a converted dataset consists of (relative), from its metadata.

    Raises:
      ValueError: ``data_dir`` holds no readable ``metadata.json`` of this converter,
        or it lists a path outside ``data_dir``.
    """
    path = os.path.join(data_dir, "metadata.json")
    if not os.path.isfile(path):
        raise ValueError("no metadata.json")
    try:
        with open(path, encoding="utf-8") as f:
            metadata = json.load(f)
        shards = [s["file"] for split in metadata["shards"].values() for s in split]
        listed = ["metadata.json", *shards, *(metadata.get("vocabulary_files") or [])]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"a metadata.json this converter did not write ({error})") from None
    for relative in listed:
        safe_files.confined(data_dir, relative, f"{path}: file")
    return [os.path.normpath(p) for p in listed]


def check_output(output_dir: str, sources: list[Source], overwrite: bool) -> None:
    """Refuses an output that would destroy the input or something not ours."""
    for source in sources:
        if safe_files.contains(output_dir, source.path):
            raise BadInputError(
                f"`output_dir`={output_dir} contains the raw input {source.path}; the output "
                "directory is replaced as a whole: choose an `output_dir` outside the input"
            )
    if not os.path.lexists(output_dir):
        return
    if os.path.islink(output_dir) or not os.path.isdir(output_dir):
        raise safe_files.NotOursError(
            f"`output_dir`={output_dir} exists and is not a directory; refusing to replace "
            "it (with or without `overwrite`): remove it yourself or choose another `output_dir`"
        )
    if not os.listdir(output_dir):
        return
    try:
        foreign = safe_files.unexpected_entries(output_dir, dataset_files(output_dir))
        reason = f"it also holds {safe_files.describe(foreign)}" if foreign else ""
    except ValueError as error:
        held = safe_files.describe(sorted(os.listdir(output_dir)))
        reason = f"it holds {held} and {error}"
    if reason:
        raise safe_files.NotOursError(
            f"`output_dir`={output_dir} is not a dataset written by this converter ({reason}); "
            "refusing to replace it (with or without `overwrite`): choose another `output_dir`"
        )
    if not overwrite:
        raise FileExistsError(
            f"Output directory {output_dir} already holds a converted dataset; "
            "pass overwrite=True (`overwrite`) to replace it"
        )


def remove_dataset(path: str) -> None:
    """Deletes a converted dataset's listed files and then its empty directories;
    anything else in it stays (and is reported)."""
    try:
        listed = dataset_files(path)
    except ValueError:
        listed = []
    for relative in listed:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(path, relative))
    shutil.rmtree(os.path.join(path, "_spill"), ignore_errors=True)
    for root, _, _ in sorted(os.walk(path), key=lambda entry: -len(entry[0])):
        with contextlib.suppress(OSError):
            os.rmdir(root)
    if os.path.exists(path):
        logging.warning("kept %s: it holds files this converter did not write", path)
    elif listed:
        logging.info("removed the replaced dataset %s", path)


def replace_directory(source: str, target: str) -> None:
    """Publishes the finished ``source`` as ``target`` (fsynced first); an existing
    dataset there (checked to be ours) is moved aside and its files removed."""
    old = None
    if os.path.isdir(target) and os.listdir(target):
        old = tempfile.mkdtemp(
            prefix=f".{os.path.basename(target)}.old-", dir=os.path.dirname(target)
        )
        os.rmdir(old)
        os.rename(target, old)
    try:
        safe_files.publish(source, target)
    except BaseException:
        if old is not None:
            os.rename(old, target)
        raise
    if old is not None:
        remove_dataset(old)


# ---------------------------------------------------------------------------
