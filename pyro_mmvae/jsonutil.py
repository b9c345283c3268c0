"""Turning results into JSON-ready values (no NaN, no tensors, string keys)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from torch import Tensor

__all__ = ["jsonable"]


def jsonable(value: Any) -> Any:
    """Tensors/arrays -> lists, NaN/inf -> None, dict keys -> str, recursively."""
    if isinstance(value, (Tensor, np.ndarray)):
        return jsonable(value.tolist())
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
