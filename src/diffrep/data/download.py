"""`diffrep data fetch NAME`: download public datasets once, checking SHA-256 sums.

Only this module touches the network, and only when the user asks: loading, training and
tests never download. Each file is tried from a list of mirrors; a download is written to a
`.part` file, hashed and only then renamed into place, so an interrupted or corrupted download
never looks like data. Sums are the published ones (the MNIST test files match the copies in
`<repo>/../shared/data/mnist`).
"""

from __future__ import annotations

import hashlib
import os
import sys
import tarfile
import urllib.request
from pathlib import Path

from diffrep.data.core import default_cache_dir
from diffrep.errors import UserError

# fmt: off
MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",  # noqa: E501
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",  # noqa: E501
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
FASHION_SHA256 = {
    "train-images-idx3-ubyte.gz": "08dc20ab1689590a0bcd66e874647b6ee8464e2d501b5a3f1f78831db19a3fdc",  # noqa: E501
    "train-labels-idx1-ubyte.gz": "b0197879cbda89f3dc7b894f9fd52b858e68ea4182b6947c9d8c2b67e5f18dcc",  # noqa: E501
    "t10k-images-idx3-ubyte.gz": "78dcbbfb5a27efaf1b6c1d616caca68560be8766c5bffcb2791df9273a534229",
    "t10k-labels-idx1-ubyte.gz": "42bd18137a62d5998cdeae52bf3a0676ac6b706f5cf8439b47bb5b151ae3dccf",
}
CIFAR10_SHA256 = {
    "cifar-10-binary.tar.gz": "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
}
# fmt: on

# name -> (sub-directory of the root, {file: sha256}, mirrors tried in order)
SOURCES = {
    "mnist": (
        "mnist",
        MNIST_SHA256,
        (
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "http://yann.lecun.com/exdb/mnist/",  # plain http: the sha256 check is what we trust
        ),
    ),
    "fashion-mnist": (
        "fashion-mnist",
        FASHION_SHA256,
        (
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        ),
    ),
    "cifar10": ("cifar10", CIFAR10_SHA256, ("https://www.cs.toronto.edu/~kriz/",)),
}
CIFAR_BINS = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
CIFAR_BIN_BYTES = 10000 * (1 + 3 * 32 * 32)

# The one network call; tests replace it with a fake (no network at test time).
_urlopen = urllib.request.urlopen


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _download(url: str, dest: Path, sha256: str) -> None:
    """Stream url to dest.part, check the sum, rename; raise OSError/ValueError on failure."""
    from tqdm import tqdm

    part = dest.with_name(dest.name + ".part")
    h = hashlib.sha256()
    try:
        with _urlopen(url, timeout=60) as r, open(part, "wb") as f:
            total = getattr(r, "length", None)
            with tqdm(
                total=total, unit="B", unit_scale=True, desc=dest.name,
                disable=not sys.stderr.isatty(),
            ) as bar:  # fmt: skip
                for block in iter(lambda: r.read(1 << 20), b""):
                    f.write(block)
                    h.update(block)
                    bar.update(len(block))
        if h.hexdigest() != sha256:
            raise ValueError(f"checksum mismatch: sha256 {h.hexdigest()}, expected {sha256}")
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)


def fetch_file(name: str, mirrors, dest: Path, sha256: str) -> Path:
    """Make sure dest holds the file with this sha256, downloading it if needed."""
    if dest.is_file() and sha256_file(dest) == sha256:
        return dest
    errors = []
    for base in mirrors:
        url = base + name
        try:
            _download(url, dest, sha256)
            return dest
        except (OSError, ValueError) as e:  # URLError and HTTPError are OSErrors
            errors.append(f"{url}: {e}")
    raise UserError(
        f"could not download {name}:\n  " + "\n  ".join(errors) + "\nfix: check the network "
        f"connection, or download {name} yourself into {dest.parent} (sha256 {sha256})"
    )


def _extract_cifar(tar_path: Path, dest: Path) -> list[Path]:
    with tarfile.open(tar_path, "r:gz") as tf:
        members = [m for m in tf.getmembers() if m.name.startswith("cifar-10-batches-bin/")]
        # The "data" filter refuses absolute paths, links out of dest and device files.
        tf.extractall(dest, members=members, filter="data")
    return [dest / "cifar-10-batches-bin" / b for b in CIFAR_BINS]


def fetch(name: str, root: str | os.PathLike | None = None) -> list[Path]:
    """Download dataset `name` into `root/<name>/` (root: --root, $DIFFREP_DATA or the cache).

    Returns the paths of the dataset files. Files already present with the right sum are kept.
    """
    if name not in SOURCES:
        from diffrep.data.core import DATASETS

        kind = "is generated or bundled" if name in DATASETS else "is not a known dataset"
        raise UserError(
            f"{name!r} {kind}: nothing to fetch; fetchable: {', '.join(sorted(SOURCES))}"
        )
    if root is None:
        root = os.environ.get("DIFFREP_DATA") or default_cache_dir()
    subdir, sums, mirrors = SOURCES[name]
    dest = Path(root).expanduser() / subdir
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {dest}: {e}; fix: pass --root DIR (writable)") from None
    if name == "cifar10":
        bins = [dest / "cifar-10-batches-bin" / b for b in CIFAR_BINS]
        if all(p.is_file() and p.stat().st_size == CIFAR_BIN_BYTES for p in bins):
            return bins
        ((tar_name, sha),) = sums.items()
        tar_path = fetch_file(tar_name, mirrors, dest / tar_name, sha)
        bins = _extract_cifar(tar_path, dest)
        tar_path.unlink()  # 170 MB that the binaries now duplicate
        return bins
    return [fetch_file(f, mirrors, dest / f, sha) for f, sha in sums.items()]
