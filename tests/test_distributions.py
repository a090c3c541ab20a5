"""Pixel likelihoods and Gaussian KLs against closed forms."""

import math

import pytest
import torch

from diffrep.distributions import (
    discretised_gaussian_log_prob,
    discretised_logistic_log_prob,
    gaussian_kl,
    gaussian_log_prob,
    pixel_log_prob,
    reparameterise,
)

BINS = (2 * torch.arange(256, dtype=torch.float64) + 1) / 256 - 1  # all 256 bin centres


@pytest.mark.parametrize("fn", [discretised_logistic_log_prob, discretised_gaussian_log_prob])
@pytest.mark.parametrize("mean,log_scale", [(0.0, -2.0), (0.9, -4.0), (-0.99, -6.5), (0.3, 1.0)])
def test_discretised_likelihood_sums_to_one(fn, mean, log_scale):
    x = BINS.view(256, 1)
    lp = fn(x, torch.full_like(x, mean), torch.full_like(x, log_scale))  # [256]
    assert torch.logsumexp(lp, 0).item() == pytest.approx(0.0, abs=1e-9)


def test_discretised_gaussian_matches_cdf_difference():
    normal = torch.distributions.Normal(torch.tensor(0.1, dtype=torch.float64), 0.05)
    x = BINS[100:140].view(-1, 1)
    lp = discretised_gaussian_log_prob(
        x, torch.full_like(x, 0.1), torch.full_like(x, math.log(0.05))
    )
    ref = torch.log(normal.cdf(x + 1 / 256) - normal.cdf(x - 1 / 256)).squeeze(1)
    torch.testing.assert_close(lp, ref, rtol=1e-6, atol=1e-7)


def test_sharp_logistic_is_finite_far_in_the_tail():
    # A very sharp decoder far from the data must give a large finite NLL, never inf/nan.
    x = BINS[:1].view(1, 1).float()
    lp = discretised_logistic_log_prob(x, torch.tensor([[0.9]]), torch.tensor([[-7.0]]))
    assert torch.isfinite(lp).all() and lp.item() < -100


def test_gaussian_kl_closed_form_matches_monte_carlo():
    g = torch.Generator().manual_seed(0)
    mq, lq = torch.tensor([0.5, -1.0]), torch.tensor([-0.5, 0.3])
    mp, lp = torch.tensor([0.0, 0.2]), torch.tensor([0.1, -0.2])
    z = reparameterise(mq.expand(200_000, 2), lq.expand(200_000, 2), generator=g)
    mc = (gaussian_log_prob(z, mq, lq) - gaussian_log_prob(z, mp, lp)).mean()
    assert gaussian_kl(mq, lq, mp, lp).sum().item() == pytest.approx(mc.item(), abs=0.01)


def test_bernoulli_is_a_cross_entropy():
    x = torch.tensor([[[[-1.0, 1.0]]]])
    logits = torch.tensor([[[[0.0, 0.0]]]])
    assert pixel_log_prob("bernoulli", x, logits).item() == pytest.approx(2 * math.log(0.5))


def test_an_encoder_of_a_view_still_gives_a_bound_closed_form():
    """vae_vdm's and VDRL's bounds with a `view` encode v(x), not x: q(z | v(x)). In a linear
    Gaussian toy, p(z) = N(0, I), p(x | z) = N(a z, s^2) (diagonal), everything is closed form:
    log p(x) - ELBO(q) = KL(q || p(z | x)) >= 0 for any q, with equality for the exact posterior.
    The ELBO is assembled from the library's pieces (gaussian_kl, and gaussian_log_prob over
    reparameterised draws for its Monte-Carlo estimate)."""
    from diffrep.distributions import gaussian_kl, gaussian_log_prob, reparameterise

    torch.manual_seed(0)
    D, s2 = 6, 0.3
    a = torch.linspace(0.5, 2.0, D, dtype=torch.float64)
    x = torch.randn(4, D, dtype=torch.float64) * (a**2 + s2).sqrt()
    log_px = gaussian_log_prob(x, torch.zeros_like(x), (a**2 + s2).log().expand_as(x))
    post_var = 1 / (1 + a**2 / s2)

    def q_of(u):  # the exact posterior of an input u: the encoder's output on a view u = v(x)
        return post_var * a * u / s2, post_var.log().expand_as(u)

    def elbo(mean, logvar):  # E_q log N(x; a z, s^2) - KL(q || N(0, I)), in closed form
        rec = -0.5 * (math.log(2 * math.pi * s2) + ((x - a * mean) ** 2 + a**2 * logvar.exp()) / s2)
        return rec.sum(1) - gaussian_kl(mean, logvar, torch.zeros_like(x), torch.zeros_like(x)).sum(
            1
        )

    m0, lv0 = q_of(x)
    torch.testing.assert_close(elbo(m0, lv0), log_px, rtol=0, atol=1e-10)  # tight at v = id
    for shift in (0.1, 0.5, 2.0):  # views: the input moved
        m, lv = q_of(x + shift)
        gap = log_px - elbo(m, lv)
        assert (gap > 0).all()
        torch.testing.assert_close(gap, gaussian_kl(m, lv, m0, lv0).sum(1), rtol=1e-10, atol=1e-12)
    # the Monte-Carlo ELBO the methods compute (one z per draw) agrees with the closed form
    m, lv = q_of(x + 0.5)
    g = torch.Generator().manual_seed(1)
    z = reparameterise(m.expand(20000, 4, D), lv.expand(20000, 4, D), generator=g)
    log_lik = gaussian_log_prob(x, a * z, torch.full_like(z, math.log(s2)))
    kl = gaussian_kl(m, lv, torch.zeros_like(x), torch.zeros_like(x)).sum(1)
    mc = log_lik.mean(0) - kl
    assert (mc - elbo(m, lv)).abs().max() < 4 * log_lik.std(0).max() / 20000**0.5
