"""Builds and loads the project's C++ TensorFlow kernels, once per source, TensorFlow and compiler.

The shared library is compiled with the machine's C++ compiler (``$CXX``, else
``g++``) against the installed TensorFlow's headers and cached under
``$DLRM_TF_KERNEL_CACHE`` (default ``~/.cache/dlrm_tf/kernels``), named by a hash
of everything that goes into it. Concurrent processes take a file lock, so one
compiles and the others load its result. Any failure (no compiler, a compile
error, a library that will not load) is logged once and returns None: callers
fall back to TensorFlow's own ops.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
from types import ModuleType

import tensorflow as tf
from absl import logging

from dlrm_tf.switches import switched_on

DISABLE_ENV = "DLRM_TF_FUSED_KERNELS"
CACHE_ENV = "DLRM_TF_KERNEL_CACHE"
_SOURCE_DIR = os.path.dirname(os.path.abspath(__file__))
COMPILE_TIMEOUT_S = 600
# What each library's callers run without it (named in the warning).
_FALLBACK = {
    "embedding_rows": "TensorFlow's ops",
    "interaction": "TensorFlow's ops",
    "criteo_lines": "the NumPy line parser",
}


def enabled() -> bool:
    """False when the environment turns the kernels off (``DLRM_TF_FUSED_KERNELS=0``)."""
    return switched_on(DISABLE_ENV)


def _compiler() -> list[str] | None:
    words = shlex.split(os.environ.get("CXX", "g++"))
    if not words or shutil.which(words[0]) is None:
        return None
    return words


def _command(compiler: list[str], source: str, target: str) -> list[str]:
    # No -march: the cache may be shared by machines of one architecture. The
    # table kernels are bound by memory latency; the interaction's vector loops
    # pick the CPU's widest vectors when the library loads (target_clones).
    return [
        *compiler, "-shared", "-fPIC", "-O3", "-w", source, "-o", target,
        *tf.sysconfig.get_compile_flags(), *tf.sysconfig.get_link_flags(),
    ]  # fmt: skip


def _cache_dir() -> str:
    default = os.path.join(os.path.expanduser("~"), ".cache", "dlrm_tf", "kernels")
    return os.environ.get(CACHE_ENV) or default


def _source_text(source: str) -> bytes:
    """The source and every header beside it (the kernels share ``tf_kernel.h``),
    so that a change to any of them builds a new library."""
    headers = sorted(p for p in os.listdir(_SOURCE_DIR) if p.endswith(".h"))
    parts = []
    for path in [source, *(os.path.join(_SOURCE_DIR, h) for h in headers)]:
        with open(path, "rb") as f:
            parts.append(f.read())
    return b"\0".join(parts)


def _library_path(name: str, command: list[str], source_text: bytes) -> str:
    key = hashlib.sha256()
    for part in (source_text, tf.__version__.encode(), " ".join(command).encode()):
        key.update(part)
        key.update(b"\0")
    key.update(f"{platform.machine()} {sys.version}".encode())
    return os.path.join(_cache_dir(), f"{name}-{key.hexdigest()[:16]}.so")


def _compile(command: list[str], target: str) -> None:
    """Runs ``command`` (which writes ``command``'s ``-o`` file) and moves its
    output to ``target`` in one rename, so no process loads half a library."""
    directory = os.path.dirname(target)
    with tempfile.TemporaryDirectory(dir=directory) as work:
        partial = os.path.join(work, os.path.basename(target))
        command = [partial if word == target else word for word in command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise RuntimeError(f"{command[0]} exited with {done.returncode}: {last}")
        os.replace(partial, target)


@functools.cache
def load(name: str) -> ModuleType | None:
    """The op library built from ``<name>.cc`` beside this file, or None (logged
    once) when the kernels are turned off or cannot be built or loaded here."""
    if not enabled():
        return None
    compiler = _compiler()
    if compiler is None:
        logging.warning("%s: no C++ compiler (%s); using %s", name, "CXX or g++", _FALLBACK[name])
        return None
    source = os.path.join(_SOURCE_DIR, f"{name}.cc")
    try:
        text = _source_text(source)
        placeholder = _command(compiler, source, "@target@")
        target = _library_path(name, placeholder, text)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target + ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not os.path.exists(target):
                logging.info("compiling %s into %s", source, target)
                _compile(_command(compiler, source, target), target)
        return tf.load_op_library(target)
    except (OSError, RuntimeError, subprocess.SubprocessError, tf.errors.OpError) as error:
        logging.warning("%s: kernels unavailable (%s); using %s", name, error, _FALLBACK[name])
        return None
