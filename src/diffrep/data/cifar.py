"""CIFAR-10, binary version (Krizhevsky 2009): `cifar-10-binary.tar.gz`, never the pickles.

Each record is 1 label byte followed by 3072 pixel bytes (1024 red, 1024 green, 1024 blue, each
32x32 row-major), so a batch file reshapes straight to [N, 3, 32, 32] without any decoding.
Unpickling downloaded files can run arbitrary code, which is why the Python version is not read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from diffrep.data.core import DatasetInfo, ImageData, data_roots, dataset
from diffrep.errors import UserError

RECORD = 1 + 3 * 32 * 32
FILES = {
    "train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    "test": ("test_batch.bin",),
}
CLASS_NAMES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip


def read_cifar_binary(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate binary batch files -> (uint8 [N, 3, 32, 32], int64 [N])."""
    images, labels = [], []
    for p in paths:
        raw = np.fromfile(p, dtype=np.uint8)
        if raw.size == 0 or raw.size % RECORD:
            raise UserError(
                f"{p}: {raw.size} bytes is not a whole number of {RECORD}-byte CIFAR-10 records "
                "(truncated or not the binary version); fix: run `diffrep data fetch cifar10` again"
            )
        rec = raw.reshape(-1, RECORD)
        if rec[:, 0].max() >= 10:
            raise UserError(f"{p}: label {rec[:, 0].max()} out of range 0..9 (not CIFAR-10 binary)")
        labels.append(rec[:, 0].astype(np.int64))
        images.append(rec[:, 1:].reshape(-1, 3, 32, 32))
    return np.concatenate(images), np.concatenate(labels)


def search_dirs(root=None) -> list[Path]:
    out = []
    for r in data_roots(root):
        out += [
            r / "cifar-10-batches-bin",
            r / "cifar10" / "cifar-10-batches-bin",
            r / "cifar10",
            r,
        ]
    return out


def _class_names(d: Path) -> tuple[str, ...]:
    meta = d / "batches.meta.txt"
    if meta.is_file():
        names = tuple(meta.read_text().split())
        if len(names) == 10:
            return names
    return CLASS_NAMES


@dataset(
    "cifar10",
    DatasetInfo(
        description="CIFAR-10 (Krizhevsky 2009), binary version, 50k train / 10k test, 10 classes",
        shape="3x32x32",
        splits=("train", "test"),
        files="R/cifar-10-batches-bin/, R/cifar10/cifar-10-batches-bin/, R/cifar10/ or R/: "
        "data_batch_1..5.bin, test_batch.bin",
        fetchable=True,
    ),
)
def cifar10(split: str, root: str | None) -> ImageData:
    names = FILES[split]
    dirs = search_dirs(root)
    for d in dirs:
        paths = [d / n for n in names]
        if all(p.is_file() for p in paths):
            images, labels = read_cifar_binary(paths)
            return ImageData(
                name="cifar10",
                images=images,
                labels=labels,
                num_classes=10,
                class_names=_class_names(d),
                source=str(d),
            )
    where = ", ".join(str(d) for d in dirs)
    raise UserError(  # one line: the CLI prints it as is
        f"cifar10 {split} split not found: need {', '.join(names)} (binary version) in one of: "
        f"{where}; fix: run `diffrep data fetch cifar10` (or `--root DIR`), set DIFFREP_DATA, "
        "or pass data.root"
    )
