"""Environment switches that turn a default speed-up off (``NAME=0``) without a code change."""

from __future__ import annotations

import os

OFF_VALUES = ("0", "false", "no", "off")


def switched_on(variable: str) -> bool:
    """False when ``variable`` is set to 0, false, no or off (any case); else True."""
    return os.environ.get(variable, "1").strip().lower() not in OFF_VALUES
