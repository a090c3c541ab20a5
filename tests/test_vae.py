"""VAE maths: analytic KL, the importance-weighted NLL against the ELBO, Bernoulli is no bound."""

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
def test_iw_nll_is_the_elbo_at_k1_and_tighter_at_k64(prior):
    """The IW-NLL that evaluation runs (`iw_nll`): k = 1 is the -ELBO in expectation (the
    analytic-KL ELBO here, a single-sample one there), and k = 64 is clearly below it."""
    from diffrep.data import to_uint8
    from diffrep.eval.likelihood import iw_nll_per_example

    torch.manual_seed(0)
    m = build_method("vae", (1, 8, 8), latent_dim=4, width=8, prior=prior).eval()
    x0 = _x0(64)
    images = to_uint8(x0).numpy()
    elbo_nll = torch.stack([m.elbo(x0)["total"] for _ in range(50)]).mean(0).double().numpy()
    g = torch.Generator().manual_seed(1)
    d1 = iw_nll_per_example(m, images, 1, generator=g) - elbo_nll
    d64 = iw_nll_per_example(m, images, 64, generator=g) - elbo_nll
    se1, se64 = (d.std(ddof=1) / len(d) ** 0.5 for d in (d1, d64))
    print(d1.mean(), se1, d64.mean(), se64)
    assert abs(d1.mean()) < 3 * se1 + 0.02
    assert d64.mean() < -3 * se64 - 0.1


def test_bernoulli_decoder_is_not_a_bound_but_logistic_is():
    assert not build_method("vae", (1, 8, 8), likelihood="bernoulli").bound_is_valid
    assert build_method("vae", (1, 8, 8), likelihood="logistic").bound_is_valid
