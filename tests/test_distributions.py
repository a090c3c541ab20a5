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
