"""scikit-learn's 8x8 handwritten digits (UCI optdigits test part, 1797 images): the laptop set.

Pixel values 0..16 become uint8 by round(v * 255 / 16), so 16 -> 255 and the 17 grey levels
stay distinct. There is no official split: `holdout_indices` makes a fixed, stratified one
(seed 0; `test` = round(test_fraction * n_c) images of each class c, default 20%, `train` the
rest, `all` everything), identical on every machine.
"""

from __future__ import annotations

import functools

import numpy as np

from diffrep.data.core import DatasetInfo, ImageData, dataset, holdout_indices


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # ships with scikit-learn: no download

    d = load_digits()
    images = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # [1797, 1, 8, 8]
    images.flags.writeable = False  # cached: callers get copies via indexing
    labels = d.target.astype(np.int64)
    labels.flags.writeable = False
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
