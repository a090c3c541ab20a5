"""The Gaussian diffusion process written in gamma = -logSNR (VDM, Kingma et al. 2021, sec. 3).

q(z_t | x) = N(alpha_t x, sigma_t^2 I) with alpha_t^2 = sigmoid(-gamma_t), sigma_t^2 =
sigmoid(gamma_t) (variance preserving). gamma = -inf is the data itself (alpha = 1, sigma = 0).

Every function takes gamma as a tensor broadcastable to the batch: a scalar, or [B] (reshaped
to [B, 1, ..., 1] against x). Coefficients are computed in gamma's dtype (float64 from the
schedules) and only then cast to x's dtype, so small sigmas are not lost to float32 rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _bc(c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Coefficient [B] or [] -> [B, 1, ..., 1] in x's dtype and device."""
    c = c.to(device=x.device)
    if c.dim() == 1:
        c = c.reshape(-1, *([1] * (x.dim() - 1)))
    return c.to(x.dtype)


def alpha_sigma(gamma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha, sigma) with alpha^2 = sigmoid(-gamma), sigma^2 = sigmoid(gamma) (VDM eq. 3)."""
    return torch.sigmoid(-gamma).sqrt(), torch.sigmoid(gamma).sqrt()


def log_alpha2_sigma2(gamma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log alpha^2, log sigma^2) without cancellation at either end."""
    return F.logsigmoid(-gamma), F.logsigmoid(gamma)


def snr(gamma: torch.Tensor) -> torch.Tensor:
    """SNR = alpha^2 / sigma^2 = exp(-gamma)."""
    return torch.exp(-gamma)


def q_sample(x0: torch.Tensor, gamma: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """z_t = alpha_t x0 + sigma_t eps, a sample of q(z_t | x0) (VDM eq. 1)."""
    a, s = alpha_sigma(gamma)
    return _bc(a, x0) * x0 + _bc(s, x0) * eps


# ------------------------------------------------------------------ prediction conversions
# With z = alpha x0 + sigma eps: x0 = (z - sigma eps) / alpha, eps = (z - alpha x0) / sigma,
# v = alpha eps - sigma x0 (Salimans & Ho 2022), score = grad log q(z_t) = -E[eps | z] / sigma.


def x0_from_eps(z: torch.Tensor, gamma: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    a, s = alpha_sigma(gamma)
    return (z - _bc(s, z) * eps) / _bc(a, z)


def eps_from_x0(z: torch.Tensor, gamma: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    a, s = alpha_sigma(gamma)
    return (z - _bc(a, z) * x0) / _bc(s, z)


def v_from_eps(z: torch.Tensor, gamma: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    a, s = alpha_sigma(gamma)
    x0 = (z - _bc(s, z) * eps) / _bc(a, z)
    return _bc(a, z) * eps - _bc(s, z) * x0


def eps_from_v(z: torch.Tensor, gamma: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    a, s = alpha_sigma(gamma)  # alpha^2 + sigma^2 = 1 makes this exact
    return _bc(s, z) * z + _bc(a, z) * v


def x0_from_v(z: torch.Tensor, gamma: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    a, s = alpha_sigma(gamma)
    return _bc(a, z) * z - _bc(s, z) * v


def score_from_eps(z: torch.Tensor, gamma: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    _, s = alpha_sigma(gamma)
    return -eps / _bc(s, z)


def eps_from_score(z: torch.Tensor, gamma: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    _, s = alpha_sigma(gamma)
    return -_bc(s, z) * score


# ------------------------------------------------------------------ posterior q(z_s | z_t, x0)


def posterior_coefficients(
    gamma_s: torch.Tensor, gamma_t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(c_z, c_x, var) with q(z_s | z_t, x0) = N(c_z z_t + c_x x0, var I), for s < t.

    VDM eqs. 32-33 in gamma: with c = 1 - SNR_t / SNR_s = -expm1(gamma_s - gamma_t),
    mean = (alpha_s / alpha_t)(1 - c) z_t + alpha_s c x0, var = sigma_s^2 c.
    gamma_s = -inf (s is the data) gives c = 1: mean x0, variance 0.
    """
    c = -torch.expm1(gamma_s - gamma_t)
    a_s, s_s = alpha_sigma(gamma_s)
    a_t, _ = alpha_sigma(gamma_t)
    return a_s / a_t * (1 - c), a_s * c, s_s**2 * c


def posterior(
    z_t: torch.Tensor, x0: torch.Tensor, gamma_s: torch.Tensor, gamma_t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, var) of q(z_s | z_t, x0); mean like z_t, var [B] or [] in gamma's dtype."""
    c_z, c_x, var = posterior_coefficients(gamma_s, gamma_t)
    return _bc(c_z, z_t) * z_t + _bc(c_x, z_t) * x0, var


def normal_kl(
    mean_q: torch.Tensor, var_q: torch.Tensor, mean_p: torch.Tensor, var_p: torch.Tensor
) -> torch.Tensor:
    """KL(N(mean_q, var_q I) || N(mean_p, var_p I)) summed over all but the batch -> [B].

    var_q, var_p are per-example variances ([B] or []) shared by all dimensions.
    """
    d = mean_q[0].numel()
    var_q, var_p = torch.as_tensor(var_q), torch.as_tensor(var_p)
    # D/2 (r - 1 - log r) with r = var_q / var_p, as (r - 1) - log1p(r - 1): exact near r = 1
    rm1 = (var_q - var_p) / var_p
    trace_term = 0.5 * d * (rm1 - torch.log1p(rm1))
    sq = (mean_q - mean_p).flatten(1).pow(2).sum(1)
    return sq / (2 * var_p.to(sq)) + trace_term.to(sq)
