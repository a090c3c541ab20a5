"""Latent priors (seed 004): exactness, bounds, KL/entropy closed forms, sampling moments.

The reference distribution is a correlated 2-D Gaussian z ~ N(m, L L^T) with L = [[3, 0],
[2, 4]]: its entropy H = log(2 pi e) + log det L = 2.838 + 2.485 = 5.32 nats is far from 0, so
"within 2% of H" (0.11 nats) is a real requirement and not a tolerance around zero.
"""

from __future__ import annotations

import math
import sys

import pytest
import torch

from diffrep.data import to_uint8
from diffrep.distributions import gaussian_log_prob
from diffrep.errors import UserError
from diffrep.eval.likelihood import iw_nll_per_example
from diffrep.priors import PRIORS, build_prior, fit_prior, swap_prior

M = torch.tensor([1.0, -0.5])
L = torch.tensor([[3.0, 0.0], [2.0, 4.0]])
S = L @ L.T
TARGET = torch.distributions.MultivariateNormal(M, S)
H = 0.5 * torch.logdet(2 * math.pi * math.e * S).item()  # 5.3228 nats


def _target(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return M + torch.randn(n, 2, generator=g) @ L.T


def _check_moments(s: torch.Tensor, rel: float) -> None:
    std = S.diag().sqrt()
    assert ((s.mean(0) - M).abs() / std).max() < 0.1, s.mean(0)
    err = (torch.cov(s.T) - S).norm() / S.norm()
    assert err < rel, torch.cov(s.T)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ------------------------------------------------------------------ gaussian


def test_gaussian_nll_is_standard_normal_density():
    p = build_prior("gaussian", 3)
    z = torch.randn(5, 3)
    ref = -torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    torch.testing.assert_close(p.nll_terms(z)["total"], ref)
    assert p.exact and p.bound_is_valid


def test_gaussian_kl_matches_monte_carlo_and_entropy_closed_form():
    p = build_prior("gaussian", 4)
    mean = torch.tensor([[0.5, -1.0, 2.0, 0.0]])
    logvar = torch.tensor([[-1.0, 0.5, 0.0, -3.0]])
    n = 200_000
    z = mean + torch.exp(0.5 * logvar) * torch.randn(n, 4)
    log_q = gaussian_log_prob(z, mean.expand(n, 4), logvar.expand(n, 4))
    # E_q[log q - log p] (what the VAE estimates for learned priors) vs the analytic KL
    mc = log_q + p.nll_terms(z)["total"]
    kl = p.kl(mean, logvar).item()  # 0.5 * sum(m^2 + e^lv - 1 - lv) = 3.9082
    assert abs(mc.mean().item() - kl) < 4 * mc.std().item() / math.sqrt(n)
    assert abs(kl - 3.9082) < 1e-3
    # entropy of q: 0.5 * sum(1 + log 2 pi + logvar)
    entropy = 0.5 * (1 + math.log(2 * math.pi) + logvar).sum().item()
    assert abs(-log_q.mean().item() - entropy) < 4 * log_q.std().item() / math.sqrt(n)


def test_kl_terms_are_analytic_where_they_can_be_else_a_single_sample_estimate():
    """Prior.kl_terms, what vae and vae_vdm put in their ELBO: the closed form for the Gaussian
    prior; for a prior without one, log q(z|x) + nll(z), whose mean is the same closed form."""
    from diffrep.priors.base import Prior

    p = build_prior("gaussian", 4)
    mean = torch.tensor([[0.5, -1.0, 2.0, 0.0]])
    logvar = torch.tensor([[-1.0, 0.5, 0.0, -3.0]])
    kl, dims, own = p.kl_terms(torch.zeros(1, 4), mean, logvar)
    assert torch.equal(dims, p.kl_per_dim(mean, logvar)) and torch.equal(kl, dims.sum(-1))
    assert own == {} and abs(kl.item() - 3.9082) < 1e-3

    class NoClosedForm(type(p)):  # the same density, its KL only by sampling
        kl, kl_per_dim = Prior.kl, Prior.kl_per_dim

    n = 200_000
    z = mean + torch.exp(0.5 * logvar) * torch.randn(n, 4)
    mc, dims, own = NoClosedForm(4).kl_terms(z, mean.expand(n, 4), logvar.expand(n, 4))
    assert dims is None and own == {} and mc.shape == (n,)
    assert abs(mc.mean().item() - 3.9082) < 4 * mc.std().item() / math.sqrt(n)
    diffusion = build_prior("diffusion", 4, T=50, hidden=16, depth=1)
    _, dims, own = diffusion.kl_terms(z[:8], mean.expand(8, 4), logvar.expand(8, 4))
    assert dims is None and set(own) == {"L_T", "diffusion", "L_0"}  # named in the loss's terms


def test_gaussian_sample_uses_generator():
    p = build_prior("gaussian", 3)
    a = p.sample(4, torch.Generator().manual_seed(1))
    b = p.sample(4, torch.Generator().manual_seed(1))
    assert a.shape == (4, 3) and torch.equal(a, b)


# ------------------------------------------------------------------ flow


@pytest.fixture(scope="module")
def fitted_flow():
    torch.manual_seed(0)
    p = build_prior("flow", 2, hidden=(32, 32))
    losses = fit_prior(
        p, _target(20000, 0), 400, lr=1e-2, generator=torch.Generator().manual_seed(0)
    )
    return p, losses


def test_flow_density_is_exact_and_normalised(fitted_flow):
    p, _ = fitted_flow
    assert p.exact and p.bound_is_valid
    g = torch.linspace(-16, 16, 401)
    dx = (g[1] - g[0]).item()
    X, Y = torch.meshgrid(g, g, indexing="ij")
    with torch.no_grad():
        dens = torch.exp(-p.nll_terms(torch.stack([X.flatten(), Y.flatten()], 1))["total"])
    assert abs(dens.sum().item() * dx * dx - 1.0) < 2e-3


def test_flow_fits_gaussian_entropy_and_moments(fitted_flow):
    p, losses = fitted_flow
    z = _target(20000, 1)
    with torch.no_grad():
        excess = p.nll_terms(z)["total"] + TARGET.log_prob(z)  # KL(target || flow) per sample
        s = p.sample(20000, torch.Generator().manual_seed(2))
    assert -0.01 < excess.mean().item() < 0.03, excess.mean()
    assert abs(losses[-1] - H) / H < 0.05
    _check_moments(s, rel=0.08)


def test_flow_without_zuko_is_a_user_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "zuko", None)
    with pytest.raises(UserError, match=r"pip install diffrep\[flow\]"):
        build_prior("flow", 2)


