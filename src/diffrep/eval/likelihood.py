"""Likelihood: bits per dim from the ELBO, its named terms, and the importance-weighted NLL.

`method.elbo(x0)["total"]` is the negative ELBO of the discrete 8-bit data in nats (see
`diffrep.methods.base`); bits per dim divide it by D ln 2.

The importance-weighted estimate (Burda, Grosse, Salakhutdinov 2016, eq. 8)

    -log p(x) ~= -log (1/k) sum_j p(x, z_j) / q(z_j | x),   z_j ~ q(z | x),

is an upper bound on -log p(x) in expectation that tightens as k grows (k = 1 is the ELBO). It
needs the encoder density (`method.posterior(x0) -> (mean, logvar)`, a diagonal Gaussian) and
`method.log_joint(x0, z)`, the log of an *unbiased estimate* of p(x, z): log p(x | z) + log p(z)
for exact priors. A prior with latent variables of its own (the diffusion prior's chain
z_{1:T}) is importance-weighted jointly with z (`Prior.log_p_hat`):

    w_j = p(x | z0_j) p(z0_j, z_{1:T,j}) / (q(z0_j | x) q(z_{1:T,j} | z0_j)),   one path per j,

so the estimate is still a valid upper bound that tightens with k (flagged "nll_iw_latent_chain"
when `method.log_joint_exact` is False: at the same k it is looser than with an exact density).
Plugging a *bound* on log p(z) into eq. 8 instead is not a bound: by Jensen the average of
exp(noisy bound) rewards its noise and lands below -log p(x) (`plugin_iw_nll_not_a_bound`).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from diffrep.data import bits_per_dim
from diffrep.distributions import gaussian_log_prob
from diffrep.eval.batching import batches, model_input


@torch.no_grad()
def elbo_metrics(method, images_uint8: np.ndarray, batch_size: int = 256) -> dict:
    """{"bpd", "elbo_nats", "elbo_terms": {name: mean nats}, "bound_is_valid"} (needs elbo)."""
    if not method.can("elbo"):
        return {}
    sums: dict[str, float] = {}
    for sl in batches(len(images_uint8), batch_size, "elbo"):
        terms = method.elbo(model_input(images_uint8[sl], method.device))
        for name, v in terms.items():
            if torch.is_tensor(v) and v.dim() == 1:  # per-example terms only
                sums[name] = sums.get(name, 0.0) + float(v.double().sum())
    n = len(images_uint8)
    means = {k: v / n for k, v in sums.items()}
    total = means["total"]
    return {
        "bpd": bits_per_dim(total, method.dim),
        "elbo_nats": total,
        "elbo_terms": means,
        "bound_is_valid": bool(method.bound_is_valid),
    }


def can_iw(method) -> bool:
    return method.can("posterior") and callable(getattr(method, "log_joint", None))


@torch.no_grad()
def iw_log_weights(
    method, x0: torch.Tensor, k: int, chunk: int, generator=None, log_joint=None
) -> torch.Tensor:
    """log w [k, B] = log_joint(x0, z_j) - log q(z_j | x0), z_j ~ q(z | x0), j = 1..k, float64.

    `chunk` importance samples of the B examples go through `log_joint` at once.
    """
    log_joint = method.log_joint if log_joint is None else log_joint
    mean, logvar = method.posterior(x0)  # [B, Z]
    b = x0.shape[0]
    logw = []
    for s in range(0, k, chunk):
        m = min(chunk, k - s)
        eps = torch.randn((m, *mean.shape), generator=generator, device="cpu").to(mean.device)
        z = mean + torch.exp(0.5 * logvar) * eps  # [m, B, Z]
        log_q = gaussian_log_prob(z, mean, logvar)  # [m, B]
        xr = x0.unsqueeze(0).expand(m, *x0.shape).reshape(m * b, *x0.shape[1:])
        log_j = log_joint(xr, z.reshape(m * b, -1)).view(m, b)
        logw.append(log_j.double() - log_q.double())
    return torch.cat(logw)


def iw_nll_per_example(
    method, images_uint8: np.ndarray, k: int, batch_size: int = 256, generator=None, log_joint=None
) -> np.ndarray:
    """Per-example -log (1/k) sum_j w_j [N] in nats (`iw_log_weights` in batches)."""
    out = []
    for sl in batches(len(images_uint8), batch_size, "iw-nll"):
        x0 = model_input(images_uint8[sl], method.device)  # [B, C, H, W]
        chunk = max(1, batch_size // x0.shape[0])
        logw = iw_log_weights(method, x0, k, chunk, generator, log_joint)  # [k, B]
        out.append((math.log(k) - torch.logsumexp(logw, 0)).cpu().numpy())
    return np.concatenate(out)


def iw_nll(
    method,
    images_uint8: np.ndarray,
    k: int = 64,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
) -> dict:
    """{"nll_iw_nats", "nll_iw_se_nats", "nll_iw_bpd", "nll_iw_k", "nll_iw_latent_chain"}.

    An upper bound on -log p(x) in expectation (Burda et al. eq. 8; module docstring), its
    standard error over the examples, and whether the prior's latent chain was weighted too.
    Decodes at most `batch_size` (example, sample) pairs at once.
    """
    if not can_iw(method):
        return {}
    per = iw_nll_per_example(method, images_uint8, k, batch_size, generator)
    nll = float(per.mean())
    # log_joint is exact, or one random path of a latent chain weighted with z (still a bound)
    chain = not bool(getattr(method, "log_joint_exact", False))
    return {
        "nll_iw_nats": nll,
        "nll_iw_se_nats": float(per.std(ddof=1) / math.sqrt(len(per))) if len(per) > 1 else 0.0,
        "nll_iw_bpd": bits_per_dim(nll, method.dim),
        "nll_iw_k": int(k),
        "nll_iw_latent_chain": chain,
    }


def plugin_iw_nll_not_a_bound(
    method,
    images_uint8: np.ndarray,
    k: int = 64,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
) -> float:
    """Eq. 8 with the prior's *bound* -nll_terms(z)["total"] plugged in for log p(z), in nats.

    NOT a bound on -log p(x) when the prior is not exact: E exp(-L_hat(z)) > p(z), so this
    lands below the true NLL and does not converge to it as k grows. Kept only to show the
    difference; evaluation reports `iw_nll`.
    """

    def log_joint(x0, z):
        return method.log_likelihood(x0, z) - method.prior.nll_terms(z)["total"]

    per = iw_nll_per_example(method, images_uint8, k, batch_size, generator, log_joint)
    return float(per.mean())
