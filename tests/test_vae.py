"""VAE maths: analytic KL, ELBO <= importance-weighted bound, Bernoulli labelled as no bound."""

import pytest
import torch

from diffrep.methods import build_method


def _x0(n=16, shape=(1, 8, 8), seed=0):
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(0, 256, (n, *shape), generator=g)
    return (2 * k.float() + 1) / 256 - 1


def test_analytic_kl_matches_monte_carlo_estimate():
    torch.manual_seed(0)
    m = build_method("vae", (1, 8, 8), latent_dim=4, width=8).eval()
    x0 = _x0(4)
    mean, logvar = m.posterior(x0)
    kl = m.prior.kl(mean, logvar)
    z = mean + torch.exp(0.5 * logvar) * torch.randn(50_000, *mean.shape)
    from diffrep.distributions import gaussian_log_prob

    nll_prior = m.prior.nll_terms(z.flatten(0, 1))["total"].view(50_000, -1)
    mc = (gaussian_log_prob(z, mean, logvar) + nll_prior).mean(0)
    torch.testing.assert_close(kl, mc, atol=0.05, rtol=0.02)


@pytest.mark.parametrize("prior", ["gaussian", "flow"])
def test_iw_bound_is_tighter_than_the_elbo(prior):
    torch.manual_seed(0)
    m = build_method("vae", (1, 8, 8), latent_dim=4, width=8, prior=prior).eval()
    x0 = _x0(32)
    elbo_nll = torch.stack([m.elbo(x0)["total"] for _ in range(20)]).mean(0)  # average out MC
    iw = m.nll_iw(x0, k=256)
    # -ELBO >= -IWAE bound >= -log p(x); tolerance for Monte Carlo error
    assert iw.mean().item() <= elbo_nll.mean().item() + 0.5


def test_bernoulli_decoder_is_not_a_bound_but_logistic_is():
    assert not build_method("vae", (1, 8, 8), likelihood="bernoulli").bound_is_valid
    assert build_method("vae", (1, 8, 8), likelihood="logistic").bound_is_valid
