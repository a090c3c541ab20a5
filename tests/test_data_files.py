"""diffrep.data readers on small files written in tmp: IDX, CIFAR-10 binary, folder, npz, fetch."""

from __future__ import annotations

import gzip
import hashlib
import io
import struct
import tarfile

import numpy as np
import pytest

from diffrep.data import download as fetch_mod
from diffrep.data import load_dataset
from diffrep.data.idx import read_idx
from diffrep.errors import UserError

RNG = np.random.default_rng(0)


def write_idx(path, array: np.ndarray, gz: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if gz else data)


def write_mnist(d, n_train=12, n_test=5, gz=True):
    """A tiny MNIST-layout directory; returns the arrays written."""
    out = {}
    sfx = ".gz" if gz else ""
    for split, n, stem in (("train", n_train, "train"), ("test", n_test, "t10k")):
        x = RNG.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = RNG.integers(0, 10, n).astype(np.uint8)
        write_idx(d / f"{stem}-images-idx3-ubyte{sfx}", x, gz)
        write_idx(d / f"{stem}-labels-idx1-ubyte{sfx}", y, gz)
        out[split] = (x, y)
    return out


# --------------------------------------------------------------------------- IDX / MNIST


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("layout", ["", "mnist", "MNIST/raw", "mnist/MNIST/raw"])
def test_mnist_layouts(tmp_path, gz, layout):
    arrays = write_mnist(tmp_path / layout if layout else tmp_path, gz=gz)
    for split in ("train", "test"):
        d = load_dataset("mnist", split, root=tmp_path)
        x, y = arrays[split]
        assert d.shape == (1, 28, 28) and len(d) == len(x)
        assert np.array_equal(d.images[:, 0], x) and np.array_equal(d.labels, y.astype(np.int64))
        assert d.labels.dtype == np.int64


def test_fashion_mnist_torchvision_layout(tmp_path):
    arrays = write_mnist(tmp_path / "FashionMNIST" / "raw", n_test=3)
    d = load_dataset("fashion-mnist", "test[1:]", root=tmp_path)
    assert np.array_equal(d.images[:, 0], arrays["test"][0][1:])
    assert d.class_names[9] == "Ankle boot"


def test_missing_mnist_names_files_layouts_and_fix(tmp_path):
    with pytest.raises(UserError) as e:
        load_dataset("mnist", "train", root=tmp_path)
    msg = str(e.value)
    assert "train-images-idx3-ubyte[.gz]" in msg and "train-labels-idx1-ubyte[.gz]" in msg
    assert str(tmp_path / "MNIST" / "raw") in msg and str(tmp_path / "mnist") in msg
    assert "diffrep data fetch mnist" in msg and "DIFFREP_DATA" in msg


def test_diffrep_data_env_var_is_searched(tmp_path, monkeypatch):
    a = write_mnist(tmp_path / "a" / "mnist", n_test=4)
    b = write_mnist(tmp_path / "b" / "MNIST" / "raw", n_test=3)
    monkeypatch.setenv("DIFFREP_DATA", str(tmp_path / "a"))
    d = load_dataset("mnist", "test")
    assert np.array_equal(d.labels, a["test"][1]) and d.source == str(tmp_path / "a" / "mnist")
    monkeypatch.setenv("DIFFREP_DATA", str(tmp_path / "b"))  # not answered from the cache
    assert np.array_equal(load_dataset("mnist", "test").images[:, 0], b["test"][0])


def test_truncated_idx_is_user_error_naming_file(tmp_path):
    write_mnist(tmp_path, gz=False)
    f = tmp_path / "t10k-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(UserError, match="t10k-images-idx3-ubyte: truncated"):
        load_dataset("mnist", "test", root=tmp_path)


def test_truncated_gzip_is_user_error_naming_file(tmp_path):
    write_mnist(tmp_path, gz=True)
    f = tmp_path / "t10k-images-idx3-ubyte.gz"
    f.write_bytes(f.read_bytes()[:-50])
    with pytest.raises(UserError, match=r"t10k-images-idx3-ubyte\.gz: cannot read"):
        load_dataset("mnist", "test", root=tmp_path)


