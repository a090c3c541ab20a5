"""DRL / VDRL: a denoiser conditioned on an encoder's code (seed 001, Abstreiter et al. 2022).

    eq. 2  J_DRL  = E_{t, x0, x_t}[ lambda(t) || s(x_t, t, E(x0)) - grad log p_0t(x_t | x0) ||^2 ]
    eq. 3  J_VDRL = E[ E_{z ~ q(z | x0)} lambda(t) || s(x_t, t, z) - grad log p_0t ||^2 ]
                    + KL(q(z | x0) || N(0, I))
    eq. 4  E(x0) -> E(x0, t): a time-dependent encoder, one code per noise level.

Score vs eps: x_t = alpha_t x0 + sigma_t eps, so p_0t(x_t | x0) = N(alpha_t x0, sigma_t^2 I) and
grad log p_0t(x_t | x0) = -(x_t - alpha_t x0) / sigma_t^2 = -eps / sigma_t. With the score written
as s = -eps_hat / sigma_t,
    lambda(t) ||s - grad log p_0t||^2 = lambda(t) / sigma_t^2 ||eps_hat - eps||^2.
The registry's weightings w(t) multiply the eps error, i.e. lambda(t) = sigma_t^2 w(t): "simple"
(w = 1) is the seed's lambda(t) = sigma_t^2, and the ELBO weighting w = gamma'(t) / 2 is
lambda(t) = sigma_t^2 gamma'(t) / 2 = g(t)^2 / 2 (the VP-SDE's beta(t) / 2; Song et al. 2021's
likelihood weighting), under which E_t[.] with t ~ U[0, 1] is VDM's diffusion term (eq. 17).

The denoiser is the shared `PixelDiffusion` (cond_dim = code size); which noise levels the code
is trained at, hence what it holds (coarse at high noise, detail at low noise), is the weighting:
"high-noise" / "low-noise" from `diffusion.weighting.WEIGHTINGS`. With `view`, the encoder
codes a random view of x0 in training (E(v(x0)) in eq. 2, v a shift / turn / scaling) while the
target stays x0: what the view changes cannot be in the code (`data.views`). Collapse
diagnostics use `self.diffusion` + `encode(x0)` (the posterior mean when variational).
"""

from __future__ import annotations

import torch

from diffrep.data.views import build_view
from diffrep.diffusion import objectives as O
from diffrep.diffusion.denoiser import Denoiser, bind
from diffrep.diffusion.pixel import PixelDiffusion
from diffrep.diffusion.weighting import build_weighting
from diffrep.distributions import gaussian_kl, reparameterise
from diffrep.errors import UserError
from diffrep.methods.base import METHODS, Batch, Method
from diffrep.methods.kl_control import KLControl
from diffrep.nets.encoders import ConvEncoder, GaussianConvEncoder


