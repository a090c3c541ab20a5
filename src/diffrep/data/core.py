"""`ImageData`, the dataset registry and `load_dataset`.

A dataset is a registered loader function `loader(split, root, **options) -> ImageData` for
one *base* split ("train", "test", ...). `load_dataset` parses the split grammar
(`diffrep.data.splits`), validates the options against the loader's signature, caches base
splits per process and returns copies, so callers may modify what they get without corrupting
the cache.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from diffrep.errors import UserError
from diffrep.registry import Registry
from diffrep.validate import check_kwargs


@dataclass
class ImageData:
    """Images with optional labels and generative factors (numpy, CPU).

    `images` uint8 [N, C, H, W]; `labels` int64 [N] or None; `factors` float64 [N, K] or None.
    """

    name: str
    images: np.ndarray
    labels: np.ndarray | None = None
    factors: np.ndarray | None = None
    factor_names: tuple[str, ...] = ()
    factor_kinds: tuple[str, ...] = ()  # "discrete" | "continuous", one per factor
    num_classes: int | None = None
    # Additions to the architecture contract (all optional): provenance for reports.
    split: str = ""
    class_names: tuple[str, ...] = ()
    source: str = ""  # where the files were found ("generated", "scikit-learn", a path)

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise ValueError(
                f"images must be uint8 [N, C, H, W], got {self.images.dtype} {self.images.shape}"
            )
        n = len(self.images)
        if self.labels is not None and self.labels.shape != (n,):
            raise ValueError(f"labels shape {self.labels.shape} does not match {n} images")
        if self.factors is not None:
            if self.factors.ndim != 2 or len(self.factors) != n:
                raise ValueError(f"factors shape {self.factors.shape} does not match {n} images")
            k = self.factors.shape[1]
            if len(self.factor_names) != k or len(self.factor_kinds) != k:
                raise ValueError("need one factor name and one factor kind per factor column")
        if any(kind not in ("discrete", "continuous") for kind in self.factor_kinds):
            raise ValueError(
                f"factor kinds must be 'discrete' or 'continuous': {self.factor_kinds}"
            )

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, indices: Sequence[int] | np.ndarray | slice) -> ImageData:
        """The examples at `indices` (an index array, a boolean mask or a slice), as copies."""
        if not isinstance(indices, slice):
            indices = np.asarray(indices)
            if indices.dtype != bool:
                indices = indices.astype(np.int64)

        def take(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else np.array(a[indices], copy=True)

        return replace(
            self, images=take(self.images), labels=take(self.labels), factors=take(self.factors)
        )

    def copy(self) -> ImageData:
        return self.subset(slice(None))


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class DatasetInfo:
    """What `diffrep data list` shows about a dataset."""

    description: str
    shape: str  # e.g. "1x28x28", or "any" for user files
    splits: tuple[str, ...]
    files: str  # where the files are looked for, in words
    fetchable: bool = False
    extra: dict = field(default_factory=dict)


DATASETS: Registry[ImageData] = Registry("dataset")
INFO: dict[str, DatasetInfo] = {}


def dataset(name: str, info: DatasetInfo) -> Callable[[Callable[..., ImageData]], Callable]:
    """Register a loader `fn(split, root, **options) -> ImageData` with its description."""

    def deco(fn: Callable[..., ImageData]) -> Callable[..., ImageData]:
        INFO[name] = info
        return DATASETS.register(name)(fn)

    return deco


# --------------------------------------------------------------------------- roots

#: Checkout root (src/diffrep/data/core.py -> parents[3]); only used for the shared fallback.
REPO = Path(__file__).resolve().parents[3]


def default_cache_dir() -> Path:
    """Where `fetch` puts downloads when neither --root nor $DIFFREP_DATA is given."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "diffrep" / "data"


def data_roots(root: str | os.PathLike | None = None) -> list[Path]:
    """Directories searched for dataset files, in order.

    An explicit `root` is the only place searched (explicit means explicit: no silent fallback).
    Otherwise: $DIFFREP_DATA, the download cache (`default_cache_dir()`), then
    `<repo>/../shared/data` (a shared read-only copy, when the checkout has one).
    """
    if root is not None:
        return [Path(root).expanduser()]
    roots = []
    if os.environ.get("DIFFREP_DATA"):
        roots.append(Path(os.environ["DIFFREP_DATA"]).expanduser())
    roots.append(default_cache_dir())
    roots.append(REPO.parent / "shared" / "data")
    return roots


