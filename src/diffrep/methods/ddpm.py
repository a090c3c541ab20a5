"""DDPM (Ho et al. 2020): T discrete steps, eps-prediction, trained on a weighted eps loss.

Training: lambda(t) ||eps - eps_hat(x_t, t/T)||^2 at one uniform step (L_simple by default,
Ho et al. eq. 14, or any registered weighting), or the true bound itself (weighting="vlb").
`elbo()` always evaluates the true variational bound L_0 + sum L_{t-1} + L_T (eq. 5) with a
256-bin discretised Gaussian L_0, so bits per dim are honest whatever the training loss; the sum
over steps is estimated from one random step per example, or summed exactly (`elbo_exact`,
T network calls). The schedule and U-Net are the shared `PixelDiffusion` part.
"""

from __future__ import annotations

from typing import Literal

import torch

from diffrep.diffusion.pixel import PixelDiffusion
from diffrep.errors import UserError
from diffrep.methods.base import METHODS, Batch
from diffrep.methods.pixel_base import PixelDiffusionMethod


@METHODS.register("ddpm")
class DDPM(PixelDiffusionMethod):
    def __init__(
        self,
        data_shape: tuple[int, int, int],
        *,
        T: int = 1000,
        schedule: Literal["ddpm-linear", "cosine"] = "ddpm-linear",
        weighting: str = "simple",
        weighting_options: dict | None = None,
        elbo_exact: bool = False,
        unet: dict | None = None,
        sample_steps: int = 100,
        clip_x0: bool = True,
    ):
        """
        Args:
            T: number of diffusion steps (the network sees t = i / T, i = 1..T).
            schedule: betas linear 1e-4..0.02 (Ho et al.) or cosine (Nichol & Dhariwal).
            weighting: training loss; "vlb" (the true bound) or a registered weighting of the
                eps loss (`diffusion.weighting.WEIGHTINGS`: simple, x0, min-snr, ...) with its
                `weighting_options`.
            elbo_exact: elbo() sums all T KL terms (T network calls) instead of estimating the
                sum from one random step per example.
            unet: the U-Net's settings (`nets.unet.UNet` arguments), e.g. {base_channels: 16}.
            sample_steps: default number of sampling steps (any number works, not only T).
            clip_x0: clamp x0_hat to [-1, 1] while sampling (Ho et al.).
        """
        super().__init__(data_shape)
        if T < 2:
            raise UserError(f"ddpm: T must be >= 2, got {T}; fix: e.g. T=1000")
        if weighting != "vlb":
            from diffrep.diffusion.weighting import build_weighting

            self.weighting_fn = build_weighting(weighting, **(weighting_options or {}))
        self.T = T
        self.weighting = weighting
        self.elbo_exact = elbo_exact
        self.diffusion = PixelDiffusion(
            self.data_shape, schedule=schedule, schedule_options={"T": T}, unet=unet,
            clip_x0=clip_x0, sample_steps=sample_steps,
        )  # fmt: skip

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        x0 = batch["x0"]
        if self.weighting == "vlb":
            terms = self.diffusion.ddpm_bound(x0, self.T)
            return {**terms, "loss": terms["total"]}
        terms = self.diffusion.denoising_loss(x0, weighting=self.weighting_fn, T=self.T)
        return {"loss": terms["loss"], "mse": terms["mse"]}

    @torch.no_grad()
    def elbo(self, x0: torch.Tensor, exact: bool | None = None) -> dict[str, torch.Tensor]:
        """-ELBO terms [B] in nats: recon (L_0), diffusion (sum of L_1..L_{T-1}), prior (L_T)."""
        exact = self.elbo_exact if exact is None else exact
        return self.diffusion.ddpm_bound(x0, self.T, exact=exact)
