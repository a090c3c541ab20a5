"""The classical VAE prior p(z) = N(0, I) (seed 004 sec. 2.1), with its analytic KL."""

from __future__ import annotations

import torch

from diffrep.priors.base import LOG_2PI, PRIORS, Prior


@PRIORS.register("gaussian")
class GaussianPrior(Prior):
    """p(z) = N(0, I)."""

    def nll_terms(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        self.check_latent(z)
        # -log N(z; 0, I) = 0.5 * (||z||^2 + Z log 2 pi)  [B]
        nll = 0.5 * (z.pow(2).sum(-1) + z.shape[-1] * LOG_2PI)
        return {"total": nll}

    def sample(self, n: int, generator: torch.Generator | None = None, **kw) -> torch.Tensor:
        return self.standard_normal(n, generator)

    def kl(self, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        # KL(N(m, e^lv) || N(0, 1)) = 0.5 * sum(m^2 + e^lv - 1 - lv)  [B]
        return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)

    def kl_per_dim(self, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        # 0.5 * (m_j^2 + e^lv_j - 1 - lv_j)  [B, Z]; its sum equals `kl` bit for bit (x 0.5 exact)
        return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)
