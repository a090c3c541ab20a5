"""Seed 003's small-step denoiser iteration, a sampler for any method with `denoise(x)`.

    x' = x - eta (x - DAE(x)) = (1 - eta) x + eta DAE(x)        (seed 003, "Update")

x - DAE(x) is the noise the denoiser sees in x, so each step removes a fraction eta of it. The
fixed points are the x with DAE(x) = x: for the ideal denoiser (small sigma) the training images
(attractors: the iteration restores the closest stored image), for the linear-subspace denoiser
V V^T x the whole subspace (the iterate converges to the projection of its start, not to a
stored image). Used by `dae`, `ideal` and `svd` (`sample`) and by the `attractors` evaluation.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch

from diffrep.errors import UserError

#: Defaults: 0.9^100 ~ 3e-5 of the start's distance from a fixed point is left after 100 steps.
ETA = 0.1
STEPS = 100


@torch.no_grad()
def iterate_denoiser(
    denoise: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    *,
    eta: float = ETA,
    steps: int = STEPS,
    progress: bool | None = None,
) -> torch.Tensor:
    """`steps` iterations of x <- (1 - eta) x + eta denoise(x) from x [B, ...] (model space)."""
    from tqdm import tqdm

    if not 0.0 < eta <= 1.0 or steps < 1:
        raise UserError(f"denoiser iteration: need 0 < eta <= 1 and steps >= 1, got {eta}, {steps}")
    show = sys.stderr.isatty() if progress is None else progress
    for _ in tqdm(range(steps), desc="iterate DAE", disable=not show, leave=False):
        x = (1.0 - eta) * x + eta * denoise(x)
    return x


class DenoiserIterationSampling:
    """`sample(n, steps, eta)` for a Method with `denoise(x)`: iterate from x ~ N(0, I)."""

    @torch.no_grad()
    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        steps: int | None = None,
        eta: float | None = None,
    ) -> torch.Tensor:
        x = torch.randn((n, *self.data_shape), generator=generator).to(self.device)
        x = iterate_denoiser(self.denoise, x, eta=ETA if eta is None else eta, steps=steps or STEPS)
        return x.clamp(-1.0, 1.0)
