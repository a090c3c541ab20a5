"""The importance-weighted NLL with a diffusion prior is an upper bound that tightens with k.

Toy with a closed-form likelihood: a linear-Gaussian decoder x = W z + s eps under a DDPM
prior over z (T = 8, cosine schedule, posterior reverse variance) whose denoiser is the linear
eps_hat(z_t) = sigma_t z_t. Every reverse step is then linear-Gaussian,

    p(z_{i-1} | z_i) = N(m_i z_i, v_i I)   (i >= 2: the posterior mean with x0_hat = z_i (1 -
    sigma_i^2) / alpha_i, v_i = beta~_i;  i = 1: m_1 = (1 - sigma_1^2) / alpha_1, v_1 = beta_1),

so the prior's marginal is p(z0) = N(0, r I) with r from r_T = 1, r_{i-1} = m_i^2 r_i + v_i, and
-log p(x) = -log N(x; 0, r W W^T + s^2 I). The reverse variance beta~ makes the prior's bound
loose (q(z_{1:T} | z0) is not p(z_{1:T} | z0)), so the path weights are genuinely random.
Coefficients here are written in DDPM's alpha-bar notation (Ho et al. 2020, eqs. 6-7), not
with diffrep.diffusion.process, so the test checks the prior's maths independently.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffrep.data import to_model_input, to_uint8
from diffrep.distributions import gaussian_log_prob
from diffrep.eval.likelihood import iw_nll, iw_nll_per_example, plugin_iw_nll_not_a_bound
from diffrep.methods.base import Method
from diffrep.priors import build_prior

T = 8
ZD = 2
SHAPE = (1, 2, 2)
D = 4
S_NOISE = 0.3
NORMS = (1.0, 0.5)


class LinearEps(torch.nn.Module):
    """eps_hat(z_t, t) = sigma_t z_t, the optimal denoiser of N(0, I) latents."""

    def __init__(self, gammas: torch.Tensor):
        super().__init__()
        self.register_buffer("sigma", torch.sigmoid(gammas).sqrt().float())

    def forward(self, z, t, cond=None):
        i = torch.round(t * T).long()
        return self.sigma[i][:, None] * z


def marginal_variance(gammas: np.ndarray) -> float:
    """r with p(z0) = N(0, r I), in DDPM's notation (independent of diffrep's process)."""
    abar = 1 / (1 + np.exp(gammas))  # sigmoid(-gamma); abar_0 = 1
    r = 1.0
    for i in range(T, 0, -1):
        beta = 1 - abar[i] / abar[i - 1]
        x0_coef = (1 - (1 - abar[i])) / np.sqrt(abar[i])  # x0_hat = x0_coef z_i
        if i == 1:
            m, v = x0_coef, 1 - abar[1]
        else:
            c_x = np.sqrt(abar[i - 1]) * beta / (1 - abar[i])
            c_z = np.sqrt(1 - beta) * (1 - abar[i - 1]) / (1 - abar[i])
            m, v = c_z + c_x * x0_coef, (1 - abar[i - 1]) / (1 - abar[i]) * beta
        r = m * m * r + v
    return float(r)


class ToyVAE(Method):
    """x = W z + s eps with a DDPM prior over z; encoder: the exact posterior, widened."""

    def __init__(self, logvar_offset: float = 1.0):
        super().__init__(SHAPE)
        self.prior = build_prior(
            "diffusion", ZD, T=T, schedule="cosine", variance="beta_tilde"
        ).eval()
        self.prior.eps_model = LinearEps(self.prior.gammas)
        q, _ = torch.linalg.qr(torch.randn(D, ZD, generator=torch.Generator().manual_seed(0)))
        self.register_buffer("W", (q * torch.tensor(NORMS)).double())
        gammas = self.prior.gammas.double().numpy()
        gammas[0] = -np.inf
        self.r = marginal_variance(gammas)
        self.offset = logvar_offset

    def loss(self, batch):
        raise NotImplementedError

    def posterior(self, x0):
        x = x0.reshape(len(x0), -1).double()
        S = 1.0 / (1.0 / self.r + (self.W**2).sum(0) / S_NOISE**2)
        mean = S * (x @ self.W) / S_NOISE**2
        return mean.float(), (torch.log(S).expand_as(mean) + self.offset).float()

    def log_likelihood(self, x0, z):
        mean = z.double() @ self.W.T
        logvar = torch.full_like(mean, 2 * math.log(S_NOISE))
        return gaussian_log_prob(x0.reshape(len(x0), -1).double(), mean, logvar)

    def log_joint(self, x0, z):  # as VAE.log_joint: log p(x | z) + log p_hat(z)
        return self.log_likelihood(x0, z) + self.prior.log_p_hat(z)

    def true_nll(self, x0):
        cov = self.r * self.W @ self.W.T + S_NOISE**2 * torch.eye(D, dtype=torch.float64)
        dist = torch.distributions.MultivariateNormal(torch.zeros(D, dtype=torch.float64), cov)
        return -dist.log_prob(x0.reshape(len(x0), -1).double())


@pytest.fixture(scope="module")
def toy():
    torch.manual_seed(0)
    m = ToyVAE()
    g = torch.Generator().manual_seed(1)
    n = 300
    z = math.sqrt(m.r) * torch.randn(n, ZD, generator=g, dtype=torch.float64)
    x = z @ m.W.T + S_NOISE * torch.randn(n, D, generator=g, dtype=torch.float64)
    images = to_uint8(x.float().reshape(n, *SHAPE).clamp(-0.99, 0.99)).numpy()
    truth = m.true_nll(to_model_input(torch.from_numpy(images)))
    return m, images, truth


def test_path_weight_is_unbiased_for_the_prior_density():
    torch.manual_seed(0)
    m = ToyVAE()
    z0 = torch.tensor([[0.3, -1.2], [1.5, 0.4]])
    n = 40000
    logw = m.prior.log_p_hat(z0.repeat(n, 1)).view(n, 2)
    p_hat = torch.logsumexp(logw, 0) - math.log(n)  # log of the mean weight
    exact = -0.5 * (z0.double() ** 2 / m.r + math.log(2 * math.pi * m.r)).sum(1)
    assert torch.allclose(p_hat, exact, atol=0.025), (p_hat, exact)
    # its log is on average the (loose) bound the ELBO uses: E log w = -L(z0) < log p(z0)
    bound = m.prior.nll_terms(z0.repeat(n, 1), exact=True)["total"].view(n, 2).double()
    assert torch.allclose(-logw.mean(0), bound.mean(0), atol=0.03), (logw.mean(0), bound.mean(0))
    assert (-logw.mean(0) > -exact + 0.05).all()


def test_iw_nll_with_a_diffusion_prior_is_an_upper_bound_that_tightens_with_k(toy):
    m, images, truth = toy
    g = torch.Generator().manual_seed(2)
    torch.manual_seed(3)  # the prior's path noise
    gap, se = {}, {}
    for k in (1, 4, 16, 64, 256):
        per = iw_nll_per_example(m, images, k, batch_size=4096, generator=g) - truth.numpy()
        gap[k], se[k] = per.mean(), per.std(ddof=1) / math.sqrt(len(per))
    print({k: f"{gap[k]:.4f} +- {se[k]:.4f}" for k in gap})
    ks = sorted(gap)
    for k in ks:  # at or above the truth within 2 standard errors
        assert gap[k] > -2 * se[k], (k, gap[k], se[k])
    for a, b in zip(ks, ks[1:]):  # decreasing with k (within the noise of the difference)
        assert gap[b] < gap[a] + 2 * math.hypot(se[a], se[b]), (a, b, gap)
    assert gap[1] > gap[4] > gap[16] > gap[256] and gap[1] > 1.0
    out = iw_nll(m, images, k=4, batch_size=4096, generator=g)  # what evaluation reports
    assert out["nll_iw_latent_chain"] is True and out["nll_iw_k"] == 4
    assert out["nll_iw_nats"] - float(truth.mean()) == pytest.approx(gap[4], abs=6 * se[4])


def test_plugging_in_the_priors_bound_is_not_a_bound(toy):
    """The old estimator (the prior's step-wise bound inside eq. 8) falls below the truth."""
    m, images, truth = toy
    torch.manual_seed(4)
    plug = plugin_iw_nll_not_a_bound(
        m, images, k=256, batch_size=4096, generator=torch.Generator().manual_seed(5)
    )
    print(plug - float(truth.mean()))
    assert plug < float(truth.mean()) - 0.05