@METHODS.register("drl")
class DRL(Method):
    #: True on instances with time_dependent=True: encode(x0, t) then depends on t, and probes
    #: (the layering helper's hook, the collapse diagnostics) choose the noise level.
    encode_takes_t = False

    def __init__(
        self,
        data_shape: tuple[int, int, int],
        *,
        code_dim: int = 32,
        width: int = 32,
        weighting: str = "simple",
        weighting_options: dict | None = None,
        t_sampling: str = "uniform",
        variational: bool = False,
        beta: float = 1.0,
        kl_warmup_steps: int = 0,
        free_bits: float = 0.0,
        time_dependent: bool = False,
        encode_t: float = 0.5,
        view: dict | None = None,
        schedule: str = "vdm-linear",
        schedule_options: dict | None = None,
        unet: dict | None = None,
        sample_steps: int = 100,
    ):
        """
        Args:
            code_dim: size of the code E(x0) (of z for VDRL).
            width: channels of the encoder's first conv level.
            weighting, weighting_options: lambda(t) of eq. 2 as an eps weighting (module doc).
            t_sampling: how training t are drawn (`diffusion.weighting.TIME_SAMPLERS`).
            variational: VDRL (eq. 3): Gaussian q(z | x0), reparameterised, KL to N(0, I).
            beta, kl_warmup_steps, free_bits: VDRL's KL in the training loss (`KLControl`:
                weight, linear warm-up, nats floor per dimension); elbo() uses the plain KL.
            time_dependent: eq. 4's E(x0, t) (t embedded in the encoder by FiLM).
            encode_t: the noise level encode(x0) uses for E(x0, t) when no t is given.
            view: in training, the encoder sees a random view of x0 ({shift: pixels, rotate:
                degrees, scale: relative}, `data.views.RandomView`) while the denoiser restores
                x0 itself, so the code cannot hold what the view changes (a novel-view
                bottleneck; None: eq. 2 as is).
            schedule, schedule_options, unet, sample_steps: the shared PixelDiffusion; the
                schedule is fixed by default, so the weighting alone says which t matter.
        """
        super().__init__(data_shape)
        if variational and time_dependent:
            raise UserError(
                "drl: variational and time_dependent together are not supported; "
                "fix: choose one (eq. 3 or eq. 4)"
            )
        if code_dim < 1 or not 0.0 <= encode_t <= 1.0:
            raise UserError(
                f"drl: need code_dim >= 1 and 0 <= encode_t <= 1, got {code_dim}, "
                f"{encode_t}; fix: e.g. code_dim=32, encode_t=0.5"
            )
        self.view = build_view(view)
        self.code_dim, self.variational = code_dim, variational
        self.kl_control = KLControl(beta, kl_warmup_steps, free_bits)
        self.time_dependent, self.encode_t, self.t_sampling = time_dependent, encode_t, t_sampling
        self.weighting = build_weighting(weighting, **(weighting_options or {}))
        self.encode_takes_t = time_dependent
        if variational:  # q(z | x0) = N(mean, diag(exp(logvar)))
            self.encoder = GaussianConvEncoder(self.data_shape, code_dim, width=width)
        else:
            self.encoder = ConvEncoder(
                self.data_shape, code_dim, width, time_embedding=time_dependent
            )
        self.diffusion = PixelDiffusion(
            self.data_shape,
            schedule=schedule,
            schedule_options=schedule_options,
            unet=unet,
            cond_dim=code_dim,
            sample_steps=sample_steps,
        )

    @property
    def bound_is_valid(self) -> bool:  # type: ignore[override]
        # VDRL's elbo() bounds -log p(x); a deterministic code has no prior: -log p(x | E(x)) only
        return self.variational

    def can(self, capability: str) -> bool:
        if capability in ("posterior", "sample") and not self.variational:
            return False  # no q(z | x0), no p(z) to sample codes from
        return super().can(capability)

    # -------------------------------------------------------------- parts

    def posterior(self, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.variational:
            raise UserError("drl: posterior() needs variational=True")
        return self.encoder(x0)  # (mean, logvar) [B, Z] each

    def _code(self, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(z [B, Z], KL(q(z | x0) || N(0, I)) per dimension [B, Z] or None)."""
        if not self.variational:
            return self.encoder(x0), None
        mean, logvar = self.posterior(x0)
        kl = gaussian_kl(mean, logvar, torch.zeros_like(mean), torch.zeros_like(logvar))
        return reparameterise(mean, logvar), kl

    def denoiser_for(self, x0: torch.Tensor, code: torch.Tensor | None = None) -> Denoiser:
        """eps_hat(x_t, t) conditioned on x0's code: fixed, or E(x0, t) at each call's own t."""
        if self.time_dependent:
            return lambda x_t, t, cond=None: self.diffusion.denoiser(x_t, t, self.encoder(x0, t=t))
        return bind(self.diffusion.denoiser, self.encode(x0) if code is None else code)

    # -------------------------------------------------------------- objective

    def _terms(self, x0: torch.Tensor, generator=None) -> dict[str, torch.Tensor]:
        # the encoder's view of x0 (random in training when `view` is set); the target is x0
        x_enc = self.view.encoder_input(x0, self.training, generator)
        z, kl = (None, None) if self.time_dependent else self._code(x_enc)
        out = O.denoising_loss(
            self.denoiser_for(x_enc, z),
            self.diffusion.schedule,
            x0,
            weighting=self.weighting,
            t_sampling=self.t_sampling,
            generator=generator,
        )
        terms = {"diffusion": out["loss"], "mse": out["mse"].detach(), "t": out["t"]}
        if kl is not None:
            terms["kl"], terms["kl_train"] = kl.sum(1), self.kl_control.weight(kl)
        return terms

    def loss(self, batch: Batch, generator: torch.Generator | None = None):
        """eq. 2 / 4 in eps form (+ eq. 3's KL, shaped by `kl_control`) per example [B]."""
        terms = self._terms(batch["x0"], generator)
        terms["loss"] = terms["diffusion"] + terms.get("kl_train", 0.0)
        return terms

    def on_step(self, step: int, total_steps: int) -> None:
        self.kl_control.on_step(step)  # KL warm-up

    @torch.no_grad()
    def elbo(self, x0: torch.Tensor) -> dict[str, torch.Tensor]:
        """VDM's -ELBO of x0 given the code (+ the KL for VDRL: then a bound on -log p(x)).

        VDRL with a `view` encodes a random view of x0 (global RNG), as training did: q(z | v(x0))
        bounds -log p(x0) for each view v, and the denoiser has only seen codes of views (as in
        vae_vdm). The deterministic code stays E(x0), the representation.
        """
        x_enc = self.view(x0) if self.variational else x0
        z, kl = (None, None) if self.time_dependent else self._code(x_enc)
        terms = O.vdm_elbo(self.denoiser_for(x_enc, z), self.diffusion.schedule, x0)
        if kl is not None:
            terms["kl"] = kl.sum(1)
            terms["total"] = terms["total"] + terms["kl"]
        return terms

    # -------------------------------------------------------------- representation & generation

    @torch.no_grad()
    def encode(self, x0: torch.Tensor, t: torch.Tensor | float | None = None) -> torch.Tensor:
        """The code [B, Z]: E(x0), the posterior mean for VDRL, E(x0, t) (t = encode_t if None)."""
        if self.time_dependent:
            t = self.encode_t if t is None else t
            return self.encoder(x0, t=torch.as_tensor(t, dtype=x0.dtype, device=x0.device))
        return self.posterior(x0)[0] if self.variational else self.encoder(x0)

    @torch.no_grad()
    def reconstruct(self, x0: torch.Tensor, generator=None, x_T=None, **kw) -> torch.Tensor:
        """The code fixed, x_T ~ N(0, I) (or given), DDIM by default: what the code determines."""
        if x_T is None:
            x_T = torch.randn(x0.shape, generator=generator).to(x0.device)
        kw.setdefault("sampler", "ddim")
        den = self.denoiser_for(x0)
        return self.diffusion.sample(len(x0), x_T=x_T, generator=generator, denoiser=den, **kw)

    @torch.no_grad()
    def invert(self, x0: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        """DDIM encoding x0 -> x_T given x0's code; reconstruct(x0, x_T=...) maps it back."""
        return self.diffusion.invert(x0, steps=steps, denoiser=self.denoiser_for(x0))

    @torch.no_grad()
    def sample(self, n: int, generator=None, cond: torch.Tensor | None = None, **kw):
        """VDRL: z ~ N(0, I) then the conditional diffusion; any drl: given codes `cond` [n, Z]."""
        if cond is None:
            if not self.variational:
                raise UserError("drl: sampling needs codes (cond=...) or variational=True")
            cond = torch.randn(n, self.code_dim, generator=generator).to(self.device)
        return self.diffusion.sample(n, cond=cond, generator=generator, **kw)
