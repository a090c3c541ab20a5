"""Likelihood: bits per dim from the ELBO, its named terms, and the importance-weighted NLL.

`method.elbo(x0)["total"]` is the negative ELBO of the discrete 8-bit data in nats (see
`diffrep.methods.base`); bits per dim divide it by D ln 2.

The importance-weighted estimate (Burda, Grosse, Salakhutdinov 2016, eq. 8)

    -log p(x) ~= -log (1/k) sum_j p(x, z_j) / q(z_j | x),   z_j ~ q(z | x),

is an upper bound on -log p(x) in expectation that tightens as k grows (k = 1 is the ELBO). It
needs the encoder density (`method.posterior(x0) -> (mean, logvar)`, a diagonal Gaussian) and
`method.log_joint(x0, z) = log p(x | z) + log p(z)`. Unless the method says its log joint is
exact (`method.log_joint_exact`, e.g. False for the diffusion prior, whose log p(z) is itself a
bound), the result is flagged with "nll_iw_nats_is_bound".
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
def iw_nll(
    method,
    images_uint8: np.ndarray,
    k: int = 64,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
) -> dict:
    """{"nll_iw_nats", "nll_iw_bpd", "nll_iw_k", "nll_iw_nats_is_bound"} (Burda et al. eq. 8).

    Decodes at most `batch_size` (example, sample) pairs at once: k samples of each example in
    chunks of m = batch_size // B.
    """
    if not can_iw(method):
        return {}
    dev = method.device
    total = 0.0
    for sl in batches(len(images_uint8), batch_size, "iw-nll"):
        x0 = model_input(images_uint8[sl], dev)  # [B, C, H, W]
        mean, logvar = method.posterior(x0)  # [B, Z]
        b = x0.shape[0]
        chunk = max(1, batch_size // b)
        logw = []
        for s in range(0, k, chunk):
            m = min(chunk, k - s)
            eps = torch.randn((m, *mean.shape), generator=generator, device="cpu").to(dev)
            z = mean + torch.exp(0.5 * logvar) * eps  # [m, B, Z]
            log_q = gaussian_log_prob(z, mean, logvar)  # [m, B]
            xr = x0.unsqueeze(0).expand(m, *x0.shape).reshape(m * b, *x0.shape[1:])
            log_j = method.log_joint(xr, z.reshape(m * b, -1)).view(m, b)
            logw.append((log_j - log_q).double())
        logw = torch.cat(logw)  # [k, B]
        total += float(-(torch.logsumexp(logw, 0) - math.log(k)).sum())
    nll = total / len(images_uint8)
    exact = bool(getattr(method, "log_joint_exact", False))
    return {
        "nll_iw_nats": nll,
        "nll_iw_bpd": bits_per_dim(nll, method.dim),
        "nll_iw_k": int(k),
        "nll_iw_nats_is_bound": not exact,
    }
