"""The forward process in gamma: marginals, eps/x0/v/score round trips, the posterior."""

import pytest
import torch

from diffrep.diffusion import process as P

F64 = torch.float64


def _setup(B=5, gen=0):
    g = torch.Generator().manual_seed(gen)
    x0 = torch.randn(B, 2, 3, 3, generator=g, dtype=F64)
    eps = torch.randn(B, 2, 3, 3, generator=g, dtype=F64)
    gamma = torch.linspace(-12, 9, B, dtype=F64)
    return x0, eps, gamma


def test_alpha_sigma_variance_preserving_and_snr():
    gamma = torch.linspace(-20, 20, 41, dtype=F64)
    a, s = P.alpha_sigma(gamma)
    torch.testing.assert_close(a**2 + s**2, torch.ones_like(a))
    torch.testing.assert_close(a**2 / s**2, P.snr(gamma))
    la, ls = P.log_alpha2_sigma2(gamma)
    torch.testing.assert_close(la, torch.log(a**2))
    torch.testing.assert_close(ls, torch.log(s**2))
    a0, s0 = P.alpha_sigma(torch.tensor(float("-inf"), dtype=F64))
    assert a0 == 1 and s0 == 0


def test_q_sample_has_the_right_moments():
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((200_000,), 0.7, dtype=F64)
    gamma = torch.tensor(0.5, dtype=F64)
    z = P.q_sample(x0, gamma, torch.randn(x0.shape, generator=g, dtype=F64))
    a, s = P.alpha_sigma(gamma)
    assert abs(z.mean() - a * 0.7) < 4 * s / 200_000**0.5
    assert abs(z.var() / s**2 - 1) < 0.01


def test_prediction_round_trips():
    x0, eps, gamma = _setup()
    z = P.q_sample(x0, gamma, eps)
    torch.testing.assert_close(P.x0_from_eps(z, gamma, eps), x0)
    torch.testing.assert_close(P.eps_from_x0(z, gamma, x0), eps)
    v = P.v_from_eps(z, gamma, eps)
    a, s = P.alpha_sigma(gamma)
    torch.testing.assert_close(v, P._bc(a, z) * eps - P._bc(s, z) * x0)
    torch.testing.assert_close(P.eps_from_v(z, gamma, v), eps)
    torch.testing.assert_close(P.x0_from_v(z, gamma, v), x0)
    score = P.score_from_eps(z, gamma, eps)
    torch.testing.assert_close(P.eps_from_score(z, gamma, score), eps)
    # for a single x0 the score of q(z_t | x0) is -(z - alpha x0) / sigma^2
    torch.testing.assert_close(score, -(z - P._bc(a, z) * x0) / P._bc(s, z) ** 2)


def test_float32_inputs_keep_float32_and_precision():
    x0, eps, gamma = _setup()
    z = P.q_sample(x0.float(), gamma, eps.float())
    assert z.dtype == torch.float32
    torch.testing.assert_close(z.double(), P.q_sample(x0, gamma, eps), rtol=1e-6, atol=1e-6)


def test_posterior_matches_bayes_rule_in_ddpm_notation():
    """Ho et al. (2020) eqs. 6-7 with alpha_bar: mu~ and beta~ from the gammas of s < t."""
    x0, eps, _ = _setup()
    gamma_s = torch.linspace(-8, 2, 5, dtype=F64)
    gamma_t = gamma_s + torch.tensor([0.01, 0.3, 1.0, 4.0, 10.0], dtype=F64)
    z_t = P.q_sample(x0, gamma_t, eps)
    mean, var = P.posterior(z_t, x0, gamma_s, gamma_t)
    ab_s, ab_t = torch.sigmoid(-gamma_s), torch.sigmoid(-gamma_t)
    alpha = ab_t / ab_s  # 1 - beta for the step s -> t
    beta = 1 - alpha
    c0 = ab_s.sqrt() * beta / (1 - ab_t)
    ct = alpha.sqrt() * (1 - ab_s) / (1 - ab_t)
    bc = lambda c: c.reshape(-1, 1, 1, 1)  # noqa: E731
    torch.testing.assert_close(mean, bc(c0) * x0 + bc(ct) * z_t)
    torch.testing.assert_close(var, (1 - ab_s) / (1 - ab_t) * beta)


def test_posterior_to_the_data_is_a_point_mass():
    x0, eps, _ = _setup()
    gamma_t = torch.full((5,), -3.0, dtype=F64)
    gamma_s = torch.full((5,), float("-inf"), dtype=F64)
    mean, var = P.posterior(P.q_sample(x0, gamma_t, eps), x0, gamma_s, gamma_t)
    torch.testing.assert_close(mean, x0)
    assert (var == 0).all()


def test_posterior_is_the_conditional_of_the_joint_by_monte_carlo():
    """Sample z_s ~ q(z_s|x0), z_t ~ q(z_t|z_s); regress z_s on z_t: slope and residual var."""
    g = torch.Generator().manual_seed(3)
    n, x0 = 400_000, torch.tensor(0.4, dtype=F64)
    gs, gt = torch.tensor(-1.0, dtype=F64), torch.tensor(1.5, dtype=F64)
    (a_s, s_s), (a_t, s_t) = P.alpha_sigma(gs), P.alpha_sigma(gt)
    z_s = a_s * x0 + s_s * torch.randn(n, generator=g, dtype=F64)
    a_ts = a_t / a_s
    z_t = a_ts * z_s + (s_t**2 - a_ts**2 * s_s**2).sqrt() * torch.randn(n, generator=g, dtype=F64)
    c_z, c_x, var = P.posterior_coefficients(gs, gt)
    resid = z_s - (c_z * z_t + c_x * x0)
    assert abs(resid.mean()) < 5 * var.sqrt() / n**0.5
    assert abs(resid.var() / var - 1) < 0.01
    assert abs((resid * (z_t - z_t.mean())).mean()) < 0.003  # uncorrelated with z_t


@pytest.mark.parametrize("r", [1.0, 1.0 + 1e-9, 0.3, 4.0])
def test_normal_kl_matches_torch_distributions(r):
    g = torch.Generator().manual_seed(1)
    mq, mp = torch.randn(3, 4, generator=g, dtype=F64), torch.randn(3, 4, generator=g, dtype=F64)
    vq = torch.tensor([0.5, 1.0, 2.0], dtype=F64)
    vp = vq * r
    got = P.normal_kl(mq, vq, mp, vp)
    Q = torch.distributions.Normal(mq, vq.sqrt()[:, None].expand(3, 4))
    Pp = torch.distributions.Normal(mp, vp.sqrt()[:, None].expand(3, 4))
    want = torch.distributions.kl_divergence(Q, Pp).sum(1)
    torch.testing.assert_close(got, want)
