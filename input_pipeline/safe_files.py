"""File safety for every writer of outputs: locks, complete publishing, confined paths.

One writer per output, publish only complete results, remove only leftovers of
our own kind, trust no recorded path.

Used by the converter, the TFDS builder, the SavedModel exporter, the model
saver and the backups. It lives in ``input_pipeline`` and imports nothing but
the standard library because of the import rules: ``input_pipeline`` may not
import ``dlrm_tf``, ``export`` must run without the trainer, and ``dlrm_tf``
already reads ``input_pipeline``; this is the one package all three may import.

Mechanisms:

- ``exclusive(target)``: a lock file ``.<name>.lock`` next to the output, held
  with ``flock`` (released by the kernel when its holder dies, so a lock left by
  a killed process is recognised as stale) and holding the holder's pid, which
  the refusal names. The file is removed when the lock is released.
- ``remove_leftovers``: deletes entries matching our own temporary-name
  patterns; called only while holding the output's lock, so no live writer of
  the same kind can own them.
- ``fsync_tree`` / ``publish``: temporary files and their directories are
  fsynced before the rename that publishes them, and the parent after it.
- ``unexpected_entries``: "is this directory ours": what a directory holds
  beyond the files its own metadata lists.
- ``confined``: a path recorded in metadata, resolved and required to stay
  inside its directory.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import fnmatch
import os
import shutil
import socket
import zipfile
from collections.abc import Callable, Iterable, Iterator

LOCK_SUFFIX = ".lock"


class OutputLockedError(RuntimeError):
    """Another live process is writing the same output."""


class NotOursError(FileExistsError):
    """An existing path that this tool did not write (so it must not replace it)."""


def lock_path(target: str) -> str:
    """The lock file of an output: ``.<name>.lock`` in the output's directory."""
    target = os.path.abspath(target)
    return os.path.join(os.path.dirname(target), f".{os.path.basename(target)}{LOCK_SUFFIX}")


def _read_holder(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 200).decode("utf-8", "replace").strip()
    return text or "unknown (it has not written its pid yet)"


def _acquire(path: str, what: str) -> tuple[int, str]:
    """Locks ``path``; returns the fd and what a previous (dead) holder wrote."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise OutputLockedError(
                f"{what} is being written by another process (pid {holder}, lock file {path}); "
                "wait for it to finish or choose another output"
            ) from None
        # A releasing holder unlinks the file: our lock must be on the file at `path`.
        try:
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            previous = os.read(fd, 200).decode("utf-8", "replace").strip()
            return fd, previous
        os.close(fd)


@contextlib.contextmanager
def exclusive(
    target: str, what: str | None = None, log: Callable[[str], None] | None = None
) -> Iterator[None]:
    """Holds the lock of output ``target`` (a file or directory) for the block.

    Raises:
      OutputLockedError: a live process holds it; the message names its pid.
    """
    path = lock_path(target)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, previous = _acquire(path, what or os.path.abspath(target))
    try:
        if previous and log is not None:
            log(f"{path}: lock left by {previous}, which is no longer running; taking it over")
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()} on {socket.gethostname()}\n".encode())
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


def remove_leftovers(
    directory: str, patterns: Iterable[str], log: Callable[[str], None] | None = None
) -> list[str]:
    """Removes the entries of ``directory`` whose names match ``patterns`` (fnmatch).

    Call it only while holding the lock of the output these leftovers belong to.
    Returns the removed paths (each also reported through ``log``).
    """
    if not os.path.isdir(directory):
        return []
    patterns = list(patterns)
    removed = []
    for name in sorted(os.listdir(directory)):
        if name.endswith(LOCK_SUFFIX) or not any(fnmatch.fnmatchcase(name, p) for p in patterns):
            continue
        path = os.path.join(directory, name)
        size = _tree_bytes(path)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        removed.append(path)
        if log is not None:
            log(f"removed {path} ({size:,} bytes), left over by an interrupted earlier run")
    return removed


def _tree_bytes(path: str) -> int:
    if not os.path.isdir(path) or os.path.islink(path):
        return os.lstat(path).st_size
    return sum(
        os.lstat(os.path.join(root, name)).st_size
        for root, _, files in os.walk(path)
        for name in files
    )


def fsync_path(path: str) -> None:
    """Flushes a file or a directory (its entries) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.EBADF):  # file systems without fsync
            raise
    finally:
        os.close(fd)


