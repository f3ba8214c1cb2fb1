"""Argument checks shared by the task-set builders."""

from __future__ import annotations

import numpy as np


def require_int(name: str, value: object, minimum: int) -> int:
    """``value`` as an int, or a ``ValueError`` naming ``name`` unless it is an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)
