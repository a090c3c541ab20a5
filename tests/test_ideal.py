"""The ideal denoiser (seed 003: DAE(x) = sum_i P(x_i | x) x_i) and the memorisation check."""

from __future__ import annotations

import math

import pytest
import torch

from diffrep.diffusion.ideal import IdealDenoiser, memorisation, nearest_distances
from diffrep.diffusion.process import alpha_sigma
from diffrep.diffusion.schedules import FixedLinear
from diffrep.errors import UserError


def _train(n=12, shape=(1, 4, 4), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, *shape), generator=g) * 2 - 1


def _brute_force_x0(z, train, gamma):
    """E[x0 | z] by the textbook formula, float64, no tricks (seed 003, VDM eq. 1)."""
    z, x = z.double().flatten(1), train.double().flatten(1)
    a2, s2 = torch.sigmoid(-gamma.double()), torch.sigmoid(gamma.double())
    out = []
    for b in range(z.shape[0]):
        d2 = ((z[b][None] - a2[b].sqrt() * x) ** 2).sum(1)  # [N]
        logp = -d2 / (2 * s2[b])
        w = torch.exp(logp - logp.max())
        out.append((w[:, None] * x).sum(0) / w.sum())
    return torch.stack(out)


def test_matches_brute_force_float64_across_chunks():
    train = _train(n=13)
    sched = FixedLinear()
    ideal = IdealDenoiser(train, sched, chunk_size=4)  # 4 chunks, the last one partial
    g = torch.Generator().manual_seed(1)
    t = torch.tensor([0.6, 0.75, 0.8, 0.9])  # gamma = -2.3 .. 3.2
    z = torch.randn((4, 1, 4, 4), generator=g, dtype=torch.float64)
    got = ideal.x0(z, t)
    want = _brute_force_x0(z, train, sched(t)).reshape(got.shape)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    # and the weights are neither one-hot nor uniform at these t: a real mixture was tested
    assert (want - train.double().mean(0)).abs().max() > 1e-3
    d, _ = nearest_distances(want, train)
    assert d.min() > 1e-3


def test_tiny_noise_returns_nearest_training_image():
    train = _train(n=20)
    sched = FixedLinear(gamma_min=-13.3)
    ideal = IdealDenoiser(train, sched, chunk_size=7)
    t = torch.zeros(5)
    alpha, sigma = alpha_sigma(sched(t))
    assert sigma.max() < 2e-3
    # points near training images 3, 7, ... plus noise far larger than sigma but well inside
    # half the nearest-neighbour gap: the exact answer is the nearest image, bit for bit
    idx = torch.tensor([3, 7, 0, 19, 11])
    g = torch.Generator().manual_seed(2)
    z = alpha.view(-1, 1, 1, 1).float() * train[idx] + 0.05 * torch.randn((5, 1, 4, 4), generator=g)
    torch.testing.assert_close(ideal.x0(z, t), train[idx], rtol=0, atol=1e-6)
    # eps_model form: x_t = alpha x0_hat + sigma eps_hat
    eps = ideal(z, t)
    recon = alpha.view(-1, 1, 1, 1) * train[idx].double() + sigma.view(-1, 1, 1, 1) * eps.double()
    torch.testing.assert_close(recon.float(), z, rtol=0, atol=1e-5)


def test_huge_noise_returns_training_mean():
    train = _train(n=30)
    sched = FixedLinear(gamma_min=-13.3, gamma_max=25.0)  # alpha_1 ~ 4e-6
    ideal = IdealDenoiser(train, sched)
    z = torch.randn(6, 1, 4, 4)
    x0 = ideal.x0(z, torch.ones(6))
    torch.testing.assert_close(x0, train.mean(0).expand_as(x0), rtol=0, atol=1e-4)
    # a scalar t works too (samplers may pass one)
    torch.testing.assert_close(ideal.x0(z, 1.0), x0)


def test_bad_inputs_raise_user_errors():
    with pytest.raises(UserError, match="IdealDenoiser needs"):
        IdealDenoiser(torch.zeros(5), FixedLinear())
    ideal = IdealDenoiser(_train(), FixedLinear())
    with pytest.raises(UserError, match="shape"):
        ideal.x0(torch.zeros(2, 1, 5, 5), 0.5)
    with pytest.raises(UserError, match="quantile"):
        memorisation(_train(), _train(), _train(), quantile=1.5)


def _ddim(eps_model, schedule, x_T, steps):
    """Deterministic DDIM (Song et al. 2021, eq. 12 with eta = 0) written in gamma."""
    x = x_T
    ts = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    for t, s in zip(ts[:-1], ts[1:]):
        a_t, s_t = alpha_sigma(schedule(t))
        a_s, s_s = alpha_sigma(schedule(s))
        eps = eps_model(x, t.expand(x.shape[0]).float()).double()
        x0 = (x - s_t * eps) / a_t
        x = a_s * x0 + s_s * eps
    return x


@pytest.fixture(scope="module")
def digits_split():
    from diffrep.data import load_dataset, to_model_input

    d = load_dataset("digits", "all")
    x = to_model_input(d.images)  # [1797, 1, 8, 8]
    return x[:300], x[300:700], x[700:760]  # train, reference test, held-out "samples"


def test_sampling_with_the_ideal_denoiser_copies_training_images(digits_split):
    train, test, heldout = digits_split
    sched = FixedLinear()
    ideal = IdealDenoiser(train, sched)
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn((24, 1, 8, 8), generator=g, dtype=torch.float64)
    samples = _ddim(ideal, sched, x_T, steps=40).float()
    d, nn_idx = nearest_distances(samples, train)
    # near-copies: DDIM ends at z_0 = alpha_0 x_i + sigma_0 eps with sigma_0 = 1.3e-3, so
    # ||z_0 - x_i|| ~ sigma_0 sqrt(64) = 0.01; one 8-bit step on every pixel would be 0.0625,
    # the typical test-to-train distance is ~5
    assert d.max() < 0.03, d
    assert nn_idx.unique().numel() >= 12  # not one image over and over: many attractors
    report = memorisation(samples, train, test)
    assert report["copy_fraction"] == 1.0
    assert report["median_ratio"] < 0.01
    assert 0.03 <= report["test_copy_fraction"] <= 0.07  # the 5 % quantile, by definition
    # the library's stochastic ancestral sampler lands on training images too
    from diffrep.diffusion import samplers

    anc = samplers.ancestral(ideal, sched, x_T.float(), 40, generator=g)
    assert memorisation(anc, train, test)["copy_fraction"] == 1.0
    # real held-out digits are not flagged as copies
    real = memorisation(heldout, train, test)
    assert real["copy_fraction"] < 0.2
    assert 0.7 < real["median_ratio"] < 1.4
    assert math.isfinite(real["copy_threshold"]) and real["copy_threshold"] > 0.5
