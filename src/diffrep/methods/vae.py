"""Variational autoencoder with a pluggable prior (seed 003 sec. VAE; seed 004 eqs. 2, 17-20).

    log p(x) >= ELBO = E_q(z|x)[ log p(x|z) ] - E_q(z|x)[ log q(z|x) - log p(z) ]

Training replaces the KL by `KLControl`'s term (beta, KL warm-up, free bits per dimension;
`diffrep.methods.kl_control`); `elbo` always uses the true KL with beta = 1.

The decoder likelihood is discretised to the 256 grey levels (logistic or Gaussian), so the
negative ELBO bounds -log P(x) of the 8-bit data and converts to bits per dim. The prior supplies
-log p(z) (or an upper bound on it, for the diffusion prior): the Gaussian prior's KL is analytic,
other priors use the single-sample estimate log q(z|x) + nll_prior(z), which keeps the bound valid.
"""

from __future__ import annotations

import torch

from diffrep.distributions import (
    LIKELIHOOD_CHANNELS,
    Likelihood,
    pixel_log_prob,
    pixel_mean,
    reparameterise,
)
from diffrep.errors import UserError
from diffrep.methods.base import METHODS, Batch, Method, named_options
from diffrep.methods.kl_control import KLControl
from diffrep.nets.encoders import ConvDecoder, GaussianConvEncoder
from diffrep.priors import build_prior


@METHODS.register("vae")
class VAE(Method):
    def __init__(
        self,
        data_shape: tuple[int, int, int],
        *,
        latent_dim: int = 16,
        width: int = 32,
        likelihood: Likelihood = "logistic",
        prior: str = "gaussian",
        prior_args: dict | None = None,
        beta: float = 1.0,
        kl_warmup_steps: int = 0,
        free_bits: float = 0.0,
    ):
        """
        Args:
            latent_dim: size of z.
            width: channels of the first conv level (doubles per level, up to 4x).
            likelihood: decoder p(x|z): discretised "logistic" or "gaussian" (valid bounds on
                the 8-bit data), or "bernoulli" on intensities (not a bound; labelled so).
            prior: a registered prior (`diffrep.priors.PRIORS`): gaussian, flow, diffusion.
            prior_args: constructor arguments of the prior.
            beta: weight of the KL in the training loss (beta-VAE); evaluation uses beta = 1.
            kl_warmup_steps: the KL weight ramps linearly from 0 to beta over these steps.
            free_bits: floor in nats per latent dimension on the batch-mean KL in the training
                loss (Kingma et al. 2016); needs a prior with a per-dimension KL (gaussian).
        """
        super().__init__(data_shape)
        if latent_dim < 1:  # (width: ConvEncoder; beta: KLControl)
            raise UserError(
                f"vae: latent_dim must be >= 1, got latent_dim={latent_dim}; fix: e.g. 16"
            )
        c = self.data_shape[0]
        self.latent_dim = latent_dim
        self.likelihood = likelihood
        self.kl_control = KLControl(beta, kl_warmup_steps, free_bits)
        self.encoder = GaussianConvEncoder(self.data_shape, latent_dim, width=width)
        self.decoder = ConvDecoder(
            latent_dim, self.data_shape, LIKELIHOOD_CHANNELS[likelihood] * c, width=width
        )
        self.prior = build_prior(prior, latent_dim, **dict(prior_args or {}))
        self.kl_control.check_per_dim(self.prior.has_kl_per_dim, f"the {prior!r} prior")

    @property
    def bound_is_valid(self) -> bool:  # type: ignore[override]
        return self.likelihood != "bernoulli" and self.prior.bound_is_valid

    @property
    def log_joint_exact(self) -> bool:  # type: ignore[override]
        return bool(self.prior.exact)  # the diffusion prior: log p_hat(z) is one weighted path

    # -------------------------------------------------------------- parts

    def posterior(self, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(x0)  # (mean, logvar) [B, Z] each, logvar clamped

    def log_likelihood(self, x0: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x | z) per example [B] in nats."""
        return pixel_log_prob(self.likelihood, x0, self.decoder(z))

    def log_joint(self, x0: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x | z) + log p_hat(z) [B]: exp of it is an unbiased estimate of p(x, z)
        (exact for exact priors; one latent-chain path for the diffusion prior), which is what
        the importance-weighted NLL (`diffrep.eval.likelihood.iw_nll`) needs."""
        return self.log_likelihood(x0, z) + self.prior.log_p_hat(z)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return pixel_mean(self.likelihood, self.decoder(z))

    # -------------------------------------------------------------- objective

    @property
    def beta(self) -> float:
        return self.kl_control.beta

    def on_step(self, step: int, total_steps: int) -> None:
        self.kl_control.on_step(step)

    def _terms(self, x0: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """({"recon", "kl", ...} [B], the KL per dimension [B, Z] or None)."""
        mean, logvar = self.posterior(x0)
        z = reparameterise(mean, logvar)
        terms: dict[str, torch.Tensor] = {"recon": -self.log_likelihood(x0, z)}  # [B]
        kl, kl_dims, own = self.prior.kl_terms(z, mean, logvar)  # seed 004 eq. 18 if no closed form
        terms.update({f"prior_{k}": v for k, v in own.items()})
        terms["kl"] = kl
        return terms, kl_dims

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        terms, kl_dims = self._terms(batch["x0"])
        terms["loss"] = terms["recon"] + self.kl_control.loss_term(terms, kl_dims)
        return terms

    @torch.no_grad()
    def elbo(self, x0: torch.Tensor) -> dict[str, torch.Tensor]:
        terms = self._terms(x0)[0]
        terms["total"] = terms["recon"] + terms["kl"]  # the true KL, beta = 1
        return terms

    # -------------------------------------------------------------- representation & generation

    @torch.no_grad()
    def encode(self, x0: torch.Tensor) -> torch.Tensor:
        return self.posterior(x0)[0]

    @torch.no_grad()
    def reconstruct(self, x0: torch.Tensor, generator: torch.Generator | None = None):
        return self.decode(self.posterior(x0)[0])

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, **kw) -> torch.Tensor:
        z = self.prior.sample(n, generator=generator, **kw).to(self.device)
        return self.decode(z)

    def sample_options(self) -> set[str]:
        return named_options(self.prior.sample)  # sampling options are the prior's
