"""User data: a folder of PNG/JPEG images (`folder`) or numpy arrays in an .npz file (`npz`).

folder (option `path`): if `path/train` and/or `path/test` exist they are the splits; inside a
split directory (or `path` itself), subdirectories are classes (sorted names -> labels 0..K-1),
else images sit directly there and have no labels. Non-square images are centre-cropped to a
square; `size` resizes (PIL bicubic, antialiased when shrinking); `channels` 1 (greyscale) or
3 (RGB), by default 1 when every image is greyscale.

npz (option `path`): arrays `x` (uint8 [N,H,W], [N,H,W,C] or [N,C,H,W] with C in {1, 3}) and
optional `y` (integer labels [N]); or `x_train`/`y_train`/`x_test`/`y_test`. Optional generative
factors (probed one by one by `diffrep eval`): `factors` (numbers [N, K] or [N]; with separate
splits `factors_train`/`factors_test`), `factor_names` (K strings; default factor_0..) and
`factor_kinds` (K of "discrete"/"continuous"; default: integer arrays discrete, others continuous).

Without separate train/test data, `train`/`test` are a fixed holdout (seed 0, `test_fraction`,
stratified when there are labels, see `holdout_indices`) and `all` is everything.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from diffrep.data.core import DatasetInfo, ImageData, dataset, holdout_indices
from diffrep.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _need_path(name: str, path: str | None) -> Path:
    if not path:
        raise UserError(f"dataset {name!r} needs a path; fix: set data.options.path")
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"{name}: {p} does not exist; fix: set data.options.path to your data")
    return p


def _images_in(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _list_folder(d: Path) -> tuple[list[Path], np.ndarray | None, tuple[str, ...]]:
    """Image files under d, with labels from class subdirectories when there are any."""
    classes = sorted(c.name for c in d.iterdir() if c.is_dir() and _images_in(c))
    if classes:
        files, labels = [], []
        for k, c in enumerate(classes):
            f = _images_in(d / c)
            files += f
            labels += [k] * len(f)
        return files, np.asarray(labels, dtype=np.int64), tuple(classes)
    files = _images_in(d)
    if not files:
        raise UserError(f"no .png/.jpg/.jpeg images in {d} or its subfolders; fix: check the path")
    return files, None, ()


def _read_image(path: Path, size: int | None, mode: str) -> np.ndarray:
    from PIL import Image  # pillow comes with matplotlib

    try:
        with Image.open(path) as im:
            im = im.convert(mode)
            w, h = im.size
            if w != h:  # centre crop to a square so resizing keeps the aspect ratio
                m = min(w, h)
                left, top = (w - m) // 2, (h - m) // 2
                im = im.crop((left, top, left + m, top + m))
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.BICUBIC, reducing_gap=None)
            a = np.asarray(im, dtype=np.uint8)
    except OSError as e:
        raise UserError(f"cannot read image {path}: {e}; fix: remove or replace the file") from None
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)  # [C, H, W]


def _is_grey(path: Path) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.mode in ("1", "L", "LA", "I", "I;16", "F")
    except OSError as e:
        raise UserError(f"cannot read image {path}: {e}; fix: remove or replace the file") from None


def _load_images(files: list[Path], size: int | None, channels: int | None) -> np.ndarray:
    if channels is None:
        channels = 1 if all(_is_grey(f) for f in files) else 3
    if channels not in (1, 3):
        raise UserError(f"channels must be 1 or 3, got {channels}")
    arrays = [_read_image(f, size, "L" if channels == 1 else "RGB") for f in files]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise UserError(
            f"images have different sizes {sorted(shapes)[:3]}; fix: set data.options.size"
        )
    return np.stack(arrays)


def _split_data(
    name, split, images, labels, class_names, test_fraction, source, num_classes=None, factors=None
) -> ImageData:
    idx = holdout_indices(len(images), split, test_fraction, seed=0, labels=labels)
    if len(idx) == 0:
        raise UserError(f"{name}: split {split!r} is empty; fix: change test_fraction")
    f, names, kinds = factors or (None, (), ())
    return ImageData(
        name=name,
        images=images[idx],
        labels=None if labels is None else labels[idx],
        factors=None if f is None else f[idx],
        factor_names=names,
        factor_kinds=kinds,
        num_classes=num_classes if num_classes else (len(class_names) or None),
        class_names=class_names,
        source=source,
    )


@dataset(
    "folder",
    DatasetInfo(
        description="your PNG/JPEG images; class subfolders give labels; train/ and test/ "
        "subfolders give splits",
        shape="any (options size, channels)",
        splits=("train", "test", "all"),
        files="options.path (a directory)",
    ),
)
def folder(
    split: str,
    root: str | None,
    *,
    path: str | None = None,
    size: int | None = None,
    channels: int | None = None,
    test_fraction: float = 0.1,
) -> ImageData:
    p = _need_path("folder", path)
    if not p.is_dir():
        raise UserError(
            f"folder: {p} is a file, not a directory; fix: set data.options.path to a directory "
            "of images (or use dataset npz for a .npz file)"
        )
    if (p / "train").is_dir() or (p / "test").is_dir():
        if split == "all":
            raise UserError(f"{p} has train/ and test/ folders; fix: use split train+test")
        d = p / split
        if not d.is_dir():
            raise UserError(f"{p} has no {split}/ folder; fix: add it or use the other split")
        files, labels, classes = _list_folder(d)
        return ImageData(
            name="folder",
            images=_load_images(files, size, channels),
            labels=labels,
            num_classes=len(classes) or None,
            class_names=classes,
            source=str(d),
        )
    files, labels, classes = _list_folder(p)
    images = _load_images(files, size, channels)
    return _split_data("folder", split, images, labels, classes, test_fraction, str(p))


def _to_nchw(x: np.ndarray, key: str, path: Path) -> np.ndarray:
    if x.dtype != np.uint8:
        raise UserError(f"{path}: {key} is {x.dtype}; fix: save 8-bit images as uint8 (0..255)")
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4:
        if x.shape[1] in (1, 3) and x.shape[3] not in (1, 3):
            return x
        if x.shape[3] in (1, 3):
            return x.transpose(0, 3, 1, 2)
    raise UserError(
        f"{path}: {key} has shape {x.shape}; fix: save [N,H,W], [N,H,W,C] or [N,C,H,W], C in 1, 3"
    )


def _labels(npz, key: str, n: int, path: Path) -> np.ndarray | None:
    if key not in npz:
        return None
    y = np.asarray(npz[key])
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer) or (n and y.min() < 0):
        raise UserError(
            f"{path}: {key} must be {n} non-negative integer labels, got {y.dtype} {y.shape}"
        )
    return y.astype(np.int64)


FACTOR_KINDS = ("discrete", "continuous")


def _strings(npz, key: str, k: int, path: Path) -> tuple[str, ...] | None:
    if key not in npz:
        return None
    a = np.asarray(npz[key])
    if a.dtype.kind not in "US" or a.shape != (k,):
        raise UserError(
            f"{path}: {key} must be {k} strings (one per factor column), got {a.dtype} {a.shape}; "
            f"fix: savez(..., {key}=np.array([...]))"
        )
    return tuple(str(v) for v in a)


def _factors(npz, key: str, n: int, path: Path):
    """(factors float64 [N, K], names, kinds) from `key`, factor_names, factor_kinds; or None."""
    if key not in npz:
        for other in ("factor_names", "factor_kinds"):
            if other in npz:
                raise UserError(f"{path}: {other} without {key}; fix: save the factors as {key}")
        return None
    raw = np.asarray(npz[key])
    f = raw[:, None] if raw.ndim == 1 else raw
    if f.ndim != 2 or len(f) != n or f.dtype.kind not in "biuf":
        raise UserError(
            f"{path}: {key} must be numbers [N, K] (or [N]) for the {n} images, got {raw.dtype} "
            f"{raw.shape}; fix: one row of factor values per image"
        )
    f = f.astype(np.float64)
    if not np.isfinite(f).all():
        raise UserError(f"{path}: {key} has NaN or infinite values; fix: drop or impute them")
    k = f.shape[1]
    names = _strings(npz, "factor_names", k, path) or tuple(f"factor_{j}" for j in range(k))
    if len(set(names)) != k:
        raise UserError(f"{path}: factor_names repeat a name {names}; fix: name each factor once")
    default = "discrete" if raw.dtype.kind in "biu" else "continuous"
    kinds = _strings(npz, "factor_kinds", k, path) or (default,) * k
    bad = [v for v in kinds if v not in FACTOR_KINDS]
    if bad:
        raise UserError(
            f"{path}: factor_kinds {bad} unknown; fix: use {' or '.join(FACTOR_KINDS)} per factor"
        )
    return f, names, kinds


@dataset(
    "npz",
    DatasetInfo(
        description="numpy .npz with uint8 x [N,H,W(,C)] or [N,C,H,W], optional labels y and "
        "factors [N,K] (factor_names, factor_kinds) (or x_train/x_test, y_train/y_test, "
        "factors_train/factors_test)",
        shape="any",
        splits=("train", "test", "all"),
        files="options.path (a .npz file)",
    ),
)
def npz(
    split: str, root: str | None, *, path: str | None = None, test_fraction: float = 0.1
) -> ImageData:
    p = _need_path("npz", path)
    try:
        f = np.load(p, allow_pickle=False)  # never unpickle user files
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {p} as .npz: {e}; fix: save with numpy.savez") from None
    with f:
        keys = set(f.files)
        if {"x_train", "x_test"} & keys:
            if split == "all":
                raise UserError(f"{p} has separate splits; fix: use split train+test")
            if f"x_{split}" not in keys:
                raise UserError(f"{p} has no array x_{split}; arrays: {sorted(keys)}")
            x = _to_nchw(f[f"x_{split}"], f"x_{split}", p)
            y = _labels(f, f"y_{split}", len(x), p)
            ys = [f[s] for s in ("y_train", "y_test") if s in keys and f[s].size]
            k = max(int(a.max()) for a in ys) + 1 if y is not None and ys else None
            fac = _factors(f, f"factors_{split}", len(x), p)
            if fac is None and "factors" in keys:
                raise UserError(f"{p} has x_train/x_test; fix: save factors_train/factors_test")
            f_, names, kinds = fac or (None, (), ())
            return ImageData(
                "npz",
                x,
                y,
                factors=f_,
                factor_names=names,
                factor_kinds=kinds,
                num_classes=k,
                source=str(p),
            )
        if "x" not in keys:
            raise UserError(f"{p} has no array 'x' (arrays: {sorted(keys)}); fix: savez(x=...)")
        x = _to_nchw(f["x"], "x", p)
        y = _labels(f, "y", len(x), p)
        fac = _factors(f, "factors", len(x), p)
    k = int(y.max()) + 1 if y is not None and y.size else None
    return _split_data("npz", split, x, y, (), test_fraction, str(p), num_classes=k, factors=fac)
