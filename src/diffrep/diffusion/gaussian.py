"""The optimal denoiser for Gaussian data, in closed form (a ground truth for tests and checks).

For x ~ N(mu, s2 I) (mu, s2 scalars or tensors broadcastable to x) and z_t = alpha_t x +
sigma_t eps, (z_t, eps) are jointly Gaussian, so the minimum-MSE noise prediction is linear:

    E[eps | z_t] = sigma_t (z_t - alpha_t mu) / (alpha_t^2 s2 + sigma_t^2)

and the marginal is q(z_t) = N(alpha_t mu, alpha_t^2 s2 + sigma_t^2). A sampler driven by this
denoiser must reproduce N(mu, s2); an ELBO evaluated with it must approach the entropy.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from diffrep.diffusion.process import _bc, alpha_sigma
from diffrep.diffusion.schedules import Schedule


def analytic_gaussian_eps_model(
    mu: float | torch.Tensor, s2: float | torch.Tensor, schedule: Schedule
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """eps_model(z_t, t, cond=None) -> E[eps | z_t] for data N(mu, s2 I); t a float [B] in
    [0, 1]. Unconditional: a code is accepted and ignored (the Denoiser protocol)."""

    def eps_model(z_t: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        with torch.no_grad():  # samplers pass one t for the whole batch: evaluate it once
            tu, inv = torch.unique(t.to(torch.float64).reshape(-1), return_inverse=True)
            a, s = alpha_sigma(schedule(tu.to(schedule.device)).to(z_t.device)[inv])
        a, s = _bc(a, z_t), _bc(s, z_t)
        m = torch.as_tensor(mu, dtype=z_t.dtype, device=z_t.device)
        v = torch.as_tensor(s2, dtype=z_t.dtype, device=z_t.device)
        return s * (z_t - a * m) / (a**2 * v + s**2)

    return eps_model


def gaussian_marginal(
    mu: float, s2: float, gamma: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, var) of q(z_t) = N(alpha_t mu, alpha_t^2 s2 + sigma_t^2) for data N(mu, s2)."""
    a, s = alpha_sigma(gamma)
    return a * mu, a**2 * s2 + s**2


def gaussian_entropy_nats(s2: float) -> float:
    """Differential entropy of N(., s2) per dimension in nats: 0.5 log(2 pi e s2)."""
    return 0.5 * math.log(2 * math.pi * math.e * s2)
