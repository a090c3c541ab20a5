"""The one denoiser interface, and small combinators over it (k-diffusion style wrappers).

A denoiser predicts the noise in x_t: `denoiser(x_t, t, cond=None) -> eps_hat` with
x_t [B, ...] = alpha_t x0 + sigma_t eps, t a float [B] in [0, 1] and an optional code
cond [B, K]. Networks, closed-form denoisers (ideal, Gaussian), frozen pre-trained models and the
combinators below all satisfy it; samplers, inversions and objectives take any of them and pass
`cond` through. A two-argument callable `(x_t, t)` is a denoiser that takes no code: callers
only pass `cond` when it is not None (`call`), so such callables keep working.

Combinators (each returns a Denoiser):
- `bind(d, cond)`: the code fixed, e.g. a decoder conditioned on one encoding.
- `unconditional(d)`: the code dropped (the model's own unconditional prediction).
- `guided(base, gradient, scale)`: eps_hat = base(x_t, t) - scale(t) * gradient(x_t, t, cond).
  A mean shift mu + Sigma g of the reverse step is an eps shift of -sigma_t-proportional size
  (classifier guidance: eps_hat - sigma_t grad log p(y | x_t), Dhariwal & Nichol 2021 eq. 11;
  PDAE's gradient estimator, seed 002); the method supplies the coefficient.
- `switch(inner, outer, t_min, t_max)`: inner inside [t_min, t_max], outer elsewhere (PDAE's
  mixed sampling, seed 002 Fig. 3; a code used only over a range of noise levels).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch


class Denoiser(Protocol):
    def __call__(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None
    ) -> torch.Tensor: ...


Scale = Callable[[torch.Tensor], torch.Tensor]  # t [B] -> coefficient [B]


def call(d: Denoiser, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None):
    """d(x_t, t) when there is no code, d(x_t, t, cond) otherwise (two-argument callables work)."""
    return d(x_t, t) if cond is None else d(x_t, t, cond)


def bind(d: Denoiser, cond: torch.Tensor | None) -> Denoiser:
    """The denoiser with its code fixed to `cond` [B, K]; a later `cond` argument is ignored."""

    def bound(x_t, t, _cond=None):
        return call(d, x_t, t, cond)

    return bound


def unconditional(d: Denoiser) -> Denoiser:
    """The denoiser called without a code, whatever the caller passes."""

    def uncond(x_t, t, cond=None):
        return d(x_t, t)

    return uncond


def _bc(c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return c.to(x).reshape(-1, *([1] * (x.dim() - 1)))


def guided(base: Denoiser, gradient: Denoiser, scale: Scale) -> Denoiser:
    """eps_hat = base(x_t, t, cond) - scale(t) [B] * gradient(x_t, t, cond)."""

    def shifted(x_t, t, cond=None):
        return call(base, x_t, t, cond) - _bc(scale(t), x_t) * call(gradient, x_t, t, cond)

    return shifted


def switch(inner: Denoiser, outer: Denoiser, t_min: float, t_max: float) -> Denoiser:
    """inner(x_t, t, cond) where t_min <= t <= t_max (per example), outer(x_t, t, cond) elsewhere.

    Each network runs only on the examples that need it (a sampler's batch shares one t, so
    one of the two is called per step).
    """
    if not 0.0 <= t_min <= t_max <= 1.0:
        raise ValueError(f"switch needs 0 <= t_min <= t_max <= 1, got {t_min}, {t_max}")

    def switched(x_t, t, cond=None):
        inside = (t >= t_min) & (t <= t_max)  # [B]
        if bool(inside.all()):
            return call(inner, x_t, t, cond)
        if not bool(inside.any()):
            return call(outer, x_t, t, cond)
        out = torch.empty_like(x_t)
        for mask, d in ((inside, inner), (~inside, outer)):
            c = None if cond is None else cond[mask]
            out[mask] = call(d, x_t[mask], t[mask], c).to(out.dtype)
        return out

    return switched
