"""Weightings lambda(t) of the denoising loss, and how training times t are drawn: registries.

Every denoising objective of the family is E_t[lambda(t) ||eps - eps_hat(x_t, t)||^2] with
x_t = alpha_t x0 + sigma_t eps. A weighting maps gamma_t = -logSNR(t) (and, where it needs it,
gamma'(t)) to lambda [B] in float64. Since ||x0 - x0_hat||^2 = ||eps - eps_hat||^2 / SNR,
weightings stated on x0 errors become eps weightings by dividing by SNR; the score error
||s - grad log q||^2 = ||eps - eps_hat||^2 / sigma_t^2 (DRL, seed 001 eq. 2) likewise.

- simple: 1 (Ho et al. 2020 L_simple).
- x0: 1 / SNR (plain x0-prediction MSE).
- min-snr: min(SNR, cap) / SNR (Hang et al. 2023).
- truncated-snr: max(SNR, 1) / SNR (Salimans & Ho 2022).
- elbo: gamma'(t) / 2, the continuous-time VDM bound (Kingma et al. 2021 eq. 17): with t
  uniform, E_t[lambda ||.||^2] is then exactly the diffusion term of -ELBO.
- pdae: SNR^p / (1 + SNR) (PDAE, seed 002, p = 0.1 in the authors' code): down-weights the
  low-noise steps where the posterior-mean gap is small.
- high-noise / low-noise: sigmoid(+-(gamma - center)), favouring t with SNR below / above
  e^-center (seed 001: the noise levels a DRL code is trained at choose its granularity).

Time samplers draw t [B] in [0, 1] as float64: uniform, antithetic (u, 1 - u),
low-discrepancy ((u + i / B) mod 1, VDM appendix I.1) and range (uniform on [t_min, t_max]).
"""

from __future__ import annotations

import torch

from diffrep.errors import UserError
from diffrep.registry import Registry

F64 = torch.float64


class Weighting:
    """lambda(gamma_t, dgamma_t) -> [B]; `needs_derivative` says whether dgamma_t is used."""

    needs_derivative = False

    def __call__(self, gamma: torch.Tensor, dgamma: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in vars(self).items())
        return f"{getattr(type(self), 'registry_name', type(self).__name__)}({opts})"


WEIGHTINGS: Registry[Weighting] = Registry("weighting")


@WEIGHTINGS.register("simple")
class Simple(Weighting):
    def __call__(self, gamma, dgamma=None):
        return torch.ones_like(gamma)


@WEIGHTINGS.register("x0")
class X0(Weighting):
    def __call__(self, gamma, dgamma=None):
        return torch.exp(gamma)  # 1 / SNR


@WEIGHTINGS.register("min-snr")
class MinSNR(Weighting):
    def __init__(self, snr_cap: float = 5.0):
        if snr_cap <= 0:
            raise UserError(f"min-snr: snr_cap must be > 0, got {snr_cap}; fix: e.g. 5")
        self.snr_cap = snr_cap

    def __call__(self, gamma, dgamma=None):
        return torch.clamp(torch.exp(gamma) * self.snr_cap, max=1.0)


@WEIGHTINGS.register("truncated-snr")
class TruncatedSNR(Weighting):
    def __call__(self, gamma, dgamma=None):
        return torch.clamp(torch.exp(gamma), min=1.0)


@WEIGHTINGS.register("elbo")
class ELBO(Weighting):
    needs_derivative = True

    def __call__(self, gamma, dgamma=None):
        if dgamma is None:
            raise ValueError("the elbo weighting needs gamma'(t)")
        return 0.5 * dgamma


@WEIGHTINGS.register("pdae")
class PDAE(Weighting):
    def __init__(self, snr_power: float = 0.1):
        self.snr_power = snr_power

    def __call__(self, gamma, dgamma=None):
        # SNR^p / (1 + SNR) = exp(-p gamma) sigmoid(gamma), stable at both ends
        return torch.exp(-self.snr_power * gamma) * torch.sigmoid(gamma)


@WEIGHTINGS.register("high-noise")
class HighNoise(Weighting):
    def __init__(self, center: float = 0.0):
        self.center = center

    def __call__(self, gamma, dgamma=None):
        return torch.sigmoid(gamma - self.center)


@WEIGHTINGS.register("low-noise")
class LowNoise(Weighting):
    def __init__(self, center: float = 0.0):
        self.center = center

    def __call__(self, gamma, dgamma=None):
        return torch.sigmoid(self.center - gamma)


def build_weighting(weighting: str | Weighting, **options) -> Weighting:
    """A weighting from its registry name and options, or an instance as it is."""
    if isinstance(weighting, Weighting):
        return weighting
    return WEIGHTINGS.build(weighting, **options)


# --------------------------------------------------------------------------- time sampling

TIME_SAMPLERS: Registry = Registry("t sampling")


def _u(shape, generator, device) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=device, dtype=F64)


@TIME_SAMPLERS.register("uniform")
def uniform(B: int, generator=None, device=None, /) -> torch.Tensor:
    return _u(B, generator, device)


@TIME_SAMPLERS.register("low-discrepancy")
def low_discrepancy(B: int, generator=None, device=None, /) -> torch.Tensor:
    u = _u((), generator, device)
    return torch.remainder(u + torch.arange(B, device=device, dtype=F64) / B, 1.0)


@TIME_SAMPLERS.register("antithetic")
def antithetic(B: int, generator=None, device=None, /) -> torch.Tensor:
    u = _u((B + 1) // 2, generator, device)
    return torch.cat([u, 1 - u])[:B]


@TIME_SAMPLERS.register("range")
def t_range(
    B: int, generator=None, device=None, /, *, t_min: float = 0.0, t_max: float = 1.0
) -> torch.Tensor:
    if not 0.0 <= t_min < t_max <= 1.0:
        raise UserError(f"t range needs 0 <= t_min < t_max <= 1, got {t_min}, {t_max}")
    return t_min + (t_max - t_min) * _u(B, generator, device)


def sample_t(
    B: int,
    *,
    kind: str = "low-discrepancy",
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    **options,
) -> torch.Tensor:
    """B times as float64 [B], each marginally uniform on [0, 1) (or on the `range`).

    Drawn on the generator's device (so a CPU generator reproduces on any device), then moved.
    """
    gdev = generator.device if generator is not None else device
    # the losses call this every step without options: then there is nothing to check, and the
    # check (it reads type hints) would cost each step and split a torch.compile graph
    sampler = TIME_SAMPLERS.get(kind)
    t = (
        TIME_SAMPLERS.build(kind, B, generator, gdev, **options)
        if options
        else sampler(B, generator, gdev)
    )
    return t.to(device) if device is not None else t
