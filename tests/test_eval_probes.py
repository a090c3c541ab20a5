"""Probes: they read factors and labels out of features that contain them, and not out of noise."""

from __future__ import annotations

import numpy as np
import pytest

from diffrep.eval import probes


@pytest.fixture(scope="module")
def shapes():
    from diffrep.data import load_dataset

    tr = load_dataset("shapes", "train[:2000]")
    te = load_dataset("shapes", "test[:1000]")
    return tr, te


def test_factor_probe_recovers_true_factors(shapes):
    tr, te = shapes
    res = probes.factor_probes(
        tr.factors, tr.factors, te.factors, te.factors, tr.factor_names, tr.factor_kinds
    )
    print(res)
    assert set(res) == set(tr.factor_names)
    for name, kind in zip(tr.factor_names, tr.factor_kinds):
        if kind == "continuous":
            assert res[name]["r2"] > 0.99
        else:
            assert res[name]["acc"] > 0.99


def test_factor_probe_finds_nothing_in_noise(shapes):
    tr, te = shapes
    rng = np.random.default_rng(0)
    noise_tr, noise_te = rng.normal(size=(len(tr), 16)), rng.normal(size=(len(te), 16))
    res = probes.factor_probes(
        noise_tr, tr.factors, noise_te, te.factors, tr.factor_names, tr.factor_kinds
    )
    print(res)
    for name, kind in zip(tr.factor_names, tr.factor_kinds):
        if kind == "continuous":
            assert res[name]["r2"] < 0.05
        else:
            assert res[name]["acc"] < 0.45  # 3 shapes: chance is 1/3


def test_linear_knn_and_few_label_on_informative_vs_noise(shapes):
    tr, te = shapes
    rng = np.random.default_rng(1)

    # a representation that holds the label in 2 of 10 noisy dimensions
    def feats(y):
        f = rng.normal(size=(len(y), 10))
        f[:, 0] += 3 * np.cos(2 * np.pi * y / 3)
        f[:, 1] += 3 * np.sin(2 * np.pi * y / 3)
        return f

    f_tr, f_te = feats(tr.labels), feats(te.labels)
    lin = probes.linear_probe(f_tr, tr.labels, f_te, te.labels)
    knn = probes.knn_probe(f_tr, tr.labels, f_te, te.labels, k=20)
    few = probes.few_label_probe(f_tr, tr.labels, f_te, te.labels, (10, 100, 1000), draws=3)
    noise = probes.linear_probe(
        rng.normal(size=f_tr.shape), tr.labels, rng.normal(size=f_te.shape), te.labels
    )
    print(lin, knn, few, noise)
    assert lin["linear_acc"] > 0.9 and knn["knn_acc"] > 0.8
    assert noise["linear_acc"] < 0.45
    assert set(few["few_label_acc"]) == {"10", "100", "1000"}
    assert few["few_label_acc"]["1000"] > 0.9
    assert few["few_label_acc"]["10"] < few["few_label_acc"]["1000"] + 0.02
    assert all(s >= 0 for s in few["few_label_acc_std"].values())


def test_balanced_draw_is_balanced():
    y = np.repeat(np.arange(10), 50)
    idx = probes.balanced_draw(y, 100, np.random.default_rng(0))
    assert len(np.unique(idx)) == 100
    assert np.all(np.bincount(y[idx], minlength=10) == 10)


def test_tsne_of_collapsed_codes_is_finite():
    # identical codes (a collapsed encoder) used to crash scikit-learn's Barnes-Hut tree
    assert np.array_equal(probes.tsne_embed(np.full((50, 4), 0.3)), np.zeros((50, 2)))
    rng = np.random.default_rng(0)
    tiny = 1e-9 * rng.normal(size=(60, 4)) + np.array([1.0, 0, 0, 0])  # barely varying codes
    emb = probes.tsne_embed(tiny)
    assert emb.shape == (60, 2) and np.isfinite(emb).all() and emb.std() > 0


def test_tsne_separates_clusters():
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=10, size=(3, 8))
    y = np.repeat(np.arange(3), 60)
    emb = probes.tsne_embed(centres[y] + rng.normal(size=(180, 8)), seed=0)
    assert emb.shape == (180, 2)
    from sklearn.neighbors import KNeighborsClassifier

    # clusters stay clusters in 2-D: a 5-NN vote on the embedding recovers the labels
    acc = KNeighborsClassifier(5).fit(emb[::2], y[::2]).score(emb[1::2], y[1::2])
    assert acc > 0.95
