"""Priors p(z) over a VAE's latent z [B, Z] (seed 004, Wehenkel & Louppe 2021).

The VAE's ELBO (seed 004 eq. 17-19) is

    log p(x) >= E_q[ log p(x|z) - log q(z|x) + log p(z) ]

so a prior only has to provide an upper bound on -log p(z) per example: exact for the Gaussian
and flow priors, the DDPM variational bound for the diffusion prior (eq. 20). Priors return it
as named per-example terms in nats, with the bound under "total".
"""

from __future__ import annotations

import math

import torch
from torch import nn

from diffrep.registry import Registry

PRIORS: Registry[Prior] = Registry("prior")

LOG_2PI = math.log(2 * math.pi)


class Prior(nn.Module):
    """A distribution over z [B, Z]."""

    #: True when nll_terms(z)["total"] is exactly -log p(z) (not only a bound).
    exact: bool = True
    #: False when the training objective is not a bound (e.g. a "simple" diffusion loss).
    bound_is_valid: bool = True

    def __init__(self, dim: int):
        super().__init__()
        self.dim = int(dim)

    def nll_terms(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-example terms in nats; "total" >= -log p(z) (equality when `exact`)."""
        raise NotImplementedError

    def sample(self, n: int, generator: torch.Generator | None = None, **kw) -> torch.Tensor:
        raise NotImplementedError

    def kl(self, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor | None:
        """Analytic KL(q(z|x) || p(z)) per example where it exists, else None."""
        return None


@PRIORS.register("gaussian")
class GaussianPrior(Prior):
    """p(z) = N(0, I)."""

    def nll_terms(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        # -log N(z; 0, I) = 0.5 * (||z||^2 + Z log 2 pi)
        nll = 0.5 * (z.pow(2).sum(-1) + z.shape[-1] * LOG_2PI)
        return {"total": nll}

    def sample(self, n: int, generator: torch.Generator | None = None, **kw) -> torch.Tensor:
        device = generator.device if generator is not None else torch.device("cpu")
        return torch.randn(n, self.dim, generator=generator, device=device)

    def kl(self, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        # KL(N(m, e^lv) || N(0, 1)) = 0.5 * sum(m^2 + e^lv - 1 - lv)  [B]
        return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)


def build_prior(name: str, dim: int, **kwargs) -> Prior:
    return PRIORS.build(name, dim, **kwargs)
