"""Objectives against closed forms: Gaussian entropy, Ho et al.'s bound computed directly."""

import math

import pytest
import torch

from diffrep.diffusion import objectives as O
from diffrep.diffusion.gaussian import analytic_gaussian_eps_model, gaussian_entropy_nats
from diffrep.diffusion.process import alpha_sigma
from diffrep.diffusion.schedules import build_schedule
from diffrep.errors import UserError

F64 = torch.float64


def test_vdm_elbo_with_the_analytic_denoiser_is_the_gaussian_entropy():
    """For x ~ N(mu, s2 I) the optimal denoiser is analytic, and with it the continuous-time
    VDM bound is tight up to the endpoint gaps, so E[-ELBO] / D -> h = 1/2 log(2 pi e s2).

    Continuous data, so the decoder term is the continuous Gaussian density (a discrete
    256-bin decoder would bound -log P(k) of *quantised* data instead, whose optimal denoiser
    is not the Gaussian one). gamma in [-6, 6]: sigma_0/alpha_0 = 0.05 << s = 1 (the decoder at
    the exact posterior mean loses ~1e-4 nats) and alpha_1^2 = 0.0025 (prior KL ~1e-3 nats).
    The estimator's noise is the chi-square noise of ||eps - eps_hat||^2 (std ~6 nats per
    value), so 2^21 values give a standard error of 0.004 nats = 0.3 % of h.
    """
    mu, s2, B, D = 0.5, 1.0, 16384, 128
    h = gaussian_entropy_nats(s2)  # 1.4189 nats = 2.047 bits per dim
    sched = build_schedule("vdm-linear", gamma_min=-6.0, gamma_max=6.0)
    model = analytic_gaussian_eps_model(mu, s2, sched)
    g = torch.Generator().manual_seed(0)
    x0 = mu + math.sqrt(s2) * torch.randn(B, D, generator=g, dtype=F64)
    terms = O.vdm_elbo(model, sched, x0, decoder="gaussian", generator=g)
    for v in terms.values():
        assert v.shape == (B,) and torch.isfinite(v).all()
    bpd = terms["total"].mean().item() / (D * math.log(2))
    h_bits = h / math.log(2)
    print(f"VDM ELBO {bpd:.4f} bits/dim vs entropy {h_bits:.4f} ({bpd / h_bits - 1:+.3%})")
    assert abs(bpd / h_bits - 1) < 0.01
    # the terms are what the closed forms say
    a1, _ = alpha_sigma(torch.tensor(6.0, dtype=F64))
    prior_want = 0.5 * (a1**2 * (s2 + mu**2 - 1) - torch.log(torch.sigmoid(torch.tensor(6.0))))
    assert abs(terms["prior"].mean().item() / D - prior_want.item()) < 1e-3


def _linear_eps_model(D):
    """A fixed, deliberately imperfect denoiser that depends on x and t."""
    g = torch.Generator().manual_seed(7)
    W = 0.3 * torch.randn(D, D, generator=g, dtype=F64)

    def eps_model(z, t):
        return torch.tanh(z @ W) * (1 - t[:, None]) + 0.5 * z * t[:, None]

    return eps_model