def test_wrong_magic_is_user_error(tmp_path):
    p = tmp_path / "x-idx3-ubyte"
    p.write_bytes(b"<html>404 not found</html>" * 10)
    with pytest.raises(UserError, match="x-idx3-ubyte: not a uint8 IDX file"):
        read_idx(p)
    write_idx(p, np.zeros(4, np.uint8), gz=False)  # labels where images are expected
    with pytest.raises(UserError, match="1 dimensions, expected 3"):
        read_idx(p, ndim=3)


def test_mismatched_counts_is_user_error(tmp_path):
    write_mnist(tmp_path, n_test=5)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(4, np.uint8), gz=True)
    with pytest.raises(UserError, match="5 images but .* 4 labels"):
        load_dataset("mnist", "test", root=tmp_path)


# --------------------------------------------------------------------------- CIFAR-10


def write_cifar(d, n_per_file=3):
    d.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, names in (
        ("train", [f"data_batch_{i}.bin" for i in range(1, 6)]),
        ("test", ["test_batch.bin"]),
    ):
        xs, ys = [], []
        for name in names:
            x = RNG.integers(0, 256, (n_per_file, 3, 32, 32), dtype=np.uint8)
            y = RNG.integers(0, 10, n_per_file, dtype=np.uint8)
            rec = np.concatenate([y[:, None], x.reshape(n_per_file, -1)], axis=1)
            (d / name).write_bytes(rec.tobytes())
            xs.append(x)
            ys.append(y)
        out[split] = (np.concatenate(xs), np.concatenate(ys))
    return out


def test_cifar10_binary_reader(tmp_path):
    arrays = write_cifar(tmp_path / "cifar-10-batches-bin")
    tr = load_dataset("cifar10", "train", root=tmp_path)
    te = load_dataset("cifar10", "test", root=tmp_path)
    assert tr.shape == (3, 32, 32) and (len(tr), len(te)) == (15, 3)
    assert np.array_equal(tr.images, arrays["train"][0])
    assert np.array_equal(te.labels, arrays["test"][1].astype(np.int64))
    assert tr.class_names[0] == "airplane" and tr.num_classes == 10
    # The channel planes are R, G, B: the first 1024 pixel bytes of a record are red.
    raw = (tmp_path / "cifar-10-batches-bin" / "test_batch.bin").read_bytes()
    assert raw[1:1025] == te.images[0, 0].tobytes()


def test_cifar10_truncated_and_missing(tmp_path):
    write_cifar(tmp_path)
    with open(tmp_path / "test_batch.bin", "ab") as f:
        f.write(b"\0" * 10)
    with pytest.raises(UserError, match="test_batch.bin: .*not a whole number"):
        load_dataset("cifar10", "test", root=tmp_path)
    with pytest.raises(UserError, match="(?s)data_batch_1.bin.*fetch cifar10"):
        load_dataset("cifar10", "train", root=tmp_path / "nothing-here")


# --------------------------------------------------------------------------- folder / npz


def _save_png(path, array, mode):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)


def test_folder_with_class_subfolders(tmp_path):
    imgs = RNG.integers(0, 256, (10, 6, 6), dtype=np.uint8)
    for i, im in enumerate(imgs):
        _save_png(tmp_path / ("cat" if i < 4 else "dog") / f"{i:02d}.png", im, "L")
    d = load_dataset("folder", "all", path=str(tmp_path))
    assert d.shape == (1, 6, 6) and d.class_names == ("cat", "dog") and d.num_classes == 2
    assert np.array_equal(d.images[:, 0], imgs) and d.labels.tolist() == [0] * 4 + [1] * 6
    tr, te = (
        load_dataset("folder", s, path=str(tmp_path), test_fraction=0.5) for s in ("train", "test")
    )
    assert (len(tr), len(te)) == (5, 5) and np.bincount(te.labels).tolist() == [2, 3]
    rgb = load_dataset("folder", "all", path=str(tmp_path), channels=3, size=4)
    assert rgb.shape == (3, 4, 4)
    assert np.array_equal(rgb.images[:, 0], rgb.images[:, 2])  # grey stays grey


