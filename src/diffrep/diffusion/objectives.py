"""Diffusion objectives, as per-example terms in nats ([B] tensors).

Denoiser: any `denoiser(z_t, t, cond=None) -> eps_hat` (`diffusion.denoiser`) with t a float
[B] in [0, 1]; every objective takes an optional code `cond` [B, K] and passes it through.

- `vdm_elbo`: the VDM bound (Kingma et al. 2021) -log p(x) <= recon + prior + diffusion with
  the continuous-time diffusion loss 1/2 E_t[gamma'(t) ||eps - eps_hat||^2] (eq. 17) or, with
  T > 0, the T-step loss T/2 E_i[expm1(gamma(t_i) - gamma(t_{i-1})) ||eps - eps_hat||^2]
  (eq. 13 with eq. 11's SNR form). Optional variance-minimising schedule gradient (sec. 5.2).
- `discrete_bound`: the exact T-step variational bound (Ho et al. 2020 eq. 5; seed 004 eq. 11):
  -log p(x | z_0) + sum_i KL(q(z_{i-1} | z_i, x) || p(z_{i-1} | z_i)) + KL(q(z_K | x) || N(0,I)),
  every KL between Gaussians in closed form, summed exactly or estimated from one random step
  per example. `ddpm_bound` runs it on a DDPM table (z_0 is x_1: t = 0 is the data itself).
- `denoising_loss`: lambda(t) ||eps - eps_hat||^2 at one random t per example, lambda from the
  `WEIGHTINGS` registry (Ho et al.'s L_simple, SNR weightings, the ELBO weight, PDAE's, DRL's);
  `per_t_loss`: ||eps - eps_hat||^2 at given t and eps (loss curves, the shuffle test).

The decoder term L_0 is pluggable (`DECODERS`): VDM's 256-bin categorical decoder, Ho et al.'s
256-bin discretised Gaussian for images, or a continuous Gaussian density for latents z (the
VAE with a diffusion prior, seed 004 eqs. 17-20). Bits per dim = total / (D ln 2).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch

from diffrep.diffusion.denoiser import Denoiser, call
from diffrep.diffusion.process import (
    _bc,
    alpha_sigma,
    log_alpha2_sigma2,
    q_sample,
    x0_from_eps,
)
from diffrep.diffusion.schedules import EndpointSchedule, Schedule
from diffrep.diffusion.weighting import Weighting, build_weighting, sample_t
from diffrep.distributions import discretised_gaussian_log_prob
from diffrep.errors import UserError
from diffrep.registry import Registry

TSampling = str  # a TIME_SAMPLERS name: "low-discrepancy", "antithetic", "uniform", "range"
F64 = torch.float64
LOG_2PI = math.log(2 * math.pi)


def _sum(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).sum(1)


def _randn(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise like x, drawn on the generator's device (then moved to x's)."""
    dev = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=dev, dtype=x.dtype).to(x.device)


# --------------------------------------------------------------------------- L_T and L_0


def prior_kl(x0: torch.Tensor, gamma_1: torch.Tensor) -> torch.Tensor:
    """KL(q(z_1 | x) || N(0, I)) = 1/2 sum(alpha^2 x^2 + sigma^2 - 1 - log sigma^2) -> [B].

    With sigma^2 - 1 = -alpha^2 this is 1/2 sum(alpha^2 (x^2 - 1) - logsigmoid(gamma)), which
    keeps its precision when alpha_1 is tiny (VDM's gamma_max = 5).
    """
    a2 = _bc(torch.sigmoid(-gamma_1), x0)
    _, log_s2 = log_alpha2_sigma2(gamma_1)
    return 0.5 * _sum(a2 * (x0.pow(2) - 1) - _bc(log_s2, x0))


# A decoder computes L_0 = -log p(x0 | z_0) [B]; eps_hat() gives the denoiser's prediction at
# (z_0, t_0) on demand, so decoders that do not need the network cost nothing.
Decoder = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, Callable[[], torch.Tensor]], torch.Tensor
]