def _ho_bound(eps_model, betas, x0, g, reverse_var):
    """Ho et al. (2020) eq. 5 in their own notation, with torch.distributions."""
    N = torch.distributions.Normal
    T, B = betas.numel(), x0.shape[0]
    alphas = 1 - betas
    ab = torch.cumprod(alphas, 0)  # alpha_bar_t, t = 1..T at index t - 1

    def x_t(t, eps):
        return ab[t - 1].sqrt() * x0 + (1 - ab[t - 1]).sqrt() * eps

    def mu_theta(xt, t):
        e = eps_model(xt, torch.full((B,), t / T, dtype=F64))
        return (xt - betas[t - 1] / (1 - ab[t - 1]).sqrt() * e) / alphas[t - 1].sqrt()

    # L_0: discretised Gaussian N(mu_theta(x_1, 1), beta_1) over 256 bins, edge bins open
    x1 = x_t(1, torch.randn(x0.shape, generator=g, dtype=F64))
    p0 = N(mu_theta(x1, 1), betas[0].sqrt())
    hi = torch.where(x0 > 1 - 2 / 256, torch.ones_like(x0), p0.cdf(x0 + 1 / 256))
    lo = torch.where(x0 < -1 + 2 / 256, torch.zeros_like(x0), p0.cdf(x0 - 1 / 256))
    L0 = -torch.log(hi - lo).sum(1)
    Lt = torch.zeros(B, dtype=F64)
    for t in range(2, T + 1):
        xt = x_t(t, torch.randn(x0.shape, generator=g, dtype=F64))
        mean_q = (
            ab[t - 2].sqrt() * betas[t - 1] / (1 - ab[t - 1]) * x0
            + alphas[t - 1].sqrt() * (1 - ab[t - 2]) / (1 - ab[t - 1]) * xt
        )
        beta_tilde = (1 - ab[t - 2]) / (1 - ab[t - 1]) * betas[t - 1]
        var_p = beta_tilde if reverse_var == "posterior" else betas[t - 1]
        kl = torch.distributions.kl_divergence(
            N(mean_q, beta_tilde.sqrt()), N(mu_theta(xt, t), var_p.sqrt())
        )
        Lt = Lt + kl.sum(1)
    LT = torch.distributions.kl_divergence(N(ab[-1].sqrt() * x0, (1 - ab[-1]).sqrt()), N(0, 1))
    return L0, Lt, LT.sum(1)


@pytest.mark.parametrize("reverse_var", ["posterior", "beta"])
def test_ddpm_true_bound_equals_a_direct_computation(reverse_var):
    T, B, D = 6, 5, 4
    sched = build_schedule("ddpm-linear", T=T, beta_1=0.01, beta_T=0.4)
    model = _linear_eps_model(D)
    k = torch.randint(0, 256, (B, D), generator=torch.Generator().manual_seed(1))
    x0 = ((2 * k + 1) / 256 - 1).to(F64)
    got = O.ddpm_bound(
        model, sched, T, x0, exact=True, reverse_var=reverse_var,
        generator=torch.Generator().manual_seed(3),
    )  # fmt: skip
    L0, Lt, LT = _ho_bound(model, sched.betas, x0, torch.Generator().manual_seed(3), reverse_var)
    torch.testing.assert_close(got["recon"], L0)
    torch.testing.assert_close(got["diffusion"], Lt)
    torch.testing.assert_close(got["prior"], LT)
    torch.testing.assert_close(got["total"], L0 + Lt + LT)
    assert (Lt > 0).all()


def test_sampled_bound_is_an_unbiased_estimate_of_the_exact_sum():
    T, B, D, R = 8, 4, 3, 4000
    sched = build_schedule("cosine", T=T)
    model = _linear_eps_model(D)
    x0 = torch.linspace(-0.9, 0.9, B * D, dtype=F64).reshape(B, D)
    xr = x0.repeat(R, 1)  # R replicas of each example
    g = torch.Generator().manual_seed(0)
    exact = O.ddpm_bound(model, sched, T, xr, exact=True, generator=g, decoder="gaussian")
    sampled = O.ddpm_bound(model, sched, T, xr, exact=False, generator=g, decoder="gaussian")
    e = exact["diffusion"].reshape(R, B)
    s = sampled["diffusion"].reshape(R, B)
    se = s.std(0) / math.sqrt(R)
    assert ((s.mean(0) - e.mean(0)).abs() < 4 * se + 1e-3).all(), (s.mean(0), e.mean(0), se)
    assert (s.std(0) > 3 * e.std(0)).all()  # one step per example: a noisier estimate


