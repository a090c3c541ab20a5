"""MNIST and Fashion-MNIST from IDX files (LeCun's format), gzip-compressed or raw.

IDX layout: magic = 0x00 0x00 <type> <ndim> (type 0x08 = uint8), then ndim big-endian int32
sizes, then the data in C order. Files are looked for in each data root R (see
`diffrep.data.core.data_roots`) as

    R/<file>, R/<name>/<file>                      (flat)
    R/<Torch>/raw/<file>, R/<name>/<Torch>/raw/<file>   (torchvision: MNIST/raw, FashionMNIST/raw)

with <file> either `train-images-idx3-ubyte.gz` or the uncompressed `train-images-idx3-ubyte`.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from diffrep.data.core import DatasetInfo, ImageData, data_roots, dataset
from diffrep.errors import UserError

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
TORCH_DIR = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
CLASS_NAMES = {
    "mnist": tuple(str(i) for i in range(10)),
    "fashion-mnist": (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),  # fmt: skip
}


def read_idx(path: Path, ndim: int | None = None) -> np.ndarray:
    """Read one uint8 IDX file (gz or raw); UserError naming the file when it is damaged."""
    path = Path(path)
    fix = "fix: delete it and run `diffrep data fetch` again (or download it again)"
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the file name says
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(f"{path}: cannot read or decompress ({e}); {fix}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise UserError(
            f"{path}: not a uint8 IDX file (magic {raw[:4].hex() or 'missing'}, "
            f"expected 000008xx); {fix}"
        )
    nd = raw[3]
    if ndim is not None and nd != ndim:
        raise UserError(f"{path}: IDX file has {nd} dimensions, expected {ndim}; {fix}")
    header = 4 + 4 * nd
    if len(raw) < header:
        raise UserError(f"{path}: truncated IDX header; {fix}")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=nd, offset=4))
    size = int(np.prod(dims, dtype=np.int64))
    if len(raw) - header != size:
        raise UserError(
            f"{path}: truncated or padded IDX data ({len(raw) - header} bytes, header says "
            f"{size} for shape {dims}); {fix}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def search_dirs(name: str, root=None) -> list[Path]:
    """Directories searched for `name`'s IDX files, in order."""
    out = []
    for r in data_roots(root):
        out += [r, r / name, r / TORCH_DIR[name] / "raw", r / name / TORCH_DIR[name] / "raw"]
    return out


def _pick(d: Path, stem: str) -> Path | None:
    for p in (d / (stem + ".gz"), d / stem):
        if p.is_file():
            return p
    return None


def find_split_files(name: str, split: str, root=None) -> tuple[Path, Path]:
    """(images, labels) paths of one split: both from the first directory that has both."""
    stems = FILES[split]
    dirs = search_dirs(name, root)
    for d in dirs:
        found = [_pick(d, s) for s in stems]
        if all(found):
            return found[0], found[1]  # type: ignore[return-value]
    wanted = " and ".join(f"{s}[.gz]" for s in stems)
    where = ", ".join(str(d) for d in dirs)
    raise UserError(  # one line: the CLI prints it as is
        f"{name} {split} split not found: need {wanted} in one of: {where}; "
        f"fix: run `diffrep data fetch {name}` (or `--root DIR`), set DIFFREP_DATA to the "
        f"directory that holds the files, or pass data.root"
    )


def load_idx_split(name: str, split: str, root=None) -> ImageData:
    img_path, lab_path = find_split_files(name, split, root)
    images = read_idx(img_path, ndim=3)
    labels = read_idx(lab_path, ndim=1).astype(np.int64)
    if len(images) != len(labels):
        raise UserError(
            f"{img_path} has {len(images)} images but {lab_path} has {len(labels)} labels; "
            f"fix: the two files come from different downloads, fetch {name} again"
        )
    if labels.size and labels.max() >= 10:
        raise UserError(f"{lab_path}: label {labels.max()} out of range 0..9; fetch it again")
    return ImageData(
        name=name,
        images=images[:, None],  # [N, 1, 28, 28]
        labels=labels,
        factors=None,
        num_classes=10,
        class_names=CLASS_NAMES[name],
        source=str(img_path.parent),
    )


_WHERE = (
    "{root}/{f}, {root}/{name}/{f}, {root}/{T}/raw/{f} (torchvision); root = data.root, else "
    "$DIFFREP_DATA, ~/.cache/diffrep/data, <repo>/../shared/data"
)


@dataset(
    "mnist",
    DatasetInfo(
        description="MNIST handwritten digits (LeCun et al.), 60k train / 10k test, 10 classes",
        shape="1x28x28",
        splits=("train", "test"),
        files=_WHERE.format(root="R", f="*-idx?-ubyte[.gz]", name="mnist", T="MNIST"),
        fetchable=True,
    ),
)
def mnist(split: str, root: str | None) -> ImageData:
    return load_idx_split("mnist", split, root)


@dataset(
    "fashion-mnist",
    DatasetInfo(
        description="Fashion-MNIST (Xiao et al. 2017), 60k train / 10k test, 10 classes",
        shape="1x28x28",
        splits=("train", "test"),
        files=_WHERE.format(
            root="R", f="*-idx?-ubyte[.gz]", name="fashion-mnist", T="FashionMNIST"
        ),
        fetchable=True,
    ),
)
def fashion_mnist(split: str, root: str | None) -> ImageData:
    return load_idx_split("fashion-mnist", split, root)