def categorical_decoder_nll(x0, z_0, gamma_0, eps_hat) -> torch.Tensor:
    """VDM's decoder: p(x_j = k | z_0) = softmax_k(-(z_0/alpha_0 - x_k)^2 / (2 e^gamma_0)).

    Over the 256 bin centres x_k of model space (VDM appendix, `decode`); no network. x0 must
    lie on the bin centres (k = round((x0 + 1) 128 - 1/2)).

    The normaliser only sums the bins within 10 standard deviations (e^(gamma_0/2)) of z_0/alpha_0:
    the rest weigh less than e^-50 relative to the largest term. At VDM's gamma_0 ~ -13 that is a
    dozen bins instead of 256, which made this term cost as much as the U-Net per step.
    """
    a0, _ = alpha_sigma(gamma_0)
    z = z_0 / _bc(a0, z_0)  # [B, ...] the noisy pixel, rescaled to data space
    inv_var = _bc(torch.exp(-gamma_0), z)  # 1 / e^gamma_0
    k = ((x0 + 1) * 128 - 0.5).round().clamp(0, 255).long()
    target = -0.5 * (z - _centre(k, z.dtype)).pow(2) * inv_var  # logit of the true bin
    std = float(torch.exp(0.5 * gamma_0.detach().max()))
    half = min(255, math.ceil(10.0 * std * 128 + 0.5))  # bins each side (bin width 2/256)
    if 2 * half + 1 >= 256:  # a wide decoder: every bin counts
        idx = torch.arange(256, device=z.device).expand(*z.shape, 256)
    else:
        nearest = ((z.detach() + 1) * 128 - 0.5).round().clamp(0, 255).long()
        idx = nearest[..., None] + torch.arange(-half, half + 1, device=z.device)  # [B, .., 2h+1]
    logits = -0.5 * (z[..., None] - _centre(idx, z.dtype)).pow(2) * inv_var[..., None]
    logits = logits.masked_fill((idx < 0) | (idx > 255), -math.inf)
    return -_sum(target - torch.logsumexp(logits, -1))


def _centre(k: torch.Tensor, dtype) -> torch.Tensor:
    """Model-space centre of 8-bit bin k: (2k + 1)/256 - 1."""
    return (2 * k.to(dtype) + 1) / 256 - 1


def discretised_gaussian_decoder_nll(x0, z_0, gamma_0, eps_hat) -> torch.Tensor:
    """Ho et al. (2020) eq. 13: N(x0_hat(z_0), sigma_0^2) integrated over each of 256 bins.

    The mean is mu_theta(x_1, 1) = x0_hat (the posterior of x_0 is a point mass); the variance
    is Ho's sigma_1^2 = beta_1, which is sigma^2 at the first latent (1 - alpha_bar_1).
    """
    mean = x0_from_eps(z_0, gamma_0, eps_hat())
    log_scale = 0.5 * _bc(log_alpha2_sigma2(gamma_0)[1], z_0)
    return -discretised_gaussian_log_prob(x0, mean, log_scale.expand_as(mean))


def gaussian_decoder_nll(x0, z_0, gamma_0, eps_hat) -> torch.Tensor:
    """Continuous -log N(x0; x0_hat(z_0), sigma_0^2 I): L_0 for real-valued data such as
    latents z (seed 004 eqs. 17-20); a density, so its total is not a discrete NLL."""
    mean = x0_from_eps(z_0, gamma_0, eps_hat())
    log_s2 = _bc(log_alpha2_sigma2(gamma_0)[1], z_0)
    return 0.5 * _sum(LOG_2PI + log_s2 + (x0 - mean).pow(2) * torch.exp(-log_s2))


DECODERS: Registry[Decoder] = Registry("decoder")
DECODERS.register("categorical")(categorical_decoder_nll)
DECODERS.register("discretised-gaussian")(discretised_gaussian_decoder_nll)
DECODERS.register("gaussian")(gaussian_decoder_nll)


def get_decoder(decoder: str | Decoder) -> Decoder:
    return decoder if callable(decoder) else DECODERS.get(decoder)


def _full(x: torch.Tensor, value: torch.Tensor | float) -> torch.Tensor:
    return torch.as_tensor(value, dtype=F64, device=x.device).expand(x.shape[0]).clone()


# --------------------------------------------------------------------------- VDM


