"""Noise schedules: gamma(t) = -logSNR(t) = log(sigma_t^2 / alpha_t^2) for t in [0, 1].

A schedule is an `nn.Module` mapping t [B] to gamma [B] in float64 (VDM, Kingma et al. 2021,
eq. 3: alpha_t^2 = sigmoid(-gamma(t)), sigma_t^2 = sigmoid(gamma(t))). Everything else (the
forward process, the losses, the samplers) is written in terms of gamma, so schedules are
interchangeable. `table(T)` gives gamma at t_i = i / T for i = 0..T (discrete-time models).

Registered schedules (`SCHEDULES`):

- `ddpm-linear`: DDPM betas linear in the step (Ho et al. 2020, sec. 4), alpha_bar_i =
  prod_{j <= i} (1 - beta_j). gamma(0) = -inf (t = 0 is the data itself).
- `cosine`: alpha_bar(t) = f(t) / f(0), f(t) = cos^2((t + s) / (1 + s) pi / 2), betas clipped
  at 0.999 (Nichol & Dhariwal 2021, eq. 17). gamma(0) = -inf.
- `vdm-linear`: gamma(t) = gamma_min + (gamma_max - gamma_min) t, fixed (VDM sec. 5).
- `learned-linear`: the same line with both endpoints learned (VDM's learned linear schedule).
- `learned-net`: VDM's monotone network (appendix H.1), normalised so that gamma(0) and gamma(1)
  are *exactly* the endpoints gamma_min, gamma_max. In the reference JAX code the endpoints are
  outputs of the network and drift as it trains; here the network only shapes the interior.

The two DDPM schedules are defined by T discrete betas; between grid points they interpolate
-log alpha_bar linearly in t, so `table(T)` reproduces the discrete alpha_bar exactly and the
continuous gamma(t) stays monotone (samplers may use any number of steps).

Schedules with learnable parts split gamma into endpoints and a shape,
gamma(t) = gamma_0 (1 - g(t)) + gamma_1 g(t) with g(0) = 0, g(1) = 1 (`endpoints()`,
`shape(t)`), so that VDM's variance-minimising training can treat the two differently
(`objectives.vdm_elbo(..., schedule_grad="variance")`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from diffrep.errors import UserError
from diffrep.registry import Registry

SCHEDULES: Registry[Schedule] = Registry("schedule")

F64 = torch.float64


def _as_t(t: torch.Tensor | float) -> torch.Tensor:
    """t as a float64 tensor (keeps autograd: gamma'(t) is taken by differentiating in t)."""
    if not torch.is_tensor(t):
        t = torch.tensor(float(t), dtype=F64)
    return t.to(F64)


class Schedule(nn.Module):
    """gamma(t) = -logSNR(t), strictly increasing in t on [0, 1]; float64 in and out."""

    #: True when gamma has learnable parameters (the VDM methods then train it).
    learnable: bool = False

    def forward(self, t: torch.Tensor | float) -> torch.Tensor:
        raise NotImplementedError

    def table(self, T: int) -> torch.Tensor:
        """gamma at t_i = i / T for i = 0..T -> float64 [T + 1] (differentiable if learnable)."""
        if T < 1:
            raise UserError(f"schedule table needs T >= 1 steps, got T={T}; fix: pass T >= 1")
        return self(torch.arange(T + 1, dtype=F64) / T)

    def endpoints(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(gamma(0), gamma(1)) as float64 scalars."""
        return self(0.0), self(1.0)

    def gamma_and_derivative(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(gamma(t), gamma'(t)) [B] float64; the derivative keeps the graph to the parameters.

        The default differentiates `forward` by autograd in t; closed forms override it.
        """
        t = _as_t(t).detach().requires_grad_(True)
        with torch.enable_grad():
            g = self(t)
            (dg,) = torch.autograd.grad(g.sum(), t, create_graph=True)
        return g, dg

    @property
    def device(self) -> torch.device:
        for b in self.buffers():
            return b.device
        for p in self.parameters():
            return p.device
        return torch.device("cpu")


# --------------------------------------------------------------------------- DDPM (discrete betas)


class DiscreteBetaSchedule(Schedule):
    """A schedule given by T betas; gamma_i = log(expm1(-log alpha_bar_i)) exactly at t = i / T."""

    def __init__(self, betas: torch.Tensor):
        super().__init__()
        betas = betas.to(F64)
        if betas.dim() != 1 or not ((betas > 0) & (betas < 1)).all():
            raise UserError("betas must be a 1-D sequence in (0, 1); fix: check beta_1 and beta_T")
        self.T = betas.numel()
        # L_i = -log alpha_bar_i = -sum_{j <= i} log(1 - beta_j), L_0 = 0 -> [T + 1]
        L = torch.cat([torch.zeros(1, dtype=F64), torch.cumsum(-torch.log1p(-betas), 0)])
        self.register_buffer("L", L)

    def forward(self, t: torch.Tensor | float) -> torch.Tensor:
        t = _as_t(t).to(self.L.device)
        u = t.clamp(0, 1) * self.T  # continuous step index in [0, T]
        i = u.detach().floor().clamp(max=self.T - 1).long()
        L = self.L[i] + (u - i) * (self.L[i + 1] - self.L[i])  # piecewise linear in t
        # gamma = log(sigma^2 / alpha^2) = log((1 - alpha_bar) / alpha_bar) = log(expm1(L))
        return torch.log(torch.expm1(L))

    @property
    def betas(self) -> torch.Tensor:
        return -torch.expm1(-(self.L[1:] - self.L[:-1]))


@SCHEDULES.register("ddpm-linear")
class DDPMLinear(DiscreteBetaSchedule):
    """beta_i linear from beta_1 to beta_T over T steps (Ho et al. 2020: 1e-4 to 0.02, T=1000)."""

    def __init__(self, T: int = 1000, beta_1: float = 1e-4, beta_T: float = 0.02):
        if T < 1 or not 0 < beta_1 <= beta_T < 1:
            raise UserError(
                f"ddpm-linear: need T >= 1 and 0 < beta_1 <= beta_T < 1, got T={T}, "
                f"beta_1={beta_1}, beta_T={beta_T}; fix: e.g. T=1000, beta_1=1e-4, beta_T=0.02"
            )
        super().__init__(torch.linspace(beta_1, beta_T, T, dtype=F64))


@SCHEDULES.register("cosine")
class Cosine(DiscreteBetaSchedule):
    """Nichol & Dhariwal (2021) eq. 17: alpha_bar(t) = f(t)/f(0), betas clipped at max_beta."""

    def __init__(self, T: int = 1000, s: float = 0.008, max_beta: float = 0.999):
        if T < 1 or s <= 0 or not 0 < max_beta < 1:
            raise UserError(
                f"cosine: need T >= 1, s > 0, 0 < max_beta < 1, got T={T}, s={s}, "
                f"max_beta={max_beta}; fix: e.g. T=1000, s=0.008, max_beta=0.999"
            )
        t = torch.arange(T + 1, dtype=F64) / T
        log_f = 2 * torch.log(torch.cos((t + s) / (1 + s) * math.pi / 2).clamp(min=1e-300))
        # beta_i = 1 - alpha_bar_i / alpha_bar_{i-1}, clipped (f(1) = 0 would make beta_T = 1)
        betas = -torch.expm1(log_f[1:] - log_f[:-1])
        super().__init__(betas.clamp(max=max_beta))


# --------------------------------------------------------------------------- VDM schedules


def _check_endpoints(name: str, gamma_min: float, gamma_max: float) -> None:
    if not (math.isfinite(gamma_min) and math.isfinite(gamma_max) and gamma_min < gamma_max):
        raise UserError(
            f"{name}: need finite gamma_min < gamma_max, got {gamma_min}, {gamma_max}; "
            "fix: e.g. gamma_min=-13.3, gamma_max=5.0 (VDM)"
        )


class EndpointSchedule(Schedule):
    """gamma(t) = gamma_0 (1 - g(t)) + gamma_1 g(t): exact endpoints whatever the shape g."""

    def shape(self, t: torch.Tensor) -> torch.Tensor:
        """g(t) in [0, 1], increasing, g(0) = 0 and g(1) = 1 exactly."""
        return t

    def endpoint_values(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def forward(self, t: torch.Tensor | float) -> torch.Tensor:
        g0, g1 = self.endpoint_values()
        s = self.shape(_as_t(t).to(g0.device))
        # This convex combination (not g0 + (g1 - g0) s) returns g1 bit-exactly at s = 1.
        return g0 * (1 - s) + g1 * s

    def endpoints(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.endpoint_values()


@SCHEDULES.register("vdm-linear")
class FixedLinear(EndpointSchedule):
    """gamma(t) = gamma_min + (gamma_max - gamma_min) t with fixed endpoints (VDM sec. 5)."""

    def __init__(self, gamma_min: float = -13.3, gamma_max: float = 5.0):
        super().__init__()
        _check_endpoints("vdm-linear", gamma_min, gamma_max)
        self.register_buffer("gamma_0", torch.tensor(gamma_min, dtype=F64))
        self.register_buffer("gamma_1", torch.tensor(gamma_max, dtype=F64))

    def endpoint_values(self):
        return self.gamma_0, self.gamma_1

    def gamma_and_derivative(self, t):
        g = self(t)
        return g, (self.gamma_1 - self.gamma_0).expand_as(g)


@SCHEDULES.register("learned-linear")
class LearnedLinear(FixedLinear):
    """The VDM line with learned endpoints gamma_0 < gamma_1 (float64 parameters).

    The endpoints are trained on the ELBO (they set SNR_max for the reconstruction term and
    SNR_min for the prior term; the continuous-time diffusion loss depends on nothing else).
    """

    learnable = True

    def __init__(self, gamma_min: float = -13.3, gamma_max: float = 5.0):
        super().__init__(gamma_min, gamma_max)
        g0, g1 = self.gamma_0.clone(), self.gamma_1.clone()
        del self.gamma_0, self.gamma_1
        self.gamma_0 = nn.Parameter(g0)
        # gamma_1 = gamma_0 + softplus(log_width) keeps gamma increasing whatever the optimiser does
        self.log_width = nn.Parameter(torch.log(torch.expm1(g1 - g0)))

    def endpoint_values(self):
        return self.gamma_0, self.gamma_0 + nn.functional.softplus(self.log_width)

    def gamma_and_derivative(self, t):
        g0, g1 = self.endpoint_values()
        g = self(t)
        return g, (g1 - g0).expand_as(g)


@SCHEDULES.register("learned-net")
class LearnedNet(EndpointSchedule):
    """VDM's monotone network (appendix H.1) with exact endpoints.

    g~(t) = l1(t) + l3(phi(l2(t))) / n with positive weights (|W|, VDM's DenseMonotone),
    phi(h) = 2 sigmoid(h) - 1; the shape is g(t) = (g~(t) - g~(0)) / (g~(1) - g~(0)), so
    gamma(0) = gamma_0 and gamma(1) = gamma_1 bit-exactly however the network is trained.
    The endpoints are fixed buffers unless `learn_endpoints` (then float64 parameters trained on
    the ELBO, still hit exactly).
    """

    learnable = True

    def __init__(
        self,
        gamma_min: float = -13.3,
        gamma_max: float = 5.0,
        n_features: int = 1024,
        learn_endpoints: bool = False,
    ):
        super().__init__()
        _check_endpoints("learned-net", gamma_min, gamma_max)
        if n_features < 1:
            raise UserError(f"learned-net: n_features must be >= 1, got {n_features}")
        g0 = torch.tensor(gamma_min, dtype=F64)
        log_width = torch.log(torch.expm1(torch.tensor(gamma_max - gamma_min, dtype=F64)))
        if learn_endpoints:
            self.gamma_0 = nn.Parameter(g0)
            self.log_width = nn.Parameter(log_width)
        else:
            self.register_buffer("gamma_0", g0)
            self.register_buffer("log_width", log_width)
        self.n = n_features
        gen = torch.Generator().manual_seed(0)  # deterministic init: a schedule is not a network
        self.w1 = nn.Parameter(torch.ones((), dtype=F64))
        self.w2 = nn.Parameter(torch.randn(n_features, generator=gen, dtype=F64))
        self.b2 = nn.Parameter(torch.zeros(n_features, dtype=F64))
        # VDM initialises the linear part at scale gamma_max - gamma_min and the nonlinear part
        # with unit normals / n; on our normalised scale that is a ~5 % nonlinear perturbation.
        self.w3 = nn.Parameter(0.05 * torch.randn(n_features, generator=gen, dtype=F64))

    def endpoint_values(self):
        return self.gamma_0, self.gamma_0 + nn.functional.softplus(self.log_width)

    def _g_tilde(self, t: torch.Tensor) -> torch.Tensor:
        h = 2 * (t[..., None] - 0.5)  # [..., 1] in [-1, 1]
        phi = 2 * torch.sigmoid(h * self.w2.abs() + self.b2) - 1  # [..., n]
        return self.w1.abs() * t + (phi * self.w3.abs()).sum(-1) / self.n

    def shape(self, t: torch.Tensor) -> torch.Tensor:
        ends = self._g_tilde(torch.tensor([0.0, 1.0], dtype=F64, device=t.device))
        s = (self._g_tilde(t) - ends[0]) / (ends[1] - ends[0])
        # Pin the endpoints: rounding in a batched matmul must not move gamma(0) or gamma(1).
        # The correction is detached, so gamma'(t) at t = 0 and t = 1 is still the network's.
        fix = torch.where(t <= 0, -s, torch.where(t >= 1, 1 - s, torch.zeros_like(s)))
        return s + fix.detach()


def build_schedule(name: str, **kwargs) -> Schedule:
    """Build a registered schedule (kwargs checked against its signature)."""
    return SCHEDULES.build(name, **kwargs)
