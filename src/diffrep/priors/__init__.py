"""Latent priors p(z) for VAEs (seed 004): `gaussian`, `flow`, `diffusion`.

Each module registers one prior in `PRIORS`; `build_prior(name, dim, **kwargs)` builds one.
`fit_prior` fits a prior to a frozen VAE's aggregate posterior (two-stage training) and
`swap_prior` puts it into a trained VAE for evaluation.
"""

from diffrep.priors import diffusion, flow, gaussian  # noqa: F401  (registration)
from diffrep.priors.base import PRIORS, Prior, build_prior  # noqa: F401
from diffrep.priors.diffusion import DiffusionPrior  # noqa: F401
from diffrep.priors.fit import aggregate_posterior, fit_prior, swap_prior  # noqa: F401
from diffrep.priors.flow import FlowPrior  # noqa: F401
from diffrep.priors.gaussian import GaussianPrior  # noqa: F401
