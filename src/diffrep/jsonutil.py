"""JSON conversion and flattening: one policy for every file diffrep writes.

`to_jsonable(obj)` turns what evaluation and training produce into plain JSON values: numpy
scalars and arrays, torch tensors (anything with `.tolist()`), tuples (-> lists), paths
(-> str), dict keys (-> str). NaN and +-inf become null: JSON has no such numbers, and a null
reads as "no value" everywhere (a report cell "-", a missing point on a curve), while a string
"nan" would pass for a value. `dumps` is strict (`allow_nan=False`) on top of that.

`flatten(d, sep=".")` turns nested dicts into dotted keys ({"a": {"b": 1}} -> {"a.b": 1}) for
tables and scalar logs; lists are per-dimension detail and are left out.
"""

from __future__ import annotations

import json
import math
from pathlib import PurePath
from typing import Any


def to_jsonable(obj: Any) -> Any:
    """Plain JSON values for `obj` (see the module docstring for the conversions)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (str, bool, int)) or obj is None:
        return obj
    if isinstance(obj, float):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, PurePath):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy scalars/arrays, torch tensors: Python numbers or lists
        return to_jsonable(obj.tolist())
    return obj


def dumps(obj: Any, indent: int | None = None) -> str:
    """Strict JSON text of `to_jsonable(obj)` (raises on what cannot be converted)."""
    return json.dumps(to_jsonable(obj), indent=indent, allow_nan=False)


def flatten(d: dict, sep: str = ".", prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}, "c": [1, 2]} -> {"a.b": 1}: nested keys joined by `sep`, lists dropped."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, sep, key + sep))
        elif not isinstance(v, (list, tuple)):
            out[key] = v
    return out