def test_folder_train_test_subfolders_and_crop(tmp_path):
    _save_png(tmp_path / "train" / "a.png", np.full((8, 12, 3), 200, np.uint8), "RGB")
    _save_png(tmp_path / "train" / "b.jpg", np.full((8, 8, 3), 10, np.uint8), "RGB")
    _save_png(tmp_path / "test" / "c.png", np.full((8, 8, 3), 99, np.uint8), "RGB")
    tr = load_dataset("folder", "train", path=str(tmp_path))
    assert tr.shape == (3, 8, 8) and len(tr) == 2 and tr.labels is None  # 8x12 centre-cropped
    assert tr.images[0].min() == 200
    assert load_dataset("folder", "test", path=str(tmp_path)).images.max() == 99


def test_folder_errors(tmp_path):
    with pytest.raises(UserError, match="needs a path"):
        load_dataset("folder", "train")
    with pytest.raises(UserError, match="no .png"):
        load_dataset("folder", "train", path=str(tmp_path))
    _save_png(tmp_path / "a.png", np.zeros((4, 4), np.uint8), "L")
    _save_png(tmp_path / "b.png", np.zeros((5, 5), np.uint8), "L")
    with pytest.raises(UserError, match="different sizes.*data.options.size"):
        load_dataset("folder", "all", path=str(tmp_path))
    (tmp_path / "c.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="cannot read image .*c.png"):
        load_dataset("folder", "all", path=str(tmp_path), size=4)


@pytest.mark.parametrize(
    "shape, expect",
    [((7, 5, 5), (1, 5, 5)), ((7, 5, 5, 3), (3, 5, 5)), ((7, 3, 5, 5), (3, 5, 5))],
)
def test_npz_layouts(tmp_path, shape, expect):
    x = RNG.integers(0, 256, shape, dtype=np.uint8)
    y = np.arange(7) % 2
    np.savez(tmp_path / "d.npz", x=x, y=y)
    d = load_dataset("npz", "all", path=str(tmp_path / "d.npz"))
    assert d.shape == expect and d.num_classes == 2 and d.labels.tolist() == y.tolist()
    nchw = x[:, None] if x.ndim == 3 else (x if shape[1] == 3 else x.transpose(0, 3, 1, 2))
    assert np.array_equal(d.images, nchw)


def test_npz_separate_splits_and_errors(tmp_path):
    p = tmp_path / "s.npz"
    np.savez(p, x_train=np.zeros((4, 3, 3), np.uint8), x_test=np.ones((2, 3, 3), np.uint8))
    assert len(load_dataset("npz", "train", path=str(p))) == 4
    assert load_dataset("npz", "test", path=str(p)).images.max() == 1
    np.savez(p, x=np.zeros((4, 3, 3), np.float32))
    with pytest.raises(UserError, match="float32.*uint8"):
        load_dataset("npz", "all", path=str(p))
    np.savez(p, x=np.zeros((4, 3, 3), np.uint8), y=np.zeros(5, np.int64))
    with pytest.raises(UserError, match="4 non-negative integer labels"):
        load_dataset("npz", "all", path=str(p))
    np.savez(p, images=np.zeros((4, 3, 3), np.uint8))
    with pytest.raises(UserError, match="no array 'x'"):
        load_dataset("npz", "all", path=str(p))


# --------------------------------------------------------------------------- fetch (no network)


class FakeOpener:
    """Stands in for urllib's urlopen: serves bytes per URL, records the URLs asked for."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.urls = files, []

    def __call__(self, url, timeout=None):
        self.urls.append(url)
        for name, data in self.files.items():
            if url.endswith("/" + name):
                return io.BytesIO(data)
        raise OSError(f"404 {url}")


def _fake_mnist_bytes(tmp_path):
    write_mnist(tmp_path / "src", n_train=3, n_test=2)
    return {p.name: p.read_bytes() for p in (tmp_path / "src").iterdir()}


def test_fetch_downloads_checks_and_loads(tmp_path, monkeypatch):
    files = _fake_mnist_bytes(tmp_path)
    sums = {n: hashlib.sha256(b).hexdigest() for n, b in files.items()}
    monkeypatch.setitem(fetch_mod.SOURCES, "mnist", ("mnist", sums, ("https://m1/", "https://m2/")))
    opener = FakeOpener(files)
    monkeypatch.setattr(fetch_mod, "_urlopen", opener)
    paths = fetch_mod.fetch("mnist", tmp_path / "root")
    assert sorted(p.name for p in paths) == sorted(files)
    assert len(opener.urls) == 4
    d = load_dataset("mnist", "train", root=tmp_path / "root")
    assert len(d) == 3
    fetch_mod.fetch("mnist", tmp_path / "root")  # already there with the right sums: no download
    assert len(opener.urls) == 4


def test_fetch_rejects_bad_sha256_and_tries_next_mirror(tmp_path, monkeypatch):
    files = _fake_mnist_bytes(tmp_path)
    sums = {n: hashlib.sha256(b).hexdigest() for n, b in files.items()}
    bad = {n: b[:-1] + bytes([b[-1] ^ 1]) for n, b in files.items()}  # one flipped bit each

    def opener(url, timeout=None):
        name = url.rsplit("/", 1)[1]
        return io.BytesIO((bad if url.startswith("https://bad/") else files)[name])

    monkeypatch.setitem(
        fetch_mod.SOURCES, "mnist", ("mnist", sums, ("https://bad/", "https://ok/"))
    )
    monkeypatch.setattr(fetch_mod, "_urlopen", opener)
    paths = fetch_mod.fetch("mnist", tmp_path)
    assert all(hashlib.sha256(p.read_bytes()).hexdigest() == sums[p.name] for p in paths)

    monkeypatch.setitem(fetch_mod.SOURCES, "mnist", ("mnist", sums, ("https://bad/",)))
    dest = tmp_path / "other"
    with pytest.raises(UserError, match="(?s)could not download .*checksum mismatch"):
        fetch_mod.fetch("mnist", dest)
    assert not any((dest / "mnist").iterdir())  # nothing half-written is left behind


def test_fetch_cifar10_extracts_binaries(tmp_path, monkeypatch):
    write_cifar(tmp_path / "src" / "cifar-10-batches-bin", n_per_file=2)
    (tmp_path / "src" / "cifar-10-batches-bin" / "batches.meta.txt").write_text("a\nb\n")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tf:
        tf.add(tmp_path / "src" / "cifar-10-batches-bin", arcname="cifar-10-batches-bin")
    tar = buf.getvalue()
    sums = {"cifar-10-binary.tar.gz": hashlib.sha256(tar).hexdigest()}
    monkeypatch.setitem(fetch_mod.SOURCES, "cifar10", ("cifar10", sums, ("https://c/",)))
    monkeypatch.setattr(fetch_mod, "_urlopen", FakeOpener({"cifar-10-binary.tar.gz": tar}))
    paths = fetch_mod.fetch("cifar10", tmp_path / "root")
    assert [p.name for p in paths][-1] == "test_batch.bin" and all(p.is_file() for p in paths)
    assert len(load_dataset("cifar10", "test", root=tmp_path / "root")) == 2


def test_fetch_unknown_or_generated(tmp_path):
    with pytest.raises(UserError, match="'shapes' is generated or bundled"):
        fetch_mod.fetch("shapes", tmp_path)
    with pytest.raises(UserError, match="'svhn' is not a known dataset"):
        fetch_mod.fetch("svhn", tmp_path)


def test_known_mnist_sums_match_shared_copy(mnist_dir):
    # The hard-coded sums are the published ones: check them against the real files we have.
    for p in mnist_dir.glob("*.gz"):
        assert fetch_mod.sha256_file(p) == fetch_mod.MNIST_SHA256[p.name]
