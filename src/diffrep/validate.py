"""Argument validation against signatures: what registries and config sections share.

`check_kwargs(ctor, kwargs, where)` checks keyword arguments against a constructor's signature
(unknown key -> UserError naming the valid options) and coerces each value to its annotation
(`coerce`): `int`, `float`, `bool`, `str`, `Literal[...]`, `tuple[int, ...]`, `X | None`, `dict`.
It lives at the bottom layer, next to `diffrep.registry`, so that registries (and the data
layer) validate without importing the config layer above them.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal, Union, get_args, get_origin

from diffrep.errors import UserError


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Return `value` converted to annotation `tp`, or raise UserError naming `key`."""
    if tp is inspect.Parameter.empty or tp is Any:
        return value
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(value, a, key)
            except UserError as e:
                errors.append(str(e))
        raise UserError(errors[0] if len(errors) == 1 else f"{key}: {value!r} fits none of {tp}")
    if origin is Literal:
        choices = get_args(tp)
        if value in choices:
            return value
        raise UserError(
            f"{key}: {value!r} is not allowed; choose one of: {', '.join(map(repr, choices))}"
        )
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{key}: expected a list, got {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise UserError(f"{key}: expected {len(args)} items, got {len(value)}")
            return tuple(coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        inner = args[0] if args else Any
        out = [coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, dict):
            raise UserError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):  # "1e3": PyYAML reads exponent notation without a dot as text
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise UserError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads "1e-3" (no dot) as a string: YAML 1.1 quirk
            try:
                return float(value)
            except ValueError:
                pass
        raise UserError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise UserError(f"{key}: expected a string, got {value!r}")
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise UserError(f"{key}: expected {_type_name(tp)}, got {value!r}")


def _hints(obj: Callable[..., Any]) -> dict[str, Any]:
    target = obj.__init__ if inspect.isclass(obj) else obj
    try:
        return typing.get_type_hints(target)
    except Exception:  # unresolvable forward references: fall back to no checking
        return {}


def check_kwargs(
    ctor: Callable[..., Any], kwargs: dict[str, Any], where: str, fixed: tuple[str, ...] = ()
) -> None:
    """Validate (and coerce in place) keyword arguments against `ctor`'s signature.

    `fixed`: parameters the caller sets itself (from the data or the method); a user who sets
    one is told so, and they are not offered among the valid options.
    """
    for key in fixed:
        if key in kwargs:
            raise UserError(f"{where}: {key} is set from the data and the method; fix: remove it")
    sig = inspect.signature(ctor)
    skip = ("self", "data_shape", *fixed)
    params = {
        n: p
        for n, p in sig.parameters.items()
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and n not in skip
    }
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    hints = _hints(ctor)
    for key in list(kwargs):
        if key not in params:
            if accepts_any:
                continue
            raise UserError(
                f"{where}: unknown option {key!r}; valid options: {', '.join(sorted(params))}"
            )
        kwargs[key] = coerce(kwargs[key], hints.get(key, params[key].annotation), key)