def test_continuous_latent_decoder_is_a_gaussian_density():
    x0 = torch.tensor([[0.3, -1.2]], dtype=F64)
    z0 = torch.tensor([[0.25, -1.0]], dtype=F64)
    gamma0 = torch.tensor([-2.0], dtype=F64)
    eps_hat = torch.tensor([[0.1, -0.4]], dtype=F64)
    a, s = alpha_sigma(gamma0)
    mean = (z0 - s * eps_hat) / a
    want = -torch.distributions.Normal(mean, s).log_prob(x0).sum(1)
    torch.testing.assert_close(O.gaussian_decoder_nll(x0, z0, gamma0, lambda: eps_hat), want)


def test_categorical_decoder_is_normalised_over_the_256_bins_and_sharp_at_low_noise():
    centres = ((2 * torch.arange(256) + 1) / 256 - 1).to(F64)[:, None]  # [256, 1]
    z0 = torch.full((256, 1), 0.1234, dtype=F64)
    for gamma in (-4.0, -9.0):
        g0 = torch.full((256,), gamma, dtype=F64)
        nll = O.categorical_decoder_nll(centres, z0, g0, None)
        torch.testing.assert_close(torch.logsumexp(-nll, 0), torch.tensor(0.0, dtype=F64))
    g0 = torch.full((2,), -13.3, dtype=F64)
    a0, _ = alpha_sigma(g0)
    x = centres[[5, 200]]
    assert O.categorical_decoder_nll(x, a0[:, None] * x, g0, None).max() < 1e-6


def test_discrete_vdm_bound_approaches_the_continuous_one_from_above():
    mu, s2, D = 0.2, 0.5, 64
    sched = build_schedule("vdm-linear", gamma_min=-6.0, gamma_max=6.0)
    model = analytic_gaussian_eps_model(mu, s2, sched)
    g = torch.Generator().manual_seed(0)
    x0 = mu + math.sqrt(s2) * torch.randn(8192, D, generator=g, dtype=F64)
    vals = {}
    for T in (0, 4, 16):
        gg = torch.Generator().manual_seed(1)
        vals[T] = O.vdm_elbo(model, sched, x0, T=T, decoder="gaussian", generator=gg)
        vals[T] = vals[T]["total"].mean().item() / D
    # the T-step loss exceeds the continuous one by ~ sum_i (expm1(d) - d) / 2 E||.||^2 / D
    assert vals[4] > vals[16] > vals[0] - 0.02
    assert vals[4] - vals[0] > 0.1


def test_variance_option_gives_the_schedule_the_gradient_of_the_squared_loss():
    sched = build_schedule("learned-net", n_features=8, learn_endpoints=True)
    model = analytic_gaussian_eps_model(0.1, 0.3, build_schedule("vdm-linear"))
    x0 = torch.randn(16, 5, generator=torch.Generator().manual_seed(0), dtype=F64)
    shape_params = [sched.w1, sched.w2, sched.b2, sched.w3]
    end_params = [sched.gamma_0, sched.log_width]

    def grads(loss):
        sched.zero_grad()
        loss.backward()
        return [p.grad.clone() for p in shape_params + end_params]

    for T in (0, 10):
        kw = dict(T=T, decoder="gaussian")
        elbo = O.vdm_elbo(model, sched, x0, generator=torch.Generator().manual_seed(1), **kw)
        g_elbo = grads(elbo["total"].mean())
        elbo = O.vdm_elbo(model, sched, x0, generator=torch.Generator().manual_seed(1), **kw)
        g_sq = grads(elbo["diffusion"].pow(2).mean())
        var = O.vdm_elbo(
            model, sched, x0, schedule_grad="variance",
            generator=torch.Generator().manual_seed(1), **kw,
        )  # fmt: skip
        torch.testing.assert_close(var["total"], elbo["total"])  # same values
        g_var = grads(var["total"].mean())
        # shape parameters: gradient of E[L_diff^2]; endpoints: gradient of the ELBO
        for a, b in zip(g_var[:4], g_sq[:4]):
            torch.testing.assert_close(a, b)
        for a, b in zip(g_var[4:], g_elbo[4:]):
            torch.testing.assert_close(a, b)
    with pytest.raises(UserError, match="learned-net"):
        O.vdm_elbo(model, build_schedule("vdm-linear"), x0, schedule_grad="variance")


