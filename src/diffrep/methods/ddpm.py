"""DDPM (Ho et al. 2020): T discrete steps, eps-prediction, trained on a weighted eps loss.

Training: lambda(t) ||eps - eps_hat(x_t, t/T)||^2 at one uniform step (L_simple by default,
Ho et al. eq. 14), or the true bound itself (weighting="vlb"). `elbo()` always evaluates the
true variational bound L_0 + sum L_{t-1} + L_T (eq. 5) with a 256-bin discretised Gaussian
L_0, so bits per dim are honest whatever the training loss; the sum over steps is estimated
from one random step per example, or summed exactly (`elbo_exact`, T network calls).
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from diffrep.diffusion import objectives as O
from diffrep.diffusion import samplers as S
from diffrep.diffusion.schedules import build_schedule
from diffrep.errors import UserError
from diffrep.methods.base import METHODS, Batch, Method
from diffrep.nets.unet import UNet


def build_unet(data_shape, width: int, channel_mults, num_res_blocks: int, dropout: float, **kw):
    """The eps network of the pixel-space diffusion methods (shared by ddpm and vdm)."""
    c, h, w = data_shape
    return UNet(
        c,
        base_channels=width,
        channel_mults=tuple(channel_mults),
        num_res_blocks=num_res_blocks,
        dropout=dropout,
        image_size=(h, w),
        **kw,
    )


def check_sampler(sampler: str, steps: int) -> None:
    if sampler not in S.SAMPLERS:
        raise UserError(f"sampler {sampler!r} is unknown; choose one of: {', '.join(S.SAMPLERS)}")
    if steps < 1:
        raise UserError(f"sampling needs steps >= 1, got {steps}; fix: e.g. steps=100")


class PixelDiffusionSampling:
    """sample() and invert() shared by the pixel-space diffusion methods (ddpm, vdm).

    Needs `eps_model`, `schedule`, `sample_steps`, `data_shape`, `device` and `clip_x0`.
    """

    clip_x0: bool = False

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
        """n images in model space from x_T ~ N(0, I): "ancestral" | "ddim" (eta=...) | "ode"."""
        steps = self.sample_steps if steps is None else steps
        check_sampler(sampler, steps)
        if sampler != "ode":
            kw.setdefault("clip_x0", self.clip_x0)
        x = S.sample(
            self.eps_model, self.schedule, (n, *self.data_shape), sampler=sampler, steps=steps,
            generator=generator, progress=progress, device=self.device, **kw,
        )  # fmt: skip
        return x.clamp(-1, 1)

    @torch.no_grad()
    def invert(self, x0: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        """Deterministic DDIM encoding x0 -> x_T [B, C, H, W] (Song et al. 2021a sec. 4.3)."""
        steps = self.sample_steps if steps is None else steps
        check_sampler("ddim", steps)
        return S.ddim_invert(self.eps_model, self.schedule, x0, steps)


@METHODS.register("ddpm")
class DDPM(PixelDiffusionSampling, Method):
    def __init__(
        self,
        data_shape: tuple[int, int, int],
        *,
        T: int = 1000,
        schedule: Literal["ddpm-linear", "cosine"] = "ddpm-linear",
        weighting: Literal["simple", "x0", "min-snr", "truncated-snr", "vlb"] = "simple",
        elbo_exact: bool = False,
        width: int = 32,
        channel_mults: tuple[int, ...] = (1, 2, 2),
        num_res_blocks: int = 1,
        dropout: float = 0.0,
        sample_steps: int = 100,
        clip_x0: bool = True,
    ):
        """
        Args:
            T: number of diffusion steps (the network sees t = i / T, i = 1..T).
            schedule: betas linear 1e-4..0.02 (Ho et al.) or cosine (Nichol & Dhariwal).
            weighting: training loss; "simple" (L_simple), "x0", "min-snr", "truncated-snr"
                (eps losses weighted by SNR functions) or "vlb" (the true bound).
            elbo_exact: elbo() sums all T KL terms (T network calls) instead of estimating the
                sum from one random step per example.
            width, channel_mults, num_res_blocks, dropout: the U-Net.
            sample_steps: default number of sampling steps (any number works, not only T).
            clip_x0: clamp x0_hat to [-1, 1] while sampling (Ho et al.).
        """
        super().__init__(data_shape)
        if T < 2:
            raise UserError(f"ddpm: T must be >= 2, got {T}; fix: e.g. T=1000")
        self.T = T
        self.weighting = weighting
        self.elbo_exact = elbo_exact
        self.sample_steps = sample_steps
        self.clip_x0 = clip_x0
        self.schedule = build_schedule(schedule, T=T)
        self.net = build_unet(self.data_shape, width, channel_mults, num_res_blocks, dropout)

    def eps_model(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(x_t, t)

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        x0 = batch["x0"]
        if self.weighting == "vlb":
            terms = O.ddpm_bound(self.eps_model, self.schedule, self.T, x0)
            return {**terms, "loss": terms["total"]}
        return O.ddpm_eps_loss(self.eps_model, self.schedule, self.T, x0, weighting=self.weighting)

    @torch.no_grad()
    def elbo(self, x0: torch.Tensor, exact: bool | None = None) -> dict[str, torch.Tensor]:
        """-ELBO terms [B] in nats: recon (L_0), diffusion (sum of L_1..L_{T-1}), prior (L_T)."""
        exact = self.elbo_exact if exact is None else exact
        return O.ddpm_bound(self.eps_model, self.schedule, self.T, x0, exact=exact)