# --------------------------------------------------------------------------- loading


def _freeze(value):
    """A hashable version of an option value (for the cache key), or raise TypeError."""
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    hash(value)
    return value


@functools.lru_cache(maxsize=8)
def _load_base_cached(
    name: str, split: str, root: str | None, roots: tuple[str, ...], frozen: tuple
) -> ImageData:
    # `roots` is only part of the key: the same root=None means other places when
    # $DIFFREP_DATA changes.
    data = DATASETS.get(name)(split, root, **dict(frozen))
    # Read-only so that a bug that writes into the cached arrays fails loudly.
    for a in (data.images, data.labels, data.factors):
        if a is not None:
            a.flags.writeable = False
    return data


def _load_base(name: str, split: str, root: str | None, options: dict) -> ImageData:
    try:
        frozen = tuple(sorted((k, _freeze(v)) for k, v in options.items()))
    except TypeError:  # unhashable option: load without caching
        return DATASETS.get(name)(split, root, **options)
    roots = tuple(str(r) for r in data_roots(root))
    return _load_base_cached(name, split, root, roots, frozen)


def clear_cache() -> None:
    """Forget cached base splits (e.g. after files on disk changed)."""
    _load_base_cached.cache_clear()


def load_dataset(
    name: str, split: str = "train", root: str | os.PathLike | None = None, **options
) -> ImageData:
    """Load `split` of dataset `name` as an `ImageData` that the caller owns (a copy).

    `split` follows `diffrep.data.splits` ("train", "test[:8000]", "train[10%:20%]", "a+b").
    `root` is a directory to search instead of the defaults (see `data_roots`).
    `options` are the dataset's own keyword arguments (e.g. `shapes`: size, seed, n_train).
    """
    from diffrep.data.splits import parse_split, resolve_slice

    loader = DATASETS.get(name)
    # the loader's keyword-only parameters are its options (split and root are not options)
    own = sorted(
        n for n, p in inspect.signature(loader).parameters.items() if p.kind is p.KEYWORD_ONLY
    )
    for key in options:
        if key not in own:
            valid = f"valid options: {', '.join(own)}" if own else "it takes no options"
            raise UserError(f"dataset {name!r}: unknown option {key!r}; {valid}")
    check_kwargs(loader, options, where=f"dataset {name!r}")
    info = INFO[name]
    root_s = None if root is None else str(Path(root).expanduser())
    parts = []
    for base, sl in parse_split(split):
        if base not in info.splits:
            raise UserError(
                f"dataset {name!r} has no split {base!r}; choose one of: {', '.join(info.splits)}"
            )
        data = _load_base(name, base, root_s, options)
        parts.append(data.subset(resolve_slice(sl, len(data), f"{name} {split!r}")))
    out = parts[0] if len(parts) == 1 else _concat(parts)
    return replace(out, split=split)


def _concat(parts: list[ImageData]) -> ImageData:
    first = parts[0]
    if any(p.shape != first.shape for p in parts):
        raise UserError(
            f"cannot join splits of different image shapes {[p.shape for p in parts]}; "
            "fix: join splits of the same dataset and options"
        )

    def cat(arrays):
        return None if any(a is None for a in arrays) else np.concatenate(arrays)

    return replace(
        first,
        images=np.concatenate([p.images for p in parts]),
        labels=cat([p.labels for p in parts]),
        factors=cat([p.factors for p in parts]),
    )


def holdout_indices(
    n: int, split: str, test_fraction: float, seed: int = 0, labels: np.ndarray | None = None
) -> np.ndarray:
    """Deterministic train/test indices for data without an official split.

    A fixed permutation (numpy PCG64 with `seed`) puts round(test_fraction * n_c) examples of
    every class c in `test` (stratified when `labels` is given; one class otherwise) and the rest
    in `train`; "all" is everything. Indices come back sorted, so the order of the source is kept.
    """
    if split == "all":
        return np.arange(n)
    if not 0.0 < test_fraction < 1.0:
        raise UserError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    groups = (
        [np.arange(n)]
        if labels is None
        else [np.flatnonzero(labels == c) for c in np.unique(labels)]
    )
    test = []
    for g in groups:
        perm = rng.permutation(g)
        test.append(perm[: int(np.floor(test_fraction * len(g) + 0.5))])
    is_test = np.zeros(n, dtype=bool)
    is_test[np.concatenate(test)] = True
    return np.flatnonzero(is_test if split == "test" else ~is_test)
