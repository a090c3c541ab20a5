"""PDAE: representations learned from a frozen pre-trained DPM (Zhang, Zhao & Lin 2022; seed 002).

A pre-trained DPM p_theta(x_s | x_t) = N(mu_theta(x_t, t), Sigma_t I), s = t - 1/T, stays frozen.
An encoder z = E_phi(x0) and a gradient estimator G_psi(x_t, z, t) ~ grad_{x_t} log p(z | x_t)
fill its posterior-mean gap by the mean shift of the slides ("Maths behind"):

    p(x_s | x_t, z) = N(mu_theta(x_t, t) + Sigma_t G_psi(x_t, z, t), Sigma_t I).

The sign of the eps shift. mu is affine in the noise prediction: x0_hat = (x_t - sigma_t eps_hat)
/ alpha_t and mu = c_z x_t + c_x x0_hat (VDM eqs. 32-33: c_x = alpha_s (1 - SNR_t / SNR_s),
Sigma_t = sigma_s^2 (1 - SNR_t / SNR_s)), so d mu / d eps_hat = -c_x sigma_t / alpha_t and
mu_theta + Sigma_t G is the reverse mean of

    eps_hat(x_t, t, z) = eps_theta(x_t, t) - k_t G_psi(x_t, z, t),
    k_t = alpha_t Sigma_t / (c_x sigma_t) = alpha_t sigma_s^2 / (alpha_s sigma_t)
        = sqrt(alpha_t) sqrt(1 - abar_t) / beta_t * Sigma_t          (DDPM notation).

A minus sign: the slides' loss ||eps - eps_theta + sqrt(alpha_t) sqrt(1 - abar_t) / beta_t
Sigma_t G||^2 is exactly ||eps - eps_hat(x_t, t, z)||^2 (`diffusion.denoiser.guided`).
As 1/T -> 0, k_t -> sigma_t and eps_hat = -sigma_t (grad log p(x_t) + grad log p(z | x_t)) =
-sigma_t grad log p(x_t | z): Bayes' rule for scores, the form of classifier guidance (Dhariwal &
Nichol 2021). With "+", G would learn -grad log p(z | x_t) and a true gradient would push the
reverse mean away from z (tests/test_pdae.py checks both signs on a 2-class Gaussian mixture).

Training (the slides' L(psi, phi)): E_{x0, i, eps}[lambda_t ||eps - eps_hat(x_t, t, E_phi(x0))||^2]
with t = i / T and lambda_t = SNR^g / (1 + SNR) (weighting "pdae", g = 0.1 as in the authors'
code). Only E_phi (the shared ConvEncoder) and G_psi train; the DPM is a `FrozenDPM`
(`frozen = True`: out of the optimizer, EMA and checkpoint; rebuilt from `base`). G_psi reuses the
frozen U-Net's time embedding and down path (`nets.gradient_estimator`); a DPM without a diffrep
U-Net (diffusers) gets a trainable one for that part. With `g_scale="alpha"` its network outputs
G / alpha_t: the true gradient shrinks like alpha_t at high noise, its quotient stays O(1).

encode: z = E_phi(x0). reconstruct: DDIM inversion of x0 with z, then DDIM with z (`use_z=False`:
the frozen DPM alone, at the same steps). sample: DDIM with z given, or z from the latent prior
(`prior`, fitted to the codes by `diffrep fit-prior`). encode, invert and decode are what
`diffusion.editing` needs: interpolate (slerp of x_T, lerp of z) and manipulate (z + a *
direction, e.g. a linear probe's, decoded from the same x_T).
"""

from __future__ import annotations

import torch

from diffrep.data.views import build_view
from diffrep.diffusion import samplers as S
from diffrep.diffusion.denoiser import guided, unconditional
from diffrep.diffusion.objectives import denoising_loss
from diffrep.diffusion.process import _bc, alpha_sigma
from diffrep.diffusion.weighting import build_weighting
from diffrep.errors import UserError
from diffrep.frozen import load_frozen
from diffrep.methods.base import METHODS, Batch, Method
from diffrep.nets.encoders import ConvEncoder
from diffrep.nets.gradient_estimator import GradientEstimator
from diffrep.nets.unet import UNet
from diffrep.priors import build_prior