def fsync_tree(path: str) -> None:
    """fsyncs every file and directory under ``path`` (``path`` itself included)."""
    if not os.path.isdir(path):
        fsync_path(path)
        return
    for root, _, files in os.walk(path, topdown=False):
        for name in files:
            fsync_path(os.path.join(root, name))
        fsync_path(root)


def publish(tmp: str, target: str) -> None:
    """Renames the complete ``tmp`` over ``target`` (a file, or a directory when
    ``target`` does not exist), fsyncing ``tmp`` before and the parent after."""
    fsync_tree(tmp)
    os.replace(tmp, target)
    fsync_path(os.path.dirname(os.path.abspath(target)))


def private_to_umask(path: str) -> None:
    """Gives a ``mkdtemp``/``mkstemp`` result (0700/0600) the permissions any new
    output gets under the user's umask."""
    mode = 0o777 if os.path.isdir(path) else 0o666
    current = os.umask(0)
    os.umask(current)
    os.chmod(path, mode & ~current)


def unexpected_entries(directory: str, expected: Iterable[str]) -> list[str]:
    """Relative paths under ``directory`` that are neither an ``expected`` file
    nor a directory leading to one (symlinks are never expected)."""
    wanted = {os.path.normpath(p) for p in expected}
    parents = set()
    for relative in wanted:
        while (relative := os.path.dirname(relative)) not in ("", *parents):
            parents.add(relative)
    found = []
    for root, dirs, files in os.walk(directory):
        for name in sorted(dirs + files):
            relative = os.path.relpath(os.path.join(root, name), directory)
            full = os.path.join(root, name)
            if os.path.islink(full):
                found.append(relative)
            elif name in dirs and relative not in parents:
                found.append(relative + "/")
            elif name in files and relative not in wanted:
                found.append(relative)
        dirs[:] = [d for d in dirs if os.path.relpath(os.path.join(root, d), directory) in parents]
    return found


def describe(paths: list[str], limit: int = 5) -> str:
    """A short listing: ``a, b, c`` (and N more)."""
    shown = ", ".join(paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def confined(directory: str, relative: object, what: str) -> str:
    """The absolute path of ``relative`` inside ``directory``.

    Raises:
      ValueError: it is not a relative path, or it leaves ``directory`` (``..``,
        an absolute path, a symlink pointing out).
    """
    if not isinstance(relative, str) or not relative or os.path.isabs(relative):
        raise ValueError(
            f"{what} {relative!r} must be a path relative to {directory}; "
            "the metadata was modified or is not from this converter: convert the data again"
        )
    base = os.path.realpath(directory)
    resolved = os.path.realpath(os.path.join(base, relative))
    if os.path.commonpath([base, resolved]) != base:
        raise ValueError(
            f"{what} {relative!r} points outside {directory}; the metadata was modified or is "
            "not from this converter: convert the data again"
        )
    return resolved


def contains(directory: str, path: str) -> bool:
    """Whether ``path`` is ``directory`` or lies inside it (symlinks resolved)."""
    base = os.path.realpath(directory)
    resolved = os.path.realpath(path)
    return os.path.commonpath([base, resolved]) == base


def keras_archive_problem(path: str) -> str | None:
    """What makes ``path`` not a ``.keras`` model file (``None`` if it looks like one:
    a zip archive holding ``config.json``), checked before Keras reads it."""
    if not os.path.exists(path):
        return "no such file"
    if not os.path.isfile(path):
        return "not a file"
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except zipfile.BadZipFile:
        return "not a .keras model file (not a zip archive); give a file written by `save_model`"
    except OSError as error:
        return f"cannot be read ({error.strerror})"
    if "config.json" not in names:
        return (
            "a zip archive without config.json, not a .keras model file; "
            "give a file written by `save_model`"
        )
    return None
