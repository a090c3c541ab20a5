"""The prior contract: a distribution p(z) over a VAE's latent z [B, Z] (seed 004).

The VAE's ELBO (seed 004 eqs. 17-19) is

    log p(x) >= E_q[ log p(x|z) - log q(z|x) + log p(z) ]

so a prior only has to provide an upper bound on -log p(z) per example: exact for the Gaussian
and flow priors, the DDPM variational bound for the diffusion prior (eq. 20). Priors return it
as named per-example terms in nats, with the bound under "total".
"""

from __future__ import annotations

import math

import torch
from torch import nn

from diffrep.distributions import gaussian_log_prob
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
        # Parameter-free priors still need to know their device for sampling.
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    def nll_terms(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-example terms in nats; "total" >= -log p(z) (equality when `exact`)."""
        raise NotImplementedError

    def sample(self, n: int, generator: torch.Generator | None = None, **kw) -> torch.Tensor:
        raise NotImplementedError

    def log_p_hat(self, z: torch.Tensor) -> torch.Tensor:
        """log w [B] of a random weight w >= 0 with E[w] = p(z): an unbiased density estimate.

        What importance weighting needs (`diffrep.eval.likelihood.iw_nll`): an average of such
        weights is unbiased for p(z), so -log of a k-sample average is an upper bound on
        -log p(z) in expectation (Jensen) that tightens with k. Exact priors return log p(z)
        itself; a prior with latent variables of its own (the diffusion prior's chain) returns
        one importance-weighted path. -nll_terms(z)["total"] is *not* such a weight when it is
        only a bound: exp of a noisy lower bound on log p(z) overshoots p(z) on average.
        """
        if not self.exact:
            raise NotImplementedError(f"{type(self).__name__} has no unbiased density estimate")
        return -self.nll_terms(z)["total"]

    def kl(self, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor | None:
        """Analytic KL(q(z|x) || p(z)) per example where it exists, else None."""
        return None

    def kl_per_dim(self, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor | None:
        """Analytic KL per latent dimension [B, Z] (sums to `kl`) where the prior factorises
        over dimensions, else None (free bits need it: `diffrep.methods.kl_control`)."""
        return None

    @property
    def has_kl_per_dim(self) -> bool:
        return type(self).kl_per_dim is not Prior.kl_per_dim

    def kl_terms(self, z: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor):
        """KL(q(z|x) || p(z)) for q = N(mean, diag(exp(logvar))) and z ~ q, all [B, Z]:
        (kl [B], kl per dimension [B, Z] or None, the prior's own terms {name: [B]}).

        Analytic where the prior has it; otherwise the single-sample estimate
        log q(z|x) - log p(z) = log q(z|x) + nll_terms(z)["total"] (seed 004 eq. 18), whose
        expectation is the KL (an upper bound on it for a bound-valued prior), so an ELBO built
        on it stays a bound. The prior's terms are then its other entries (e.g. L_T, L_0).
        """
        kl_dims = self.kl_per_dim(mean, logvar)
        if kl_dims is not None:
            return kl_dims.sum(-1), kl_dims, {}
        kl = self.kl(mean, logvar)
        if kl is not None:
            return kl, None, {}
        nll = self.nll_terms(z)
        own = {k: v for k, v in nll.items() if k != "total"}
        return gaussian_log_prob(z, mean, logvar) + nll["total"], None, own

    def check_latent(self, z: torch.Tensor) -> None:
        if z.dim() != 2 or z.shape[1] != self.dim:
            raise ValueError(
                f"prior over {self.dim}-D z expects [B, {self.dim}], got {list(z.shape)}"
            )

    def standard_normal(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        """eps ~ N(0, I) [n, Z] on the prior's device, from `generator` when given."""
        device = generator.device if generator is not None else self.device
        return torch.randn(n, self.dim, generator=generator, device=device).to(self.device)


def build_prior(name: str, dim: int, **kwargs) -> Prior:
    """Build a registered prior over `dim`-D latents; kwargs are checked against its signature."""
    import diffrep.priors  # noqa: F401  (populates the registry)

    return PRIORS.build(name, dim, **kwargs)