def shift_coefficient(schedule, t: torch.Tensor, step: float) -> torch.Tensor:
    """k_t = alpha_t sigma_s^2 / (alpha_s sigma_t), s = t - step: the eps shift of Sigma_t G."""
    a_t, s_t = alpha_sigma(schedule(t.to(torch.float64)))
    a_s, s_s = alpha_sigma(schedule((t.to(torch.float64) - step).clamp(min=0.0)))
    return torch.where(s_t > 0, a_t * s_s**2 / (a_s * s_t.clamp(min=1e-300)), 0.0)  # 0 at t = 0


@METHODS.register("pdae")
class PDAE(Method):
    bound_is_valid = False  # a weighted denoising loss, not a bound

    def __init__(
        self,
        data_shape: tuple[int, int, int],
        *,
        base: str,
        z_dim: int = 32,
        encoder_width: int = 32,
        snr_power: float = 0.1,
        T: int | None = None,
        backbone: dict | None = None,
        z_map: bool = True,
        g_scale: str = "none",
        view: dict | None = None,
        sample_steps: int = 100,
        prior: str | None = None,
        prior_args: dict | None = None,
    ):
        """
        Args:
            base: the frozen DPM, "run:DIR" (a diffrep ddpm/vdm run) or "diffusers:DIR".
            z_dim, encoder_width: the code and the ConvEncoder E_phi.
            snr_power: g in lambda_t = SNR^g / (1 + SNR).
            T: training times t = i / T and the reverse step 1/T of the mean shift (None: the
                frozen DPM's T for a discrete-time DPM, else 1000).
            backbone: UNet arguments of G_psi's own down path when the DPM has no diffrep U-Net.
            z_map: z also as a spatial map at G_psi's bottleneck (`nets.gradient_estimator`);
                False: by FiLM only, as in the slides.
            g_scale: "none": G_psi is the network's output itself (the slides); "alpha": G_psi =
                alpha_t F_psi(x_t, z, t) (see `gradient`).
            view: in training, E_phi sees a random view of x0 ({shift, rotate, scale},
                `data.views.RandomView`) while G_psi fills the gap for x0 itself, so z cannot
                hold what the view changes (position, angle, size). None: the slides' loss.
            sample_steps: default DDIM steps (reconstruct, sample, `diffusion.editing`).
            prior, prior_args: a latent prior over z (set by `diffrep fit-prior`; None: none).
        """
        super().__init__(data_shape)
        self.frozen = load_frozen(base)
        if tuple(self.frozen.data_shape) != self.data_shape:
            raise UserError(
                f"pdae: the DPM in {base!r} models {tuple(self.frozen.data_shape)} images but "
                f"the data are {self.data_shape}; fix: train it on this dataset"
            )
        self.T = T or self.frozen.T or 1000  # FrozenDPM.T: 0 for a continuous-time DPM
        self.reverse_step = 1.0 / self.T
        self.latent_dim = z_dim
        self.sample_steps = sample_steps
        self.weighting = build_weighting("pdae", snr_power=snr_power)
        self.encoder = ConvEncoder(self.data_shape, z_dim, width=encoder_width)
        self.view = build_view(view)
        if g_scale not in ("alpha", "none"):
            raise UserError(f"pdae: g_scale must be 'alpha' or 'none', got {g_scale!r}")
        self.g_scale = g_scale
        if g_scale == "alpha":  # a marker in the checkpoint: G's weights are for this scale
            self.register_buffer("g_scale_alpha", torch.ones(()))
        if not isinstance(self.frozen.net, UNet):  # e.g. diffusers: G gets its own down path
            c, h, w = self.data_shape
            self.backbone = UNet(c, image_size=(h, w), **(backbone or {}))
        self.G = GradientEstimator(
            self._backbone(), z_dim, image_shape=self.data_shape if z_map else None
        )
        self.prior = build_prior(prior, z_dim, **(prior_args or {})) if prior else None

    @staticmethod
    def load_hint(missing: list[str], unexpected: list[str]) -> str | None:
        """The fix for a checkpoint trained with the other `z_map` or `g_scale`."""
        for keys, value in ((missing, "false"), (unexpected, "true")):
            if any(k.startswith("G.z_map.") for k in keys):
                return f"set `z_map: {value}` under `method:` in the run's config.yaml"
        for keys, value in ((missing, "none"), (unexpected, "alpha")):
            if "g_scale_alpha" in keys:
                return f"set `g_scale: {value}` under `method:` in the run's config.yaml"
        return None

    def _backbone(self) -> UNet:
        return self.backbone if hasattr(self, "backbone") else self.frozen.net

    @property
    def schedule(self):
        return self.frozen.schedule

    def gradient(self, x_t: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """G_psi(x_t, z, t) ~ grad_{x_t} log p(z | x_t) [B, C, H, W].

        By Tweedie, grad log p(z | x_t) = alpha_t / sigma_t^2 (E[x0 | x_t, z] - E[x0 | x_t]): where
        the noise is high (sigma_t ~ 1) it is alpha_t (~0.01 at t = 0.95 of a linear-beta DDPM)
        times an O(1) difference of images. With g_scale "alpha" the network F_psi outputs
        G / alpha_t, an O(1) target at every t, so that its errors where it hardly learns (the
        loss there is ~SNR small) are shrunk by alpha_t instead of shifting the mean at full size.
        """
        return _bc(self.g_factor(t), x_t) * self.G(x_t, t, z, self._backbone())

    def g_factor(self, t: torch.Tensor) -> torch.Tensor:
        """G_psi / F_psi [B]: alpha_t ("alpha") or 1 ("none")."""
        if self.g_scale == "none":
            return torch.ones_like(t, dtype=torch.float64)
        return alpha_sigma(self.schedule(t.to(torch.float64)))[0]

    def shift_scale(self, t: torch.Tensor) -> torch.Tensor:
        return shift_coefficient(self.schedule, t, self.reverse_step)

    def denoiser(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None):
        """eps_theta(x_t, t) - k_t G_psi(x_t, cond, t); the frozen DPM alone when cond is None."""
        if cond is None:
            return self.frozen.denoiser(x_t, t)
        if hasattr(self, "backbone"):  # G has its own down path (a diffusers DPM)
            eps_theta = unconditional(self.frozen.denoiser)
            return guided(eps_theta, self.gradient, self.shift_scale)(x_t, t, cond)
        # A diffrep run's eps_theta is its U-Net, whose down path G reuses: run it once.
        net = self.frozen.net
        down = net.down_path(x_t, t)
        g = self.G(x_t, t, cond, net, down=down)
        return net.head(*down) - _bc(self.shift_scale(t) * self.g_factor(t), x_t) * g

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        x0 = batch["x0"]
        z = self.encoder(self.view.encoder_input(x0, self.training))  # the target stays x0
        out = denoising_loss(
            self.denoiser, self.schedule, x0, cond=z, weighting=self.weighting,
            T=self.T,
        )  # fmt: skip
        return {"loss": out["loss"], "mse": out["mse"]}

    def encode(self, x0: torch.Tensor) -> torch.Tensor:
        return self.encoder(x0)

    @torch.no_grad()
    def invert(self, x0: torch.Tensor, z: torch.Tensor | None, steps: int | None = None):
        """Deterministic DDIM encoding x0 -> x_T with the code z (None: the frozen DPM alone)."""
        return S.ddim_invert(self.denoiser, self.schedule, x0, steps or self.sample_steps, cond=z)

    @torch.no_grad()
    def decode(self, x_T: torch.Tensor, z: torch.Tensor | None, steps: int | None = None, **kw):
        """DDIM from x_T with the code z (None: unconditional) -> x0 in [-1, 1]."""
        steps = steps or self.sample_steps
        return S.ddim(self.denoiser, self.schedule, x_T, steps, cond=z, **kw).clamp(-1, 1)

    @torch.no_grad()
    def reconstruct(self, x0, generator=None, *, steps: int | None = None, use_z: bool = True):
        z = self.encode(x0) if use_z else None
        return self.decode(self.invert(x0, z, steps), z, steps)

    @torch.no_grad()
    def sample(self, n, generator=None, *, z=None, x_T=None, steps: int | None = None, **kw):
        """n images from x_T ~ N(0, I) (or given) and z (given, or drawn from the prior)."""
        if z is None:
            if self.prior is None:
                raise UserError(
                    "pdae: sampling needs codes z or a latent prior; fix: `diffrep fit-prior RUN "
                    "--prior diffusion`, or pass z"
                )
            z = self.prior.sample(n, generator=generator)
        if x_T is None:
            gdev = generator.device if generator is not None else self.device
            x_T = torch.randn((n, *self.data_shape), generator=generator, device=gdev)
        return self.decode(x_T.to(self.device), z.to(self.device), steps, generator=generator, **kw)
