"""Domain FID / KID: the Frechet distance maths, and the domain network's behaviour on MNIST."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from diffrep.eval import fid
from diffrep.eval.fidnet import ensure_fidnet, fidnet_features, load_fidnet, sha256_file

REPO = Path(__file__).resolve().parents[1]


def _mnist_root() -> Path | None:
    for d in (os.environ.get("DIFFREP_DATA"), REPO.parent / "shared" / "data"):
        if d and (Path(d) / "mnist" / "t10k-images-idx3-ubyte.gz").is_file():
            return Path(d)
    return None


def _correlated(n, d, seed, shift=0.0):
    """n draws of one fixed correlated Gaussian in d dims (the mixing matrix depends on d only)."""
    a = np.random.default_rng(d).normal(size=(d, d)) / np.sqrt(d)
    return np.random.default_rng(seed).normal(size=(n, d)) @ a + shift


def test_frechet_distance_matches_torchmetrics():
    from torch import nn

    tm = pytest.importorskip("torchmetrics.image.fid")

    class Passthrough(nn.Module):  # features in, features out
        num_features = 16

        def forward(self, x):
            return x

    x, y = _correlated(600, 16, 0), _correlated(500, 16, 1, shift=0.3)
    metric = tm.FrechetInceptionDistance(feature=Passthrough())
    metric.update(torch.from_numpy(x), real=True)
    metric.update(torch.from_numpy(y), real=False)
    theirs = float(metric.compute())
    ours = fid.fid_from_features(x, y)
    print(f"FID ours {ours:.10f} torchmetrics {theirs:.10f}")
    assert ours == pytest.approx(theirs, rel=1e-8)
    assert ours > 0.5


def test_frechet_distance_gaussian_closed_form():
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2 ; identical stats: 0 exactly
    assert fid.frechet_distance([0.0], [[4.0]], [1.0], [[1.0]]) == pytest.approx(1.0 + 1.0)
    s = np.cov(_correlated(300, 8, 2), rowvar=False)
    assert fid.frechet_distance(np.zeros(8), s, np.zeros(8), s) == pytest.approx(0.0, abs=1e-9)


def test_few_samples_warn_and_stay_finite():
    x, y = _correlated(20, 64, 3), _correlated(20, 64, 4)  # singular covariances
    with pytest.warns(UserWarning, match="fewer|singular"):
        d = fid.fid_from_features(x, y)
    assert np.isfinite(d) and d > 0


def test_kid_matches_torchmetrics_and_is_unbiased():
    from torch import nn

    tm = pytest.importorskip("torchmetrics.image.kid")

    class Passthrough(nn.Module):
        def forward(self, x):
            return x

    x, y = _correlated(200, 8, 5), _correlated(200, 8, 6, shift=0.5)
    metric = tm.KernelInceptionDistance(feature=Passthrough(), subsets=1, subset_size=200)
    metric.update(torch.from_numpy(x), real=True)
    metric.update(torch.from_numpy(y), real=False)
    theirs = float(metric.compute()[0])
    ours, _ = fid.kid_from_features(x, y, subset_size=200, subsets=1)
    assert ours == pytest.approx(theirs, rel=1e-8)
    same, _ = fid.kid_from_features(_correlated(400, 8, 7), _correlated(400, 8, 8), 200, 20)
    assert abs(same) < 0.05 * ours  # same distribution: ~0, and can be negative (unbiased)


# --------------------------------------------------------------------------- domain network


@pytest.fixture(scope="module")
def mnist_net(tmp_path_factory):
    """(held-out images A, held-out images B, network, sha256, weights path, labelled train part).

    With MNIST's train images present, the network trains on train[:5000] and A, B are
    test[:5000], test[5000:]. Only the test set ships here, so otherwise it trains on
    test[7000:] and A, B are test[:3500], test[3500:7000]: a domain network must not have seen
    the images it compares (its features of its own training images differ from held-out ones).
    """
    root = _mnist_root()
    if root is None:
        pytest.skip("real MNIST not found (set DIFFREP_DATA)")
    from diffrep.data import load_dataset
    from diffrep.errors import UserError

    torch.set_num_threads(min(2, torch.get_num_threads()))
    test = load_dataset("mnist", "test", root=str(root))
    try:
        fit_on = load_dataset("mnist", "train[:5000]", root=str(root))
        a, b = test.subset(np.arange(5000)), test.subset(np.arange(5000, 10000))
    except UserError:
        fit_on = test.subset(np.arange(7000, 10000))
        a, b = test.subset(np.arange(3500)), test.subset(np.arange(3500, 7000))
    path = ensure_fidnet(fit_on, cache_dir=tmp_path_factory.mktemp("fidnet"), epochs=3)
    net, sha = load_fidnet(path)
    return a, b, net, sha, path, fit_on


@pytest.mark.slow
def test_fidnet_cache_and_hash(mnist_net):
    a, b, net, sha, path, fit_on = mnist_net
    assert sha == sha256_file(path) and len(sha) == 64
    assert path.name.startswith("mnist-") and path.suffix == ".safetensors"
    # same data + settings: the cached file is reused, not retrained
    assert ensure_fidnet(fit_on, cache_dir=path.parent, epochs=3) == path
    # the classifier really learned the digits (held-out images)
    from diffrep.data import to_model_input

    with torch.no_grad():
        logits = net(to_model_input(torch.from_numpy(a.images)))
    acc = float((logits.argmax(1).numpy() == a.labels).mean())
    print(f"fidnet held-out accuracy {acc:.3f}")
    assert acc > 0.8  # 3000 training images, 3 epochs: ~0.86


@pytest.mark.slow
def test_noise_is_far_from_mnist(mnist_net):
    a, b, net, _, _, _ = mnist_net
    fa, fb = fidnet_features(net, a.images), fidnet_features(net, b.images)
    real_real = fid.fid_from_features(fa, fb)
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, size=b.images.shape, dtype=np.uint8)
    noise_real = fid.fid_from_features(fidnet_features(net, noise), fb)
    print(f"domain FID real/real {real_real:.3f}  noise/real {noise_real:.1f}")
    assert noise_real >= 50 * real_real


def _blur(images: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    if sigma == 0:
        return images
    out = gaussian_filter(images.astype(np.float64), sigma=(0, 0, sigma, sigma))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _noisy(images: np.ndarray, std: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = images.astype(np.float64) + rng.normal(scale=255 * std, size=images.shape)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


@pytest.mark.slow
@pytest.mark.parametrize(
    "corrupt, levels",
    [(_blur, (2.0, 1.5, 1.0, 0.5, 0.0)), (_noisy, (0.4, 0.2, 0.1, 0.05, 0.0))],
    ids=["blur", "noise"],
)
def test_fid_falls_as_corruption_shrinks(mnist_net, corrupt, levels):
    a, b, net, _, _, _ = mnist_net
    # random halves: MNIST test's first 5000 digits (cleaner writers) and last 5000 differ, and
    # a mild blur can move one towards the other; the claim is about one distribution.
    pool = np.concatenate([a.images, b.images])
    perm = np.random.default_rng(0).permutation(len(pool))
    half = len(pool) // 2
    ref = fidnet_features(net, pool[np.sort(perm[:half])])
    other = pool[np.sort(perm[half:])]
    scores = [fid.fid_from_features(ref, fidnet_features(net, corrupt(other, s))) for s in levels]
    print(corrupt.__name__, dict(zip(levels, np.round(scores, 3))))
    assert all(x > y for x, y in zip(scores, scores[1:])), scores
