"""What machine a benchmark ran on: every bench prints it beside its figures."""

from __future__ import annotations

import platform


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), its widest vector ISA, bf16 and AMX flags."""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return platform.processor() or "unknown"
    name = next(
        (line.split(":", 1)[1].strip() for line in info.splitlines() if "model name" in line),
        "unknown",
    )
    cpu_flags = next(
        (line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")),
        [],
    )
    vector = next((f for f in ("avx512f", "avx2", "avx") if f in cpu_flags), "no AVX")
    extras = [f for f in ("avx512_bf16", "amx_bf16", "amx_tile") if f in cpu_flags]
    return f"{name} ({vector}; {', '.join(extras) or 'no bf16 or AMX flags'})"


def onednn_enabled() -> bool | None:
    """Whether this process's TensorFlow runs its oneDNN CPU kernels (None: unknown)."""
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:
        return None
    return bool(_pywrap_util_port.IsMklEnabled())
