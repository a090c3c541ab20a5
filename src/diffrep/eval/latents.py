"""Latent health of encoder methods: KL per dimension, active units, I(x; z) under q.

- KL per dimension: E_x KL(q(z_d | x) || N(0, 1)) = E_x 0.5 (mu_d^2 + s_d^2 - 1 - log s_d^2).
  Against the standard normal even for learned priors: it is the per-dimension rate w.r.t. a
  fixed reference, the usual posterior-collapse diagnostic (collapsed dimensions have ~0).
- Active units (Burda et al. 2016, sec. 5.2): A_u = Cov_x(E_{q(u|x)}[u]), a unit is active when
  A_u > 0.01. For deterministic encoders (no posterior) the criterion is applied to encode(x).
- Mutual information under the joint q(x, z) = p_data(x) q(z | x) (Hoffman & Johnson 2016;
  He et al. 2019, eq. 6):

      I_q(x; z) = E_x E_{q(z|x)}[log q(z | x)] - E_{q(z)}[log q(z)],
      q(z) ~= (1/N) sum_n q(z | x_n)   (aggregate posterior over N evaluation examples),

  with one z per example. The estimate cannot exceed log N (reported as "mi_max").
"""

from __future__ import annotations

import math

import numpy as np
import torch

from diffrep.eval.batching import batches, encode_features, model_input


@torch.no_grad()
def posterior_stats(method, images_uint8: np.ndarray, batch_size: int = 256):
    """Posterior means and log-variances [N, Z] as float64 tensors."""
    means, logvars = [], []
    for sl in batches(len(images_uint8), batch_size, "posterior"):
        m, lv = method.posterior(model_input(images_uint8[sl], method.device))
        means.append(m.reshape(m.shape[0], -1).double().cpu())
        logvars.append(lv.reshape(lv.shape[0], -1).double().cpu())
    return torch.cat(means), torch.cat(logvars)


def kl_per_dim(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """E_x KL(q(z_d|x) || N(0,1)) [Z] in nats."""
    return (0.5 * (mean**2 + torch.expm1(logvar) - logvar)).mean(0)


def active_units(mean: torch.Tensor, threshold: float = 0.01) -> tuple[int, torch.Tensor]:
    """(number of active units, Cov_x(E_q[z_d]) per dimension [Z])."""
    var = mean.var(0, unbiased=True)
    return int((var > threshold).sum()), var


def mutual_information(
    mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
) -> float:
    """I_q(x; z) in nats from posterior parameters [N, Z] (He et al. 2019, eq. 6)."""
    n, d = mean.shape
    std = torch.exp(0.5 * logvar)
    z = mean + std * torch.randn(mean.shape, generator=generator, dtype=mean.dtype)  # [N, Z]
    # E_x E_q[log q(z|x)] = -H[q(z|x)] averaged over x: analytic for a diagonal Gaussian
    neg_entropy = float((-0.5 * d * math.log(2 * math.pi) - 0.5 * (1 + logvar).sum(1)).mean())
    chunk = max(1, 4_000_000 // max(1, n * d))  # bound the [chunk, N, Z] temporary
    log_qz = []
    for s in range(0, n, chunk):
        zi = z[s : s + chunk, None, :]  # [c, 1, Z]
        log_q = -0.5 * (((zi - mean) / std) ** 2 + logvar + math.log(2 * math.pi)).sum(-1)
        log_qz.append(torch.logsumexp(log_q, dim=1) - math.log(n))  # [c]
    return neg_entropy - float(torch.cat(log_qz).mean())


def latent_health(
    method,
    images_uint8: np.ndarray,
    batch_size: int = 256,
    threshold: float = 0.01,
    mi_examples: int = 2000,
    seed: int = 0,
) -> dict:
    """{"kl_per_dim", "kl_total", "active_units", "unit_variance", "mi", "mi_max"} or a subset."""
    if method.can("posterior"):
        mean, logvar = posterior_stats(method, images_uint8, batch_size)
        kl = kl_per_dim(mean, logvar)
        au, var = active_units(mean, threshold)
        g = torch.Generator().manual_seed(seed)
        m = min(mi_examples, len(mean))
        idx = torch.randperm(len(mean), generator=g)[:m]
        return {
            "kl_per_dim": kl.tolist(),
            "kl_total": float(kl.sum()),
            "active_units": au,
            "latent_dim": int(mean.shape[1]),
            "unit_variance": var.tolist(),
            "mi": mutual_information(mean[idx], logvar[idx], g),
            "mi_max": math.log(m),
        }
    if method.can("encode"):
        codes = torch.from_numpy(encode_features(method, images_uint8, batch_size))
        au, var = active_units(codes, threshold)
        return {
            "active_units": au,
            "latent_dim": int(codes.shape[1]),
            "unit_variance": var.tolist(),
        }
    return {}
