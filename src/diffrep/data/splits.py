"""Split grammar (as in TFDS / Hugging Face datasets).

    SPLIT  := PART ("+" PART)*
    PART   := NAME | NAME "[" [BOUND] ":" [BOUND] "]"
    BOUND  := integer (may be negative, counts from the end) | number "%" (0..100)

Examples: "train", "test[:8000]", "test[8000:]", "train[:10%]", "train[10%:20%]", "train+test".
Percent bounds round to the nearest example, half up (so "[:50%]" and "[50%:]" of an odd-sized
split partition it exactly). Bounds beyond the split size are an error rather than silently
clipped, because a clipped split would quietly change an experiment.
"""

from __future__ import annotations

import math
import re

from diffrep.errors import UserError

_PART = re.compile(r"^\s*([A-Za-z][\w\-]*)\s*(?:\[\s*([^:\]]*?)\s*:\s*([^:\]]*?)\s*\])?\s*$")
_BOUND = re.compile(r"^(-?\d+)$|^(\d+(?:\.\d+)?)%$")

_GRAMMAR = 'e.g. "train", "test[:8000]", "test[8000:]", "train[:10%]", "train[10%:20%]"'


def parse_split(split: str) -> list[tuple[str, tuple[str | None, str | None]]]:
    """'train[:10%]+test' -> [("train", (None, "10%")), ("test", (None, None))]."""
    if not isinstance(split, str) or not split.strip():
        raise UserError(f"empty split {split!r}; fix: name a split, {_GRAMMAR}")
    out = []
    for part in split.split("+"):
        m = _PART.match(part)
        if m is None:
            raise UserError(f"cannot parse split {split!r} at {part!r}; fix: use {_GRAMMAR}")
        name, lo, hi = m.group(1), m.group(2), m.group(3)
        for b in (lo, hi):
            if b and not _BOUND.match(b):
                raise UserError(
                    f"bad bound {b!r} in split {split!r}: expected an integer or a percentage "
                    f"like 10%; fix: use {_GRAMMAR}"
                )
        out.append((name, (lo or None, hi or None)))
    return out


def _index(bound: str, n: int, where: str) -> int:
    m = _BOUND.match(bound)
    assert m is not None  # checked by parse_split
    if m.group(1) is not None:
        i = int(m.group(1))
        if not -n <= i <= n:
            raise UserError(f"{where}: index {i} is outside a split of {n} examples")
        return i + n if i < 0 else i
    p = float(m.group(2))
    if p > 100:
        raise UserError(f"{where}: {bound} is over 100%")
    return int(math.floor(p * n / 100 + 0.5))


def resolve_slice(bounds: tuple[str | None, str | None], n: int, where: str = "split") -> slice:
    """Turn parsed bounds into a slice of range(n); an empty selection is an error."""
    lo, hi = bounds
    start = 0 if lo is None else _index(lo, n, where)
    stop = n if hi is None else _index(hi, n, where)
    if stop <= start:
        raise UserError(f"{where} selects no examples (start {start}, stop {stop} of {n})")
    return slice(start, stop)
