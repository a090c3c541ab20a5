"""diffrep.data: splits, ImageData, model space, digits, shapes, describe, real MNIST."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffrep.data import (
    DATASETS,
    ImageData,
    bits_per_dim,
    dequantise,
    describe_dataset,
    describe_datasets,
    holdout_indices,
    load_dataset,
    make_batch,
    parse_split,
    resolve_slice,
    to_model_input,
    to_uint8,
)
from diffrep.data.shapes import render
from diffrep.errors import UserError

# --------------------------------------------------------------------------- split grammar


@pytest.mark.parametrize(
    "split, n, expected",
    [
        ("test", 10000, (0, 10000)),
        ("test[:8000]", 10000, (0, 8000)),
        ("test[8000:]", 10000, (8000, 10000)),
        ("train[:10%]", 60000, (0, 6000)),
        ("train[10%:20%]", 60000, (6000, 12000)),
        ("train[10%:]", 1438, (144, 1438)),  # 143.8 rounds to 144
        ("train[:50%]", 7, (0, 4)),  # 3.5 rounds half up
        ("train[50%:]", 7, (4, 7)),  # ... so the two halves partition the split
        ("test[-100:]", 10000, (9900, 10000)),
        ("test[ 10 : 20 ]", 100, (10, 20)),
        ("train[:12.5%]", 80, (0, 10)),
    ],
)
def test_split_slices(split, n, expected):
    ((_, bounds),) = parse_split(split)
    s = resolve_slice(bounds, n)
    assert (s.start, s.stop) == expected


def test_split_union_parses_parts():
    assert parse_split("train[:10]+test") == [("train", (None, "10")), ("test", (None, None))]


@pytest.mark.parametrize(
    "bad", ["", "train[", "train[1]", "train[a:b]", "train[1:2:3]", "[1:2]", "train[10%%:]"]
)
def test_bad_split_grammar_is_user_error(bad):
    with pytest.raises(UserError, match="split|bound"):
        parse_split(bad)


@pytest.mark.parametrize(
    "bounds, msg", [((None, "20000"), "outside"), (("150%", None), "over 100%"), (("5", "5"), "no")]
)
def test_out_of_range_split_is_user_error(bounds, msg):
    with pytest.raises(UserError, match=msg):
        resolve_slice(bounds, 10000)


def test_unknown_split_names_choices():
    with pytest.raises(UserError, match="no split 'validation'.*train, test"):
        load_dataset("digits", "validation")


def test_unknown_dataset_and_option():
    with pytest.raises(UserError, match="unknown dataset 'imagenet'.*mnist"):
        load_dataset("imagenet")
    with pytest.raises(UserError, match="unknown option 'sise'"):
        load_dataset("shapes", "test", sise=16)
    with pytest.raises(UserError, match="size: expected an integer"):
        load_dataset("shapes", "test", size="big")


def test_registry_has_every_dataset_of_the_contract():
    want = {"digits", "mnist", "fashion-mnist", "cifar10", "shapes", "folder", "npz"}
    assert want <= set(DATASETS.names())


# --------------------------------------------------------------------------- ImageData


def _toy(n=6):
    return ImageData(
        name="toy",
        images=np.arange(n * 4, dtype=np.uint8).reshape(n, 1, 2, 2),
        labels=np.arange(n, dtype=np.int64) % 3,
        factors=np.arange(n * 2, dtype=np.float64).reshape(n, 2),
        factor_names=("a", "b"),
        factor_kinds=("discrete", "continuous"),
        num_classes=3,
    )


def test_imagedata_shape_len_subset():
    d = _toy()
    assert d.shape == (1, 2, 2) and len(d) == 6
    s = d.subset([4, 1])
    assert s.labels.tolist() == [1, 1]
    assert s.factors[:, 0].tolist() == [8.0, 2.0]
    assert s.images[0, 0, 0, 0] == 16
    s.images[:] = 0  # a copy: the parent is untouched
    assert d.images[4, 0, 0, 0] == 16
    assert len(d.subset(d.labels == 0)) == 2


def test_imagedata_rejects_bad_arrays():
    with pytest.raises(ValueError, match="uint8"):
        ImageData("x", np.zeros((2, 1, 2, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="labels"):
        ImageData("x", np.zeros((2, 1, 2, 2), np.uint8), labels=np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="factor"):
        ImageData("x", np.zeros((2, 1, 2, 2), np.uint8), factors=np.zeros((2, 2)))


def test_loaded_data_is_a_copy_of_the_cache():
    a = load_dataset("digits", "test")
    first = a.images[0].copy()
    a.images[0] = 7
    b = load_dataset("digits", "test")
    assert np.array_equal(b.images[0], first)
    assert b.images.flags.writeable


# --------------------------------------------------------------------------- model space


def test_model_space_round_trip_all_levels():
    k = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    x0 = to_model_input(k)
    assert x0.dtype == torch.float32
    assert x0.min().item() == pytest.approx(1 / 256 - 1) and x0.max().item() < 1
    assert torch.allclose(x0.flatten()[1:] - x0.flatten()[:-1], torch.tensor(2 / 256))
    assert torch.equal(to_uint8(x0), k)
    assert torch.equal(
        to_uint8(torch.tensor([-3.0, 3.0])), torch.tensor([0, 255], dtype=torch.uint8)
    )


def test_model_input_accepts_read_only_numpy():
    a = np.full((2, 1, 3, 3), 255, dtype=np.uint8)
    a.flags.writeable = False
    assert torch.allclose(to_model_input(a), torch.full((2, 1, 3, 3), 1 - 1 / 256))
    with pytest.raises(TypeError):
        to_model_input(a.astype(np.float32))


def test_dequantise_stays_in_its_bin_and_is_uniform():
    k = torch.randint(0, 256, (4000, 1, 2, 2), generator=torch.Generator().manual_seed(0))
    k = k.to(torch.uint8)
    x = dequantise(k, torch.Generator().manual_seed(1))
    assert torch.equal(to_uint8(x), k)
    u = (x + 1) * 128 - k.float()  # the uniform offset in units of bins
    assert 0 <= u.min() and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.01 and abs(u.var().item() - 1 / 12) < 0.005
    again = dequantise(k, torch.Generator().manual_seed(1))
    assert torch.equal(x, again)


def test_bits_per_dim_and_batch():
    assert bits_per_dim(784 * math.log(2), 784) == pytest.approx(1.0)
    nats = torch.tensor([0.0, 3072 * math.log(2) * 3])
    assert torch.allclose(bits_per_dim(nats, 3072), torch.tensor([0.0, 3.0]))
    imgs = np.zeros((3, 1, 4, 4), np.uint8)
    b = make_batch(imgs, None)
    assert b["x0"].shape == (3, 1, 4, 4) and b["y"].tolist() == [-1, -1, -1]
    b = make_batch(imgs, np.array([2, 0, 1]))
    assert b["y"].dtype == torch.int64 and b["y"].tolist() == [2, 0, 1]


# --------------------------------------------------------------------------- digits


def test_digits_match_scikit_learn():
    from sklearn.datasets import load_digits

    d = load_digits()
    al = load_dataset("digits", "all")
    assert np.array_equal(al.images[:, 0], np.rint(d.images * 255 / 16).astype(np.uint8))
    assert np.array_equal(al.labels, d.target)


def test_digits_split_is_stratified_and_disjoint():
    tr, te, al = (load_dataset("digits", s) for s in ("train", "test", "all"))
    assert (len(tr), len(te), len(al)) == (1438, 359, 1797)
    assert tr.shape == (1, 8, 8) and tr.images.dtype == np.uint8
    assert tr.images.max() == 255 and tr.images.min() == 0
    # Every value is a 0..16 level scaled by 255/16 (so 17 distinct grey levels at most).
    assert set(np.unique(al.images)) <= {round(v * 255 / 16) for v in range(17)}
    counts_all, counts_te = np.bincount(al.labels), np.bincount(te.labels)
    assert np.array_equal(counts_te, np.floor(0.2 * counts_all + 0.5).astype(int))
    # train and test partition "all": joined they hold each image exactly once.
    both = np.concatenate([tr.images, te.images]).reshape(1797, -1)
    assert len(np.unique(both, axis=0)) == len(np.unique(al.images.reshape(1797, -1), axis=0))
    idx_te = holdout_indices(1797, "test", 0.2, 0, al.labels)
    assert np.array_equal(al.images[idx_te], te.images)


def test_split_slices_of_a_dataset():
    te = load_dataset("digits", "test")
    a, b = load_dataset("digits", "test[:300]"), load_dataset("digits", "test[300:]")
    assert (len(a), len(b)) == (300, 59)
    assert np.array_equal(np.concatenate([a.images, b.images]), te.images)
    assert len(load_dataset("digits", "train[:10%]")) == 144
    both = load_dataset("digits", "train+test")
    assert len(both) == 1797 and both.split == "train+test"


# --------------------------------------------------------------------------- shapes


def test_shapes_deterministic_factors_in_range():
    a = load_dataset("shapes", "train", n_train=300, size=16, seed=3)
    b = load_dataset("shapes", "train", n_train=300, size=16, seed=3)
    c = load_dataset("shapes", "train", n_train=300, size=16, seed=4)
    t = load_dataset("shapes", "test", n_test=300, size=16, seed=3)
    assert a.shape == (1, 16, 16) and len(a) == 300
    assert np.array_equal(a.images, b.images) and np.array_equal(a.factors, b.factors)
    assert not np.array_equal(a.images, c.images) and not np.array_equal(a.images, t.images)
    assert a.factor_names == ("shape", "scale", "x", "y", "rotation", "intensity")
    assert a.factor_kinds[0] == "discrete" and set(a.factor_kinds[1:]) == {"continuous"}
    f = a.factors
    assert set(np.unique(f[:, 0])) == {0.0, 1.0, 2.0}
    assert np.array_equal(a.labels, f[:, 0].astype(np.int64)) and a.num_classes == 3
    for col, (lo, hi) in zip(range(1, 6), [(0.5, 1), (0, 1), (0, 1), (0, np.pi / 3), (0.5, 1)]):
        assert lo <= f[:, col].min() and f[:, col].max() <= hi
        assert f[:, col].max() - f[:, col].min() > 0.8 * (hi - lo)  # spread over the range
    # Peak brightness follows the intensity factor (shapes are large enough for a full pixel).
    assert np.allclose(a.images.max(axis=(1, 2, 3)), np.rint(255 * f[:, 5]), atol=1)


@pytest.mark.parametrize("shape, area", [(0, 2.0), (1, math.pi), (2, 3 * math.sqrt(3) / 4)])
def test_shapes_area_matches_geometry(shape, area):
    # Anti-aliased coverage sums to the exact area of the shape in pixels (r = circumradius).
    size, scale = 64, 1.0
    f = np.array([[shape, scale, 0.3, 0.6, 0.4, 1.0]])
    img = render(f, size)
    r = scale * size / 4
    assert img.sum() / 255.0 == pytest.approx(area * r * r, rel=0.01)
    # Centre of mass at the centre for square and circle (the centroid, for the triangle).
    ys, xs = np.mgrid[:size, :size] + 0.5
    w = img[0, 0] / img.sum()
    cx, cy = size / 4 + 0.3 * size / 2, size / 4 + 0.6 * size / 2
    assert (w * xs).sum() == pytest.approx(cx, abs=0.05)
    assert (w * ys).sum() == pytest.approx(cy, abs=0.05)


def test_shapes_rotation_turns_the_square():
    f = np.array([[0, 1.0, 0.5, 0.5, 0.0, 1.0], [0, 1.0, 0.5, 0.5, np.pi / 4, 1.0]])
    a, b = render(f, 32)
    # Axis-aligned: the middle row is covered for 2 * half-side = sqrt(2) * r = 11.3 px;
    # at 45 degrees it is a diamond whose width at height d from the centre is 2 (r - d);
    # row 16 spans d in [0, 1] below the centre (16.0), so on average 2 (8 - 1/2) = 15 px.
    assert a[0, 16].sum() / 255 == pytest.approx(math.sqrt(2) * 8, abs=0.3)
    assert b[0, 16].sum() / 255 == pytest.approx(15, abs=0.3)


def test_shapes_bad_options():
    with pytest.raises(UserError, match="size >= 8"):
        load_dataset("shapes", "test", size=4)


# --------------------------------------------------------------------------- describe


def test_describe_texts():
    text = describe_datasets()
    for name in DATASETS.names():
        assert name in text
    assert "cifar-10-batches-bin" in text and "MNIST/raw" in text
    info = describe_dataset("shapes", n_train=30, n_test=12, size=8)
    assert "train: 30 images 1x8x8" in info and "test: 12 images" in info
    assert "rotation (continuous)" in info
    missing = describe_dataset("cifar10", root="/nonexistent-diffrep-dir")
    assert "train: MISSING" in missing and "diffrep data fetch cifar10" in missing


# --------------------------------------------------------------------------- real MNIST


def test_real_mnist_test_split_sizes(mnist_dir):
    root = mnist_dir.parent if mnist_dir.name == "mnist" else mnist_dir
    a = load_dataset("mnist", "test[:8000]", root=root)
    b = load_dataset("mnist", "test[8000:]", root=root)
    assert (len(a), len(b)) == (8000, 2000)
    assert a.shape == (1, 28, 28) and a.num_classes == 10
    full = np.concatenate([a.labels, b.labels])
    # The published MNIST test set class counts.
    assert np.bincount(full).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert a.images.max() == 255 and a.images.min() == 0
