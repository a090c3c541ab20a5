"""A prior over another method's codes: two-stage generative modelling of any encoder.

    z = base.encode(x0),   p(z) = a registered prior (gaussian, flow, diffusion; seed 004),
    x = base.decode(z)     (sampling, where the base can decode a code)

`diffrep fit-prior RUN --prior flow` builds one from a trained run whose method encodes but has
no swappable latent prior (a VAE's own prior is swapped in place instead): the base keeps its
trained weights and the prior is fitted to the codes of the training split by maximum likelihood
(`diffrep.priors.fit.fit_prior`). Trained from scratch (`method: {name: latent_prior, ...}`), the
loss is the base's own loss plus the prior's NLL of the base's codes with the gradient stopped at
the code, so the prior follows the encoder without shaping it.
"""

from __future__ import annotations

from typing import Any

import torch

from diffrep.errors import UserError
from diffrep.methods.base import METHODS, Batch, Method, build_method
from diffrep.priors import build_prior


@METHODS.register("latent_prior")
class LatentPrior(Method):
    def __init__(
        self,
        data_shape: tuple[int, int, int],
        *,
        base: str = "dae",
        base_args: dict | None = None,
        code_dim: int = 16,
        prior: str = "gaussian",
        prior_args: dict | None = None,
    ):
        """
        Args:
            base: the registered method whose encode(x0) gives the code.
            base_args: its constructor arguments.
            code_dim: the size of encode(x0) [B, code_dim].
            prior: a registered prior (`diffrep.priors.PRIORS`) over the code.
            prior_args: its constructor arguments.
        """
        super().__init__(data_shape)
        if code_dim < 1:
            raise UserError(f"latent_prior: code_dim must be >= 1, got {code_dim}; fix: e.g. 16")
        if base == "latent_prior":
            raise UserError("latent_prior: the base cannot itself be latent_prior; fix: base=dae")
        self.base = build_method(base, data_shape, **dict(base_args or {}))
        if not self.base.can("encode"):
            raise UserError(f"latent_prior: method {base!r} does not encode; fix: e.g. base=dae")
        self.prior = build_prior(prior, code_dim, **dict(prior_args or {}))

    def can(self, capability: str) -> bool:
        if capability == "sample":  # only where the base turns a code back into an image
            return callable(getattr(self.base, "decode", None))
        if capability in ("encode", "posterior", "reconstruct"):
            return self.base.can(capability)
        return super().can(capability)

    @property
    def encode_takes_t(self) -> bool:  # type: ignore[override]
        return bool(getattr(self.base, "encode_takes_t", False))

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        terms = dict(self.base.loss(batch))
        code = self.base.encode(batch["x0"]).detach().flatten(1)  # [B, code_dim]
        prior_nll = self.prior.nll_terms(code)["total"]  # [B] nats
        terms["prior_nll"] = prior_nll
        terms["loss"] = terms["loss"] + prior_nll
        return terms

    def encode(self, x0: torch.Tensor, **kw: Any) -> torch.Tensor:
        return self.base.encode(x0, **kw)

    def posterior(self, x0: torch.Tensor):
        return self.base.posterior(x0)

    def reconstruct(self, x0: torch.Tensor, generator: torch.Generator | None = None):
        return self.base.reconstruct(x0, generator=generator)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, **kw: Any) -> torch.Tensor:
        if not self.can("sample"):
            raise UserError(
                f"latent_prior: the base {type(self.base).__name__} cannot decode a code, so "
                "there is nothing to sample; fix: use a base with decode(z), e.g. vae"
            )
        z = self.prior.sample(n, generator=generator, **kw).to(self.device)
        return self.base.decode(z)
