"""The base of methods whose generator is a pixel-space diffusion part (`self.diffusion`).

ddpm and vdm (and the code-conditioned methods) get eps_model / schedule / net / sample_steps
views of their `PixelDiffusion` and its sample() and invert() from here, so no method imports
another.
"""

from __future__ import annotations

from typing import Any

import torch

from diffrep.methods.base import Method


class PixelDiffusionMethod(Method):
    """sample() / invert() / eps_model of a method whose generator is `self.diffusion`."""

    def eps_model(self, x_t: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        return self.diffusion.denoiser(x_t, t, cond)

    @property
    def schedule(self):
        return self.diffusion.schedule

    @property
    def net(self):
        return self.diffusion.net

    @property
    def sample_steps(self) -> int:
        return self.diffusion.sample_steps

    @torch.no_grad()
    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        *,
        sampler: str = "ancestral",
        steps: int | None = None,
        progress: Any = None,
        **kw: Any,
    ) -> torch.Tensor:
        """n images in model space from x_T ~ N(0, I): "ancestral" | "ddim" (eta=...) | "ode";
        x_T, clip_x0 and the sampler's options pass through (`PixelDiffusion.sample`)."""
        return self.diffusion.sample(
            n, sampler=sampler, steps=steps, generator=generator, progress=progress, **kw
        )

    @torch.no_grad()
    def invert(self, x0: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        """Deterministic DDIM encoding x0 -> x_T [B, C, H, W] (Song et al. 2021a sec. 4.3)."""
        return self.diffusion.invert(x0, steps=steps)
