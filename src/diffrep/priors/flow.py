"""Normalizing-flow prior: a masked autoregressive affine flow (seed 004 sec. 5).

The paper's NF prior is "a 3-step autoregressive affine flow with simple MLP backbones"; here
that is zuko's MAF (Papamakarios et al. 2017): each transform is z -> (z - mu_i(z_<i)) /
s_i(z_<i) with a masked MLP, orders alternating between transforms, onto a N(0, I) base. The
density is exact (change of variables), so "total" is -log p(z) itself.
"""

from __future__ import annotations

import torch

from diffrep.errors import UserError
from diffrep.priors.base import PRIORS, Prior


def _import_zuko():
    try:
        import zuko
    except ImportError:  # optional dependency
        raise UserError(
            "the 'flow' prior needs the optional package zuko; fix: pip install diffrep[flow]"
        ) from None
    return zuko


@PRIORS.register("flow")
class FlowPrior(Prior):
    """MAF prior p(z) with `transforms` affine autoregressive steps and MLPs of width `hidden`."""

    def __init__(self, dim: int, transforms: int = 3, hidden: tuple[int, ...] = (256, 256)):
        super().__init__(dim)
        if transforms < 1:
            raise UserError(f"flow prior: transforms={transforms}; fix: use 1 or more")
        zuko = _import_zuko()
        self.flow = zuko.flows.MAF(
            features=dim, transforms=transforms, hidden_features=tuple(hidden)
        )

    def nll_terms(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        self.check_latent(z)
        return {"total": -self.flow().log_prob(z)}

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, **kw) -> torch.Tensor:
        # Draw the base noise ourselves (zuko's sampler takes no generator), then invert the
        # flow: Z sequential passes per transform, cheap for latent sizes up to a few hundred.
        eps = self.standard_normal(n, generator)  # [n, Z] ~ N(0, I), the MAF base
        return self.flow().transform.inv(eps)
