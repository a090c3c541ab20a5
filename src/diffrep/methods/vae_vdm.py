"""VAE-VDM: a VAE whose decoder p(x | w) is a conditional VDM (seed 000).

    -log p(x) <= E_q(w|x)[ L_VDM(x | w) ] + KL(q(w | x) || p(w))            (seed 000, L_VAE')

L_VDM(x | w) = recon + prior + diffusion is VDM's bound (Kingma et al. 2021 eqs. 8, 11, 17) with
every denoiser call given the code w [B, Z]; q(w | x) is a diagonal Gaussian (the shared conv
encoder), p(w) any registered prior (gaussian, flow, diffusion; the KL is analytic for the
Gaussian, else the single-sample estimate log q(w|x) + nll_prior(w), seed 004 eq. 18). With
beta = 1 the loss *is* the bound, so `elbo()` gives honest bits per dim (beta = 0 claims none).

Posterior collapse (the poster: "encoder KL divergence falls to 0") and its mitigations:
- training replaces the KL by `KLControl`'s term: beta (the poster's public code used 1e4), a
  linear warm-up over `kl_warmup_steps`, free bits per dimension (Kingma et al. 2016);
- `cond_t_range`: the decoder sees w only for t in [t_min, t_max] (a null code elsewhere), so
  the code can only carry what those noise levels need (`PixelDiffusion.cond_t_range`);
- decoder capacity: `unet` (a smaller U-Net leaves more to the code), `encoder_width`;
- `aux_weight`: an auxiliary DRL term (seed 001 eq. 2, eps form),
  aux_weight * lambda(t) ||eps - eps_hat(x_t, t, c)||^2 with `aux_weighting` (default
  "high-noise") and c the posterior mean (`aux_code: mean`, the representation the probes
  read; "sample": the w of the bound), through the decoder or, with `aux_unet`, a U-Net of its
  own (then the decoder is trained by the bound alone). The ELBO weights the high-noise steps,
  where a code that names the digit helps most, by gamma'(t) / 2 ~ 0, so under the ELBO alone
  a semantic code earns almost nothing; the extra term pays for it there. With a `view`, this
  made the code semantic on MNIST (README). A training term only: `elbo()` is the bound of the
  same q and decoder, whatever trained them.
`diffrep.eval.collapse` measures how much the decoder uses w (the shuffle test).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch

from diffrep.data.views import build_view
from diffrep.diffusion import objectives as O
from diffrep.diffusion.denoiser import bind
from diffrep.diffusion.pixel import PixelDiffusion
from diffrep.diffusion.weighting import build_weighting
from diffrep.distributions import gaussian_log_prob, reparameterise
from diffrep.errors import UserError
from diffrep.methods.base import METHODS, Batch, Method
from diffrep.methods.kl_control import KLControl
from diffrep.nets.encoders import GaussianConvEncoder
from diffrep.priors import build_prior


@METHODS.register("vae_vdm")
class VAEVDM(Method):
    def __init__(
        self,
        data_shape: tuple[int, int, int],
        *,
        latent_dim: int = 16,
        encoder_width: int = 32,
        encoder_lr_scale: float = 1.0,
        prior: str = "gaussian",
        prior_args: dict | None = None,
        beta: float = 1.0,
        kl_warmup_steps: int = 0,
        free_bits: float = 0.0,
        cond_t_range: tuple[float, float] | None = None,
        view: dict | None = None,
        aux_weight: float = 0.0,
        aux_weighting: str = "high-noise",
        aux_code: Literal["mean", "sample"] = "mean",
        aux_unet: dict | None = None,
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
            latent_dim, encoder_width: size of w; channels of the encoder's first level.
            encoder_lr_scale: the encoder's learning rate relative to the decoder's (a slower
                encoder does not blow up its KL in the first steps at a VDM's learning rate).
            prior, prior_args: a registered prior p(w) and its arguments.
            beta, kl_warmup_steps, free_bits: the KL's training term (`KLControl`); the ELBO
                always has beta = 1. beta = 0: an unregularised autoencoder, no bound claimed.
            cond_t_range: (t_min, t_max): w conditions the decoder only there (None: every t).
            view: in training, q(w | .) sees a random view of x ({shift, rotate, scale},
                `data.views.RandomView`) while the decoder models x itself. Any q gives a bound,
                so the loss stays one on -log p(x); elbo() and nll_iw() encode a view too,
                encode() (the representation) x itself.
            aux_weight, aux_weighting, aux_code: the auxiliary DRL term's weight (0: none),
                lambda(t) (`diffusion.weighting.WEIGHTINGS`) and code ("mean" | "sample");
                module doc.
            aux_unet: None: the DRL term goes through the decoder itself; a dict: through a
                separate U-Net with these arguments (DRL's denoiser, fixed vdm-linear schedule),
                so the decoder is trained by the bound alone.
            schedule ... sample_steps: the decoder, as for `vdm` (same names and meanings).
        """
        super().__init__(data_shape)
        self.latent_dim = latent_dim
        self.kl_control = KLControl(beta, kl_warmup_steps, free_bits)
        self.encoder = GaussianConvEncoder(self.data_shape, latent_dim, width=encoder_width)
        if not encoder_lr_scale > 0:
            raise UserError(
                f"vae_vdm: encoder_lr_scale must be > 0, got {encoder_lr_scale}; fix: e.g. 0.2"
            )
        self.encoder_lr_scale = float(encoder_lr_scale)
        self.view = build_view(view)
        if not aux_weight >= 0:
            raise UserError(f"vae_vdm: aux_weight must be >= 0, got {aux_weight}; fix: e.g. 1.0")
        self.aux_weight, self.aux_weighting = float(aux_weight), build_weighting(aux_weighting)
        if aux_code not in ("mean", "sample"):
            raise UserError(f"vae_vdm: aux_code must be 'mean' or 'sample', got {aux_code!r}")
        self.aux_code = aux_code
        self.aux_diffusion = None  # the DRL term's own denoiser, when not the decoder
        if aux_unet is not None:
            if self.aux_weight == 0:
                raise UserError("vae_vdm: aux_unet is the DRL term's U-Net, but aux_weight is 0; "
                                "fix: set aux_weight (e.g. 100) or drop aux_unet")  # fmt: skip
            self.aux_diffusion = PixelDiffusion(
                self.data_shape, schedule="vdm-linear", unet=aux_unet, cond_dim=latent_dim
            )
        self.prior = build_prior(prior, latent_dim, **dict(prior_args or {}))
        self.kl_control.check_per_dim(self.prior.has_kl_per_dim, f"the {prior!r} prior")
        self.vdm_options = dict(T=T, t_sampling=t_sampling, schedule_grad=schedule_grad)
        self.diffusion = PixelDiffusion(
            self.data_shape, schedule=schedule, unet=unet, cond_dim=latent_dim,
            cond_t_range=cond_t_range, sample_steps=sample_steps,
            schedule_options={"gamma_min": gamma_min, "gamma_max": gamma_max},
        )  # fmt: skip

    @property
    def bound_is_valid(self) -> bool:  # type: ignore[override]
        return self.kl_control.beta > 0 and self.prior.bound_is_valid

    @property
    def schedule(self):
        return self.diffusion.schedule

    def on_step(self, step: int, total_steps: int) -> None:
        self.kl_control.on_step(step)

    def param_groups(self):
        if self.encoder_lr_scale == 1.0:
            return super().param_groups()  # one group: runs from before the option resume
        enc = {id(p) for p in self.encoder.parameters()}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in enc]
        return [
            {"name": "encoder", "params": list(self.encoder.parameters()),
             "lr_scale": self.encoder_lr_scale},
            {"name": "decoder and prior", "params": rest, "lr_scale": 1.0},
        ]  # fmt: skip

    # -------------------------------------------------------------- objective

    def posterior(self, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(x0)  # (mean, logvar) [B, Z] each

    def _terms(self, x0: torch.Tensor, generator=None, x_enc: torch.Tensor | None = None):
        """({"recon", "prior", "diffusion", "kl", ...} [B], KL per dimension [B, Z] or None, w,
        the posterior mean); q(w | x_enc) when given (a view of x0), else q(w | x0)."""
        mean, logvar = self.posterior(x0 if x_enc is None else x_enc)
        w = reparameterise(mean, logvar)  # [B, Z]
        terms = self.diffusion.vdm_elbo(x0, cond=w, generator=generator, **self.vdm_options)
        terms.pop("total")  # recon + prior + diffusion: L_VDM(x | w)
        terms["kl"], kl_dims, own = self.prior.kl_terms(w, mean, logvar)
        terms.update({f"w_prior_{k}": v for k, v in own.items()})  # ("prior" is the VDM's)
        return terms, kl_dims, w, mean

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        x0 = batch["x0"]
        x_enc = self.view.encoder_input(x0, self.training)
        terms, kl_dims, w, mean = self._terms(x0, x_enc=x_enc)
        kl_train = self.kl_control.loss_term(terms, kl_dims)
        loss = terms["recon"] + terms["prior"] + terms["diffusion"] + kl_train
        if self.aux_weight > 0:  # seed 001 eq. 2; the decoder's schedule gets no gradient
            code = mean if self.aux_code == "mean" else w
            part = self.aux_diffusion or self.diffusion
            terms["aux"] = O.denoising_loss(
                bind(part.denoiser, code), part.schedule, x0, weighting=self.aux_weighting
            )["loss"]
            loss = loss + self.aux_weight * terms["aux"]
        return {"loss": loss, **terms}

    @torch.no_grad()
    def elbo(self, x0: torch.Tensor, generator=None) -> dict[str, torch.Tensor]:
        """-ELBO terms [B] in nats, beta = 1 (one w, one t per example: unbiased); `generator`
        draws the diffusion's (t, eps) (the view and w come from the global RNG).

        With a `view`, q(w | x) is the encoder of a random view of x, as in training: for each
        view v, q(w | v(x)) gives a bound, so their average is one. The decoder has only seen
        codes of views; codes of x itself (never resampled) cost a trained one ~125 nats per
        MNIST image (README, VAE-VDM).
        """
        terms = self._terms(x0, generator, x_enc=self.view(x0))[0]  # (x0 itself if no view)
        terms["total"] = terms["recon"] + terms["prior"] + terms["diffusion"] + terms["kl"]
        return terms

    @torch.no_grad()
    def nll_iw(self, x0: torch.Tensor, k: int = 16, seed: int = 0) -> torch.Tensor:
        """-log (1/k) sum_j p(w_j) exp(-L_VDM(x | w_j)) / q(w_j | x), w_j ~ q(w | x) [B].

        Every L_VDM(x | w_j) uses the same (t, eps) draws (common random numbers), so only the
        code varies. exp(-L_VDM) is not an unbiased estimate of p(x | w): a diagnostic of how
        loose the ELBO's KL is, not a certified bound (hence no `log_joint` for the suite).
        """
        mean, logvar = self.posterior(self.view(x0))  # one view for all k codes
        logw = []
        for _ in range(k):  # k codes; each is one ELBO evaluation
            w = reparameterise(mean, logvar)
            g = torch.Generator(x0.device).manual_seed(seed)
            vdm = self.diffusion.vdm_elbo(x0, cond=w, generator=g, **self.vdm_options)["total"]
            log_q = gaussian_log_prob(w, mean, logvar)
            logw.append(-vdm - self.prior.nll_terms(w)["total"] - log_q)
        return -(torch.logsumexp(torch.stack(logw).double(), 0) - math.log(k))

    # -------------------------------------------------------------- representation & generation

    @torch.no_grad()
    def encode(self, x0: torch.Tensor) -> torch.Tensor:
        return self.posterior(x0)[0]

    @torch.no_grad()
    def reconstruct(self, x0: torch.Tensor, generator: torch.Generator | None = None):
        """A sample of p(x | w) with w the posterior mean of x0 (what the code pins down)."""
        return self.diffusion.sample(x0.shape[0], cond=self.encode(x0), generator=generator)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        *,
        sampler: str = "ancestral",
        steps: int | None = None,
        **kw: Any,
    ) -> torch.Tensor:
        """w ~ p(w), then x ~ p(x | w) (seed 000's guided generation) with the decoder's
        sampler ("ancestral" | "ddim" | "ode"); x_T, progress, ... pass through."""
        w = self.prior.sample(n, generator=generator).to(self.device)
        return self.diffusion.sample(
            n, cond=w, sampler=sampler, steps=steps, generator=generator, **kw
        )

    @torch.no_grad()
    def invert(self, x0: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        """Deterministic DDIM encoding x0 -> x_T given the image's own code."""
        return self.diffusion.invert(x0, cond=self.encode(x0), steps=steps)
