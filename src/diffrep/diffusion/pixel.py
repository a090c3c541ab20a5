"""The pixel-space diffusion part: a noise schedule gamma(t) and a U-Net denoiser, optionally
conditioned on a code. What ddpm and vdm compose, and what the conditional methods reuse as a
decoder p(x | w) (VAE-VDM, seed 000), a code-conditioned denoiser (DRL, seed 001), or not at all
when the denoiser is frozen (PDAE, seed 002, composes the objectives and samplers directly).

The network never sees the schedule: it gets (x_t, t, cond) with t in [0, 1]. The part owns the
pairing and exposes the objectives and samplers of `diffrep.diffusion` bound to it:

    part = PixelDiffusion((1, 28, 28), schedule="learned-linear", unet={"base_channels": 16},
                          cond_dim=16)
    part.vdm_elbo(x0, cond=w)          # {"recon", "prior", "diffusion", "total"} [B] nats
    part.denoising_loss(x0, cond=w, weighting="elbo")
    part.sample(8, cond=w[:8], sampler="ddim", steps=50)
    part.invert(x0, cond=w)            # deterministic DDIM encoding x0 -> x_T

Its only parameters are the U-Net's and, for a learned schedule, the schedule's.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from diffrep.diffusion import objectives as O
from diffrep.diffusion import samplers as S
from diffrep.diffusion.denoiser import Denoiser, switch
from diffrep.diffusion.schedules import build_schedule
from diffrep.errors import UserError
from diffrep.nets import NETWORKS
from diffrep.nets import unet as _unet  # noqa: F401  (registers "unet")
from diffrep.validate import check_kwargs


class PixelDiffusion(nn.Module):
    def __init__(
        self,
        data_shape: tuple[int, int, int],
        *,
        schedule: str = "learned-linear",
        schedule_options: dict | None = None,
        unet: dict | None = None,
        cond_dim: int | None = None,
        cond_t_range: tuple[float, float] | None = None,
        clip_x0: bool = False,
        sample_steps: int = 100,
    ):
        """
        Args:
            data_shape: (C, H, W) of the images, in model space (-1, 1).
            schedule, schedule_options: a registered schedule and its arguments.
            unet: keyword arguments of `nets.unet.UNet` (base_channels, channel_mults,
                num_res_blocks, dropout, attn_resolutions, cond_mode, fourier_exponents, ...).
            cond_dim: size of the code the denoiser is conditioned on (None: unconditional).
            cond_t_range: (t_min, t_max): the code reaches the network only for t in this range;
                elsewhere it gets a null code (zeros), so the code can only describe what the
                decoder needs at those noise levels (`denoiser.switch`). None: every t.
            clip_x0: clamp x0_hat to [-1, 1] in the ancestral and DDIM samplers (Ho et al.).
            sample_steps: default number of sampling / inversion steps.
        """
        super().__init__()
        c, h, w = self.data_shape = tuple(int(s) for s in data_shape)
        if cond_dim is not None and cond_dim < 1:
            raise UserError(f"cond_dim must be >= 1 (or None), got {cond_dim}")
        unet = dict(unet or {})
        fixed = ("in_channels", "out_channels", "image_size", "cond_dim")
        check_kwargs(NETWORKS.get("unet"), unet, where="unet", fixed=fixed)
        if cond_t_range is not None:
            if cond_dim is None:
                raise UserError("cond_t_range needs a conditional part; fix: set cond_dim")
            lo, hi = (float(v) for v in cond_t_range)
            if not 0.0 <= lo < hi <= 1.0:
                raise UserError(
                    f"cond_t_range must be (t_min, t_max) with 0 <= t_min < t_max <= 1, got "
                    f"{tuple(cond_t_range)}; fix: e.g. cond_t_range=[0.5, 1.0]"
                )
            cond_t_range = (lo, hi)
        self.cond_dim = cond_dim
        self.cond_t_range = cond_t_range
        self.clip_x0 = clip_x0
        self.sample_steps = sample_steps
        self.schedule = build_schedule(schedule, **(schedule_options or {}))
        self.net = NETWORKS.build("unet", c, image_size=(h, w), cond_dim=cond_dim, **unet)

    def denoiser(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        """eps_hat(x_t, t, cond): x_t [B, C, H, W], t [B] in [0, 1], cond [B, cond_dim].

        An unconditional part ignores `cond`; a conditional one requires it (the U-Net says so).
        With `cond_t_range`, examples whose t is outside it get the null code instead.
        """
        if cond is None or self.cond_t_range is None:
            return self.net(x_t, t, cond)
        return switch(self.net, self._null_code, *self.cond_t_range)(x_t, t, cond)

    def _null_code(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.net(x_t, t, torch.zeros_like(cond))

    # -------------------------------------------------------------- objectives (nats [B])

    def vdm_elbo(self, x0: torch.Tensor, cond: torch.Tensor | None = None, **kw: Any):
        """VDM's -ELBO terms given the code (Kingma et al. 2021 eqs. 8, 17; seed 000's L_VDM)."""
        return O.vdm_elbo(self.denoiser, self.schedule, x0, cond=cond, **kw)

    def ddpm_bound(self, x0: torch.Tensor, T: int, cond: torch.Tensor | None = None, **kw: Any):
        """Ho et al.'s T-step bound L_0 + sum L_{t-1} + L_T (eq. 5) given the code."""
        return O.ddpm_bound(self.denoiser, self.schedule, T, x0, cond=cond, **kw)

    def denoising_loss(self, x0: torch.Tensor, cond: torch.Tensor | None = None, **kw: Any):
        """lambda(t) ||eps - eps_hat||^2 at one t per example (`objectives.denoising_loss`)."""
        return O.denoising_loss(self.denoiser, self.schedule, x0, cond=cond, **kw)

    def per_t_loss(self, x0, t, cond=None, eps=None, generator=None) -> torch.Tensor:
        """||eps - eps_hat(x_t, t, cond)||^2 [B] at given t (and eps)."""
        return O.per_t_loss(
            self.denoiser, self.schedule, x0, t, cond=cond, eps=eps, generator=generator
        )

    # -------------------------------------------------------------- sampling

    def _steps(self, sampler: str, steps: int | None) -> int:
        S.SAMPLERS.get(sampler)  # a clear error for an unknown name
        steps = self.sample_steps if steps is None else steps
        if steps < 1:
            raise UserError(f"sampling needs steps >= 1, got {steps}; fix: e.g. steps=100")
        return steps

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        cond: torch.Tensor | None = None,
        x_T: torch.Tensor | None = None,
        sampler: str = "ancestral",
        steps: int | None = None,
        generator: torch.Generator | None = None,
        progress: Any = None,
        denoiser: Denoiser | None = None,
        **kw: Any,
    ) -> torch.Tensor:
        """n images in model space, clamped to [-1, 1], from x_T (drawn ~ N(0, I) if None).

        sampler: "ancestral" | "ddim" (eta=...) | "ode"; cond [n, cond_dim] for a conditional part.
        denoiser: sample with this eps_hat(x_t, t, cond) on the part's schedule instead of its
        own (a method's wrapper of it, e.g. a code that depends on t).
        """
        steps = self._steps(sampler, steps)
        if sampler != "ode":
            kw.setdefault("clip_x0", self.clip_x0)
        dev = next(self.net.parameters()).device
        x = S.sample(
            denoiser or self.denoiser, self.schedule, (n, *self.data_shape), sampler=sampler,
            steps=steps, generator=generator, progress=progress, device=dev, x_T=x_T, cond=cond,
            **kw,
        )  # fmt: skip
        return x.clamp(-1, 1)

    @torch.no_grad()
    def invert(
        self,
        x0: torch.Tensor,
        *,
        cond: torch.Tensor | None = None,
        steps: int | None = None,
        denoiser: Denoiser | None = None,
    ) -> torch.Tensor:
        """Deterministic DDIM encoding x0 -> x_T [B, C, H, W] (Song et al. 2021a sec. 4.3)."""
        steps = self._steps("ddim", steps)
        return S.ddim_invert(denoiser or self.denoiser, self.schedule, x0, steps, cond=cond)
