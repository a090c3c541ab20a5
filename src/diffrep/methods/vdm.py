"""Variational Diffusion Model (Kingma et al. 2021), unconditional, in pixel space.

-log p(x) <= recon + prior + diffusion: VDM's 256-bin categorical decoder from z_0, the KL of
q(z_1 | x) to N(0, I), and the continuous-time diffusion loss 1/2 gamma'(t) ||eps - eps_hat||^2
(eq. 17) with a learned schedule gamma(t) (or its T-step version, T > 0). The loss *is* the
bound, so `loss()["loss"]` and `elbo()["total"]` are the same estimator (nats per example).
The schedule and U-Net are the shared `PixelDiffusion` part.
"""

from __future__ import annotations

from typing import Literal

import torch

from diffrep.diffusion.pixel import PixelDiffusion
from diffrep.errors import UserError
from diffrep.methods.base import METHODS, Batch
from diffrep.methods.pixel_base import PixelDiffusionMethod


@METHODS.register("vdm")
class VDM(PixelDiffusionMethod):
    def __init__(
        self,
        data_shape: tuple[int, int, int],
        *,
        schedule: Literal["learned-linear", "learned-net", "vdm-linear"] = "learned-linear",
        gamma_min: float = -13.3,
        gamma_max: float = 5.0,
        T: int = 0,
        t_sampling: Literal["low-discrepancy", "antithetic", "uniform"] = "low-discrepancy",
        schedule_grad: Literal["elbo", "variance"] = "elbo",
        unet: dict | None = None,
        sample_steps: int = 100,
    ):
        """
        Args:
            schedule: gamma(t) = -logSNR(t): learned line (VDM default), learned monotone
                network (endpoints fixed at gamma_min/gamma_max) or the fixed line.
            gamma_min, gamma_max: gamma(0) and gamma(1) (initial values when learned).
            T: 0 for continuous time, else the T-step loss (VDM eq. 13).
            t_sampling: how the batch's times are drawn (low-discrepancy: VDM's sampler).
            schedule_grad: "variance" trains the learned-net schedule's shape to minimise the
                loss variance (VDM sec. 5.2); "elbo" trains everything on the bound.
            unet: the U-Net's settings (`nets.unet.UNet` arguments), e.g. {base_channels: 16,
                fourier_exponents: [6, 7]} (VDM's input features for fine bins).
            sample_steps: default number of sampling steps.
        """
        super().__init__(data_shape)
        if T < 0:
            raise UserError(f"vdm: T must be 0 (continuous time) or >= 1, got {T}")
        if schedule_grad == "variance" and schedule != "learned-net":
            raise UserError(
                "vdm: schedule_grad='variance' trains the shape of a learned-net schedule; "
                "fix: set schedule=learned-net or schedule_grad=elbo"
            )
        self.T = T
        self.t_sampling = t_sampling
        self.schedule_grad = schedule_grad
        self.diffusion = PixelDiffusion(
            self.data_shape, schedule=schedule, unet=unet, sample_steps=sample_steps,
            schedule_options={"gamma_min": gamma_min, "gamma_max": gamma_max},
        )  # fmt: skip

    def _terms(self, x0: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.diffusion.vdm_elbo(
            x0, T=self.T, decoder="categorical", t_sampling=self.t_sampling,
            schedule_grad=self.schedule_grad,
        )  # fmt: skip

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        terms = self._terms(batch["x0"])
        return {"loss": terms.pop("total"), **terms}

    @torch.no_grad()
    def elbo(self, x0: torch.Tensor) -> dict[str, torch.Tensor]:
        """-ELBO terms [B] in nats (one t per example: an unbiased estimate of the bound)."""
        return self._terms(x0)
