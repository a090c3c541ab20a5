"""scikit-learn's 8x8 handwritten digits (UCI optdigits test part, 1797 images): the laptop set.

Pixel values 0..16 become uint8 by round(v * 255 / 16), so 16 -> 255 and the 17 grey levels
stay distinct. There is no official split: `holdout_indices` makes a fixed, stratified one
(seed 0; `test` = round(test_fraction * n_c) images of each class c, default 20%, `train` the
rest, `all` everything), identical on every machine.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np

from diffrep.data.core import DatasetInfo, ImageData, dataset, holdout_indices


def _csv_path() -> Path | None:
    """scikit-learn's digits.csv.gz, found without importing scikit-learn (seconds)."""
    spec = importlib.util.find_spec("sklearn")
    for loc in (spec.submodule_search_locations or []) if spec else []:
        p = Path(loc) / "datasets" / "data" / "digits.csv.gz"
        if p.is_file():
            return p
    return None


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    p = _csv_path()
    if p is not None:  # rows: 64 pixel values 0..16, then the label
        table = np.loadtxt(p, delimiter=",", dtype=np.int64)
        values, target = table[:, :64].reshape(-1, 8, 8), table[:, 64]
    else:  # a scikit-learn that moved the file: ask it
        from sklearn.datasets import load_digits

        d = load_digits()
        values, target = d.images, d.target
    images = np.rint(values * (255.0 / 16.0)).astype(np.uint8)[:, None]  # [1797, 1, 8, 8]
    labels = target.astype(np.int64)
    for a in (images, labels):
        a.flags.writeable = False  # cached: callers get copies via indexing
    return images, labels


@dataset(
    "digits",
    DatasetInfo(
        description="scikit-learn 8x8 digits (1797 images, 10 classes); fixed stratified "
        "80/20 split, seed 0",
        shape="1x8x8",
        splits=("train", "test", "all"),
        files="bundled with scikit-learn (no download)",
    ),
)
def digits(split: str, root: str | None, *, test_fraction: float = 0.2) -> ImageData:
    images, labels = _digits()
    idx = holdout_indices(len(images), split, test_fraction, seed=0, labels=labels)
    return ImageData(
        name="digits",
        images=images[idx],
        labels=labels[idx],
        num_classes=10,
        class_names=tuple(str(i) for i in range(10)),
        source="scikit-learn",
    )