def vdm_elbo(
    eps_model: Denoiser,
    schedule: Schedule,
    x0: torch.Tensor,
    *,
    cond: torch.Tensor | None = None,
    T: int = 0,
    decoder: str | Decoder = "categorical",
    t_sampling: TSampling = "low-discrepancy",
    schedule_grad: Literal["elbo", "variance"] = "elbo",
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """-ELBO of VDM for x0 [B, ...] -> {"recon", "prior", "diffusion", "total"} in nats [B].

    recon = -log p(x | z_0), z_0 ~ q(z_0 | x) (eq. 8); prior = KL(q(z_1 | x) || N(0, I));
    diffusion: T = 0 continuous time, 1/2 gamma'(t) ||eps - eps_hat(z_t; t)||^2 (eq. 17);
    T > 0 the T-step loss, t on {1/T, ..., 1}, T/2 expm1(gamma_t - gamma_s) ||eps - eps_hat||^2
    with s = t - 1/T. One t per example, drawn by `t_sampling`. `cond` [B, K]: the code every
    denoiser call gets (a conditional decoder p(x | w), seed 000), None for an unconditional one.

    schedule_grad="variance" (VDM sec. 5.2 / appendix I.2): the schedule's *shape* (between its
    endpoints) gets the gradient of E[diffusion^2] instead of the ELBO's: in continuous time
    the ELBO does not depend on the shape, but the estimator's variance does, and
    d Var / d eta = d E[L^2] / d eta there. The endpoints keep the ELBO gradient (they set the
    recon and prior terms). Needs a learned-net-like schedule (`EndpointSchedule`); the loss
    values are unchanged, only the schedule's gradients.
    """
    B = x0.shape[0]
    decode = get_decoder(decoder)
    g0, g1 = schedule.endpoints()
    if not (torch.isfinite(g0) and torch.isfinite(g1)):
        raise UserError(
            "the VDM ELBO needs finite gamma(0) and gamma(1) (it decodes from z_0); fix: use "
            "schedule vdm-linear, learned-linear or learned-net, not a DDPM schedule"
        )
    g0b, g1b = g0.expand(B), g1.expand(B)
    # L_0: reconstruction from z_0 ~ q(z_0 | x)
    z_0 = q_sample(x0, g0b, _randn(x0, generator))
    t0 = torch.zeros(B, dtype=x0.dtype, device=x0.device)
    recon = decode(x0, z_0, g0b, lambda: call(eps_model, z_0, t0, cond))
    prior = prior_kl(x0, g1b)

    t = sample_t(B, kind=t_sampling, generator=generator, device=x0.device)
    hooks: dict[str, torch.Tensor] = {}
    if T > 0:
        t = torch.ceil(t * T).clamp(min=1) / T  # t_i = i / T, i in 1..T
        if schedule_grad == "variance":
            g_t, g_s = (
                _variance_gamma(schedule, t, hooks),
                _variance_gamma(schedule, t - 1 / T, hooks),
            )
        else:
            g_t, g_s = schedule(t), schedule(t - 1 / T)
        weight = 0.5 * T * torch.expm1(g_t - g_s)
    else:
        if schedule_grad == "variance":
            g_t, dg = _variance_gamma_and_derivative(schedule, t, hooks)
        else:
            g_t, dg = schedule.gamma_and_derivative(t)
        weight = 0.5 * dg
    eps = _randn(x0, generator)
    z_t = q_sample(x0, g_t, eps)
    eps_hat = call(eps_model, z_t, t.to(x0.dtype), cond)
    diffusion = weight.to(x0.dtype) * _sum((eps - eps_hat).pow(2))
    if hooks:
        scale = 2 * diffusion.detach().to(F64)  # d L^2 = 2 L dL, per example
        for h in hooks.values():
            if h.requires_grad:  # not under torch.no_grad (evaluation)
                h.register_hook(lambda grad, scale=scale: grad * scale)
    return {
        "recon": recon,
        "prior": prior,
        "diffusion": diffusion,
        "total": recon + prior + diffusion,
    }


def _check_variance_schedule(schedule: Schedule) -> EndpointSchedule:
    if not (isinstance(schedule, EndpointSchedule) and schedule.learnable):
        raise UserError(
            "schedule_grad='variance' trains the shape of a learned schedule between its "
            "endpoints; fix: use schedule='learned-net' (or schedule_grad='elbo')"
        )
    return schedule


def _variance_gamma(schedule, t, hooks):
    s = _check_variance_schedule(schedule)
    g0, g1 = s.endpoint_values()
    shape = s.shape(t)
    hooks[f"shape{len(hooks)}"] = shape
    return g0 * (1 - shape) + g1 * shape


def _variance_gamma_and_derivative(schedule, t, hooks):
    s = _check_variance_schedule(schedule)
    g0, g1 = s.endpoint_values()
    t = t.detach().requires_grad_(True)
    with torch.enable_grad():
        shape = s.shape(t)
        (dshape,) = torch.autograd.grad(shape.sum(), t, create_graph=True)
    hooks["shape"], hooks["dshape"] = shape, dshape
    return g0 * (1 - shape) + g1 * shape, (g1 - g0) * dshape


# --------------------------------------------------------------------------- T-step bound


def step_kl(
    gamma_s: torch.Tensor,
    gamma_t: torch.Tensor,
    sq_err_eps: torch.Tensor,
    dim: int,
    reverse_var: Literal["posterior", "beta"] = "posterior",
) -> torch.Tensor:
    """KL(q(z_s | z_t, x) || p(z_s | z_t)) [B] for one step s < t, in closed form.

    p(z_s | z_t) = N(mu~(z_t, x0_hat), var_p I) with x0_hat from eps_hat (Ho et al. eq. 11).
    The mean error is c_x (x - x0_hat) = c_x (sigma_t / alpha_t)(eps_hat - eps), so
    ||mean_q - mean_p||^2 = c_x^2 e^gamma_t ||eps - eps_hat||^2 (`sq_err_eps`, summed over the
    D = `dim` values). reverse_var: "posterior" (var_p = beta~, VDM's choice) gives
    KL = 1/2 expm1(gamma_t - gamma_s) ||eps - eps_hat||^2 (VDM eq. 13); "beta" (Ho et al.'s
    sigma_t^2 = beta_t) adds D/2 (r - 1 - log r), r = beta~ / beta = sigma_s^2 / sigma_t^2.
    """
    if reverse_var == "posterior":
        return (0.5 * torch.expm1(gamma_t - gamma_s)).to(sq_err_eps) * sq_err_eps
    if reverse_var != "beta":
        raise UserError(f"reverse_var {reverse_var!r} is unknown; choose posterior or beta")
    la_s, ls_s = log_alpha2_sigma2(gamma_s)
    la_t, ls_t = log_alpha2_sigma2(gamma_t)
    c = -torch.expm1(gamma_s - gamma_t)  # beta~ = sigma_s^2 c
    var_p = -torch.expm1(la_t - la_s)  # beta_t = 1 - alpha_t^2 / alpha_s^2
    coef = torch.exp(la_s + gamma_t) * c**2  # c_x^2 e^gamma_t, c_x = alpha_s c
    rm1 = torch.expm1(ls_s - ls_t)  # r - 1
    trace = 0.5 * dim * (rm1 - torch.log1p(rm1))
    return (0.5 * coef / var_p).to(sq_err_eps) * sq_err_eps + trace.to(sq_err_eps)


def discrete_bound(
    eps_model: Denoiser,
    gammas: torch.Tensor,
    ts: torch.Tensor,
    x0: torch.Tensor,
    *,
    cond: torch.Tensor | None = None,
    decoder: str | Decoder,
    exact: bool = False,
    reverse_var: Literal["posterior", "beta"] = "posterior",
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """The K-step variational bound on the latents z_0..z_K with gammas [K + 1] (increasing).

    ts [K + 1] are the times the denoiser sees at each latent. Terms [B] in nats:
    recon = -log p(x | z_0), diffusion = sum_{i=1..K} KL(q(z_{i-1} | z_i, x) || p(z_{i-1} | z_i)),
    prior = KL(q(z_K | x) || N(0, I)), total = their sum.

    The reconstruction and prior terms are always evaluated; noise is drawn from `generator`
    in the order z_0, then z_1, ..., z_K (exact) or one z_i (sampled). exact=True sums all K
    KL terms (K + 1 denoiser calls, for evaluation). exact=False draws one i in {1..K} per
    example and returns K KL_i, an unbiased estimate of the sum (2 denoiser calls, or 1 when
    the decoder does not use the network). Drawing L_0 among the K + 1 terms instead would
    also be unbiased but multiply the variance of the sharp decoder term by K.
    """
    decode = get_decoder(decoder)
    B, K, D = x0.shape[0], gammas.numel() - 1, x0[0].numel()
    gammas, ts = gammas.to(device=x0.device, dtype=F64), ts.to(device=x0.device)
    if K < 1:
        raise UserError("the T-step bound needs at least 2 latents (T >= 2); fix: raise T")
    prior = prior_kl(x0, gammas[K].expand(B))
    g0 = gammas[0].expand(B)
    z_0 = q_sample(x0, g0, _randn(x0, generator))
    recon = decode(x0, z_0, g0, lambda: call(eps_model, z_0, ts[0].expand(B).to(x0.dtype), cond))

    if exact:
        diffusion = torch.zeros(B, dtype=x0.dtype, device=x0.device)
        for i in range(1, K + 1):
            g_t = gammas[i].expand(B)
            eps = _randn(x0, generator)
            eps_hat = call(eps_model, q_sample(x0, g_t, eps), ts[i].expand(B).to(x0.dtype), cond)
            sq = _sum((eps - eps_hat).pow(2))
            diffusion = diffusion + step_kl(gammas[i - 1].expand(B), g_t, sq, D, reverse_var)
    else:
        dev = generator.device if generator is not None else x0.device
        i = torch.randint(1, K + 1, (B,), generator=generator, device=dev).to(x0.device)
        g_t = gammas[i]
        eps = _randn(x0, generator)
        eps_hat = call(eps_model, q_sample(x0, g_t, eps), ts[i].to(x0.dtype), cond)
        sq = _sum((eps - eps_hat).pow(2))
        diffusion = K * step_kl(gammas[i - 1], g_t, sq, D, reverse_var)
    return {
        "recon": recon,
        "prior": prior,
        "diffusion": diffusion,
        "total": recon + prior + diffusion,
    }


def ddpm_bound(
    eps_model: Denoiser,
    schedule: Schedule,
    T: int,
    x0: torch.Tensor,
    *,
    cond: torch.Tensor | None = None,
    decoder: str | Decoder = "discretised-gaussian",
    exact: bool = False,
    reverse_var: Literal["posterior", "beta"] = "posterior",
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Ho et al.'s bound L_0 + sum_{t=2..T} L_{t-1} + L_T on x_1..x_T (t_i = i / T).

    x_0 is the data, so the latents start at x_1 (gamma(1/T)) and L_0 = -log p(x_0 | x_1) is
    the decoder term; the net sees t = i / T for x_i. exact=False: L_1..L_{T-1} estimated by
    (T - 1) times one random term per example (unbiased). See `discrete_bound`.
    """
    gammas = schedule.table(T)
    ts = torch.arange(T + 1, dtype=F64) / T
    return discrete_bound(
        eps_model,
        gammas[1:],
        ts[1:],
        x0,
        cond=cond,
        decoder=decoder,
        exact=exact,
        reverse_var=reverse_var,
        generator=generator,
    )


# --------------------------------------------------------------------------- denoising losses


def _draw_t(B: int, T: int, t_sampling: str, generator, device) -> torch.Tensor:
    """One t per example: T > 0 the grid i / T, i uniform in 1..T; T = 0 continuous."""
    if T > 0:
        dev = generator.device if generator is not None else device
        i = torch.randint(1, T + 1, (B,), generator=generator, device=dev).to(device)
        return i.to(F64) / T
    return sample_t(B, kind=t_sampling, generator=generator, device=device)


def denoising_loss(
    eps_model: Denoiser,
    schedule: Schedule,
    x0: torch.Tensor,
    *,
    cond: torch.Tensor | None = None,
    weighting: str | Weighting = "simple",
    t_sampling: TSampling = "uniform",
    T: int = 0,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """lambda(t) ||eps - eps_hat(x_t, t, cond)||^2 at one t per example -> {"loss", "mse", "t"}.

    Ho et al. 2020 eq. 14 (weighting "simple", T > 0), DRL's eq. 2 (seed 001, any weighting,
    eps form of the score error), PDAE's weighted eps loss (seed 002). With weighting "elbo",
    T = 0 and t uniform, E[loss] is VDM's continuous diffusion term (eq. 17), the same estimator
    as `vdm_elbo`'s "diffusion" for the same t and eps. Not a bound in general.
    """
    w = build_weighting(weighting)
    B = x0.shape[0]
    t = _draw_t(B, T, t_sampling, generator, x0.device)
    if w.needs_derivative:
        g_t, dg = schedule.gamma_and_derivative(t)
        lam = w(g_t, dg)
    else:
        with torch.no_grad():
            g_t = schedule(t)
        lam = w(g_t)
    eps = _randn(x0, generator)
    eps_hat = call(eps_model, q_sample(x0, g_t, eps), t.to(x0.dtype), cond)
    mse = _sum((eps - eps_hat).pow(2))
    return {"loss": lam.to(mse) * mse, "mse": mse, "t": t}


def per_t_loss(
    eps_model: Denoiser,
    schedule: Schedule,
    x0: torch.Tensor,
    t: torch.Tensor,
    *,
    cond: torch.Tensor | None = None,
    eps: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """||eps - eps_hat(x_t, t, cond)||^2 [B] at the given t [B] (and eps, drawn if None).

    Passing the same t and eps with and without a code isolates what the code is worth at each
    noise level (the shuffle test; the posterior-mean gap). Multiply by gamma'(t) / 2 for the
    ELBO's nats.
    """
    t = t.to(device=x0.device, dtype=F64)
    with torch.no_grad():
        g_t = schedule(t)
    eps = _randn(x0, generator) if eps is None else eps
    eps_hat = call(eps_model, q_sample(x0, g_t, eps), t.to(x0.dtype), cond)
    return _sum((eps - eps_hat).pow(2))