# ------------------------------------------------------------------ diffusion


class OptimalEps(torch.nn.Module):
    """E[eps | z_i] for z0 ~ N(M, S): s_i (a_i^2 S + s_i^2 I)^-1 (z_i - a_i M) (closed form)."""

    def __init__(self, prior):
        super().__init__()
        self.T, self.gammas = prior.T, prior.gammas

    def forward(self, z, t):
        g = self.gammas[(t * self.T).round().long()]
        a, s = torch.sigmoid(-g).sqrt()[:, None, None], torch.sigmoid(g).sqrt()[:, None, None]
        C = a**2 * S.double() + s**2 * torch.eye(2, dtype=torch.float64)
        r = (z.double() - a[:, :, 0] * M.double())[:, :, None]
        return (s * torch.linalg.solve(C, r))[:, :, 0].float()


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_diffusion_bound_with_optimal_denoiser_is_valid_and_tight(schedule):
    """For Gaussian data the optimal reverse steps are Gaussian with variance ~beta_i, so the
    bound with sigma_i^2 = beta_i is nearly tight; beta_tilde gives a looser, still valid one."""
    z = _target(3000, 3)
    gaps = {}
    for variance in ("beta", "beta_tilde"):
        p = build_prior("diffusion", 2, T=100, schedule=schedule, variance=variance).eval()
        p.eps_model = OptimalEps(p)
        gap = p.nll_terms(z)["total"] + TARGET.log_prob(z)  # bound - (-log p(z)) per sample
        se = gap.std().item() / math.sqrt(len(z))
        gaps[variance] = gap.mean().item()
        assert gaps[variance] > -3 * se  # a bound: never below -log p(z) on average
    assert gaps["beta"] < 0.1
    assert gaps["beta_tilde"] > gaps["beta"] + 0.5


def test_diffusion_training_estimate_is_unbiased_for_the_exact_sum():
    p = build_prior("diffusion", 2, T=100)
    p.eps_model = OptimalEps(p)
    z = _target(500, 4)
    exact = p.eval().nll_terms(z)["total"].mean().item()
    p.train()
    est = torch.stack([p.nll_terms(z)["total"] for _ in range(40)])  # [40, 500]
    se = est.std().item() / math.sqrt(est.numel())
    assert abs(est.mean().item() - exact) < 4 * se + 0.1, (est.mean(), exact, se)


@pytest.fixture(scope="module")
def fitted_diffusion():
    torch.manual_seed(0)
    p = build_prior("diffusion", 2, T=100, hidden=64, depth=2, emb_dim=32)
    fit_prior(p, _target(20000, 0), 400, lr=1e-2, generator=torch.Generator().manual_seed(0))
    return p


def test_trained_diffusion_bound_within_2_percent_of_entropy(fitted_diffusion):
    z = _target(3000, 5)
    with torch.no_grad():
        bound = fitted_diffusion.nll_terms(z)["total"]
        gap = bound + TARGET.log_prob(z)
    se = gap.std().item() / math.sqrt(len(z))
    print(f"H={H:.4f} bound={bound.mean().item():.4f} gap={gap.mean().item():.4f}+-{se:.4f}")
    assert gap.mean().item() > -3 * se
    assert gap.mean().item() < 0.02 * H


