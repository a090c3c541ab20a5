"""Latent health of encoder methods: KL per dimension, active units, I(x; z) under q.

- KL per dimension: E_x KL(q(z_d | x) || N(0, 1)) = E_x 0.5 (mu_d^2 + s_d^2 - 1 - log s_d^2).
  Against the standard normal even for learned priors: it is the per-dimension rate w.r.t. a
  fixed reference, the usual posterior-collapse diagnostic (collapsed dimensions have ~0).
- Information per unit: I_q(x; z_d) ~= 1/2 [log(A_d + E_x s_d^2) - E_x log s_d^2] in nats, with
  A_d = Cov_x(E_q[z_d]) (Burda et al. 2016's activity statistic) and s_d^2 the posterior
  variance: the aggregate marginal q(z_d) replaced by the Gaussian of the same variance (an upper
  bound; exact for a linear-Gaussian model). It tracks the KL bars: KL_d = I_d + KL(q(z_d) ||
  N(0, 1)) when the aggregate is Gaussian.
- Active units: a unit is active when it carries more than `active_unit_bits` (default half a
  bit: its signal A_d exceeds its posterior noise E s_d^2). Burda et al.'s absolute rule
  A_d > 0.01 ignores the noise: a VAE 1500 steps into training keeps A_d = 0.012-0.05 on
  collapsed units with s_d^2 ~ 0.9 (0.007-0.03 nats each, KL bars at ~0) and counted them all
  active. For deterministic encoders (no posterior, no noise scale) the absolute rule is applied
  to encode(x).
- Mutual information under the joint q(x, z) = p_data(x) q(z | x) (Hoffman & Johnson 2016;
  He et al. 2019, eq. 6):

      I_q(x; z) = E_x E_{q(z|x)}[log q(z | x)] - E_{q(z)}[log q(z)],
      q(z) ~= (1/N) sum_n q(z | x_n)   (aggregate posterior over N evaluation examples),

  with one z_n ~ q(z | x_n) per example and log q(z_n | x_n) evaluated at that same z_n. Each
  term log q(z_n | x_n) - log (1/N) sum_m q(z_n | x_m) <= log N (the sum contains m = n), so the
  estimate cannot exceed log N ("mi_max"); near it the estimate is saturated and I(x; z) may be
  larger. (Using the analytic entropy for the first term instead, as before, mixes two
  different Monte Carlo samples and overshot log N by its noise, sqrt(Z / 2N) nats.)
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
    """(units with Cov_x(E_q[z_d]) > threshold, Cov_x(E_q[z_d]) per dimension [Z]) (Burda)."""
    var = mean.var(0, unbiased=True)
    return int((var > threshold).sum()), var


def unit_information(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """I_q(x; z_d) per dimension [Z] in nats (Gaussian estimate, module docstring)."""
    signal = mean.var(0, unbiased=True)  # A_d
    noise = logvar.exp().mean(0)  # E_x s_d^2
    return 0.5 * (torch.log(signal + noise) - logvar.mean(0))


def mutual_information(
    mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
) -> float:
    """I_q(x; z) in nats from posterior parameters [N, Z] (He et al. 2019, eq. 6); <= log N."""
    n, d = mean.shape
    std = torch.exp(0.5 * logvar)
    eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
    z = mean + std * eps  # [N, Z]
    # log q(z_n | x_n) at the same z_n as the aggregate term below
    log_q_own = -0.5 * (eps**2 + logvar + math.log(2 * math.pi)).sum(1)  # [N]
    chunk = max(1, 4_000_000 // max(1, n * d))  # bound the [chunk, N, Z] temporary
    log_qz = []
    for s in range(0, n, chunk):
        zi = z[s : s + chunk, None, :]  # [c, 1, Z]
        log_q = -0.5 * (((zi - mean) / std) ** 2 + logvar + math.log(2 * math.pi)).sum(-1)
        log_qz.append(torch.logsumexp(log_q, dim=1) - math.log(n))  # [c]
    return float((log_q_own - torch.cat(log_qz)).mean())


def latent_health(
    method,
    images_uint8: np.ndarray,
    batch_size: int = 256,
    threshold: float = 0.01,
    mi_examples: int = 2000,
    seed: int = 0,
    active_unit_bits: float = 0.5,
) -> dict:
    """{"kl_per_dim", "kl_total", "active_units", "unit_information", "unit_variance", "mi",
    "mi_max"} or a subset. With a posterior a unit is active when I_q(x; z_d) exceeds
    `active_unit_bits`; without one (deterministic codes) when Cov_x(code_d) > `threshold`."""
    if method.can("posterior"):
        mean, logvar = posterior_stats(method, images_uint8, batch_size)
        kl = kl_per_dim(mean, logvar)
        info = unit_information(mean, logvar)
        g = torch.Generator().manual_seed(seed)
        m = min(mi_examples, len(mean))
        idx = torch.randperm(len(mean), generator=g)[:m]
        return {
            "kl_per_dim": kl.tolist(),
            "kl_total": float(kl.sum()),
            "active_units": int((info > active_unit_bits * math.log(2)).sum()),
            "active_unit_nats": active_unit_bits * math.log(2),
            "latent_dim": int(mean.shape[1]),
            "unit_information": info.tolist(),
            "unit_variance": mean.var(0, unbiased=True).tolist(),
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
