"""Turning results into strict JSON (no NaN or Infinity, no tensors, string keys).

Python's :func:`json.dumps` writes ``NaN`` and ``Infinity`` by default, which no strict JSON
parser (JavaScript's ``JSON.parse``, ``jq``, Go, Rust's serde_json) accepts. Every JSON file
the library writes goes through :func:`dumps`: non-finite floats become ``null`` (the
figure is not measurable; the writer adds a note saying why where it knows), and anything
else that is still not JSON raises instead of being written.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from torch import Tensor

__all__ = ["dumps", "jsonable"]


def jsonable(value: Any) -> Any:
    """Tensors/arrays -> lists, NaN/inf -> None, dict keys -> str, recursively.

    Args:
        value: any result: a mapping, list, tuple, tensor, NumPy array or scalar, nested.
            Tuples become lists; objects that are not JSON are returned as they are (and
            :func:`dumps` then raises ``TypeError``).
    """
    if isinstance(value, (Tensor, np.ndarray)):
        return jsonable(value.tolist())
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """``json.dumps(jsonable(value), allow_nan=False, **kwargs)``: strict JSON text.

    Args:
        value: what to write, made JSON-compatible by :func:`jsonable`.
        **kwargs: passed on to :func:`json.dumps` (e.g. ``indent=1``, ``sort_keys=True``).
    """
    return json.dumps(jsonable(value), allow_nan=False, **kwargs)