def test_trained_diffusion_ancestral_samples_have_target_moments(fitted_diffusion):
    s = fitted_diffusion.sample(4000, torch.Generator().manual_seed(6))
    _check_moments(s, rel=0.15)


def test_ddim_with_optimal_denoiser_has_target_moments():
    # (With the briefly trained net above DDIM over-disperses: the bound weights large-t
    # steps lightly, and the deterministic sampler, unlike the ancestral one, keeps those errors.)
    p = build_prior("diffusion", 2, T=100)
    p.eps_model = OptimalEps(p)
    _check_moments(p.sample(8000, torch.Generator().manual_seed(7), sampler="ddim"), rel=0.08)


def test_diffusion_options_and_validity_flags():
    assert build_prior("diffusion", 2, T=50).bound_is_valid
    simple = build_prior("diffusion", 2, T=50, objective="simple")
    assert not simple.bound_is_valid and not simple.exact
    z = torch.randn(8, 2)
    assert set(simple.train().nll_terms(z)) == {"total", "simple"}
    terms = simple.eval().nll_terms(z)  # evaluation always reports the true bound's terms
    torch.testing.assert_close(terms["total"], terms["L_T"] + terms["diffusion"] + terms["L_0"])
    assert simple.sample(3, sampler="ddim", steps=5).shape == (3, 2)
    with pytest.raises(UserError):
        build_prior("diffusion", 2, objective="elbo")
    with pytest.raises(UserError):
        build_prior("diffusion", 2, T=1)
    with pytest.raises(UserError):
        simple.sample(2, sampler="euler")
    with pytest.raises(UserError):
        build_prior("nope", 2)


def test_registry_lists_the_three_priors():
    assert PRIORS.names() == ["diffusion", "flow", "gaussian"]


# ------------------------------------------------------------------ two-stage and the VAE


def test_fit_prior_on_aggregate_posterior_and_errors():
    p = build_prior("flow", 2, hidden=(16, 16))
    mean, logvar = _target(512, 7), torch.full((512, 2), -2.0)
    losses = fit_prior(p, (mean, logvar), 20, lr=1e-2)
    assert len(losses) == 20 and losses[-1] < losses[0]
    with pytest.raises(UserError, match="latent"):
        fit_prior(p, torch.randn(10, 3), 5)


def _digits_x0(n: int) -> torch.Tensor:
    datasets = pytest.importorskip("sklearn.datasets")
    x = torch.tensor(datasets.load_digits().images[:n], dtype=torch.float32)  # 0..16
    k = (x / 16 * 255).round()
    return ((2 * k + 1) / 256 - 1)[:, None]  # model space, [n, 1, 8, 8]


@pytest.mark.parametrize("prior", ["gaussian", "flow", "diffusion"])
def test_vae_elbo_is_below_importance_weighted_estimate(prior):
    from diffrep.methods import build_method

    args = {"gaussian": {}, "flow": {"hidden": [16, 16]}, "diffusion": {"T": 50, "hidden": 32}}
    vae = build_method("vae", (1, 8, 8), latent_dim=2, width=8, prior=prior, prior_args=args[prior])
    x = _digits_x0(256)
    opt = torch.optim.Adam(vae.parameters(), lr=2e-3)
    for step in range(30):
        loss = vae.loss({"x0": x[(step % 4) * 64 :][:64]})["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    vae.eval()
    xb = x[:32]
    neg_elbo = torch.stack([vae.elbo(xb)["total"] for _ in range(4)]).mean(0).double().numpy()
    images = to_uint8(xb).numpy()
    g = torch.Generator().manual_seed(0)
    # k = 1 is the -ELBO in expectation (for the diffusion prior: one latent path per sample)
    d1 = neg_elbo - iw_nll_per_example(vae, images, 1, generator=g)
    se1 = d1.std() / math.sqrt(len(d1))
    assert abs(d1.mean()) < 3 * se1 + 0.05, (d1.mean(), se1)
    diff = neg_elbo - iw_nll_per_example(vae, images, 64, generator=g)  # >= 0 up to MC error
    se = diff.std() / math.sqrt(len(diff))
    assert diff.mean() > -3 * se - 0.05, (diff.mean(), se)
    assert vae.bound_is_valid


def test_swap_prior_replaces_the_prior_in_a_copy():
    from diffrep.methods import build_method

    vae = build_method("vae", (1, 8, 8), latent_dim=2, width=8)
    flow = build_prior("flow", 2, hidden=(8, 8))
    swapped = swap_prior(vae, flow)
    assert swapped.prior is flow and vae.prior.registry_name == "gaussian"
    assert swapped.sample(3).shape == (3, 1, 8, 8)
    simple = build_prior("diffusion", 2, T=50, objective="simple")
    assert not swap_prior(vae, simple).bound_is_valid
    with pytest.raises(UserError, match="latent"):
        swap_prior(vae, build_prior("gaussian", 3))