@pytest.mark.parametrize("kind", ["low-discrepancy", "antithetic", "uniform"])
def test_time_sampling_is_uniform_and_stratified(kind):
    g = torch.Generator().manual_seed(0)
    t = torch.cat([O.sample_t(64, kind=kind, generator=g) for _ in range(200)])
    top = (t <= 1).all() if kind == "antithetic" else (t < 1).all()  # 1 - u is in (0, 1]
    assert t.dtype == F64 and (t >= 0).all() and top
    hist = torch.histc(t.float(), bins=8, min=0, max=1) / t.numel()
    assert (hist - 1 / 8).abs().max() < 0.01
    one = O.sample_t(64, kind=kind, generator=g)
    if kind == "low-discrepancy":  # one point in each [i/64, (i+1)/64)
        assert torch.equal(torch.sort(torch.floor(one * 64)).values, torch.arange(64.0, dtype=F64))
    if kind == "antithetic":
        torch.testing.assert_close(one[:32] + one[32:], torch.ones(32, dtype=F64))


def test_ddpm_eps_loss_weightings():
    from diffrep.diffusion.weighting import build_weighting

    gamma = torch.tensor([-3.0, 0.0, 4.0], dtype=F64)
    snr = torch.exp(-gamma)
    torch.testing.assert_close(build_weighting("simple")(gamma), torch.ones(3, dtype=F64))
    torch.testing.assert_close(build_weighting("x0")(gamma), 1 / snr)
    torch.testing.assert_close(build_weighting("min-snr")(gamma), snr.clamp(max=5) / snr)
    torch.testing.assert_close(build_weighting("truncated-snr")(gamma), snr.clamp(min=1) / snr)
    # with the analytic denoiser, E||eps - eps_hat||^2 = D alpha^2 s2 / (alpha^2 s2 + sigma^2)
    T, D, s2 = 50, 8, 0.4
    sched = build_schedule("ddpm-linear", T=T)
    model = analytic_gaussian_eps_model(0.0, s2, sched)
    g = torch.Generator().manual_seed(0)
    x0 = math.sqrt(s2) * torch.randn(20000, D, generator=g, dtype=F64)
    out = O.denoising_loss(model, sched, x0, T=T, generator=g)
    a2 = torch.sigmoid(-sched.table(T)[1:])
    want = (D * a2 * s2 / (a2 * s2 + 1 - a2)).mean()
    assert abs(out["loss"].mean() / want - 1) < 0.03


@pytest.mark.parametrize("gamma0", [-13.3, -8.0, -2.0, 3.0])
def test_windowed_categorical_decoder_equals_the_full_256_bin_softmax(gamma0):
    from diffrep.diffusion.objectives import categorical_decoder_nll
    from diffrep.diffusion.process import alpha_sigma

    g = torch.Generator().manual_seed(0)
    x0 = (2 * torch.randint(0, 256, (4, 1, 6, 6), generator=g).double() + 1) / 256 - 1
    gamma = torch.full((4,), gamma0, dtype=torch.float64)
    a, s = alpha_sigma(gamma)
    z0 = a.view(-1, 1, 1, 1) * x0 + s.view(-1, 1, 1, 1) * torch.randn(
        x0.shape, generator=g, dtype=torch.float64
    )
    centres = (2 * torch.arange(256, dtype=torch.float64) + 1) / 256 - 1
    logits = -0.5 * (z0[..., None] / a.view(-1, 1, 1, 1, 1) - centres) ** 2 * math.exp(-gamma0)
    k = ((x0 + 1) * 128 - 0.5).round().long()
    full = -(logits.gather(-1, k[..., None])[..., 0] - torch.logsumexp(logits, -1)).sum((1, 2, 3))
    torch.testing.assert_close(
        categorical_decoder_nll(x0, z0, gamma, None), full, rtol=1e-12, atol=1e-9
    )
