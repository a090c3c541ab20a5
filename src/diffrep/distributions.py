"""Diagonal Gaussians and pixel likelihoods over 8-bit images, all in nats per example.

Images are in model space, x = (2k + 1)/256 - 1 for k in {0..255} (bin width 2/256, centred
bins). The discretised likelihoods assign each of the 256 bins its probability mass, so their
negative log-likelihood is a bound on -log P(k) for the discrete data and turns into bits per
dim directly (`diffrep.data.bits_per_dim`). Edge bins take the whole tail, as in PixelCNN++
(Salimans et al. 2017, eq. 2).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

LOG_2PI = math.log(2 * math.pi)
HALF_BIN = 1.0 / 256  # half the width of one 8-bit bin in model space
# The boundary between the two outermost bins on each side: bin 255 (centre 1 - HALF_BIN) is
# x > EDGE, bin 0 is x < -EDGE. A boundary, not a centre, so inputs near a centre (8-bit data
# after float rounding) pick the same bin whichever way they are off.
EDGE = 1.0 - 2 * HALF_BIN

Likelihood = Literal["logistic", "gaussian", "bernoulli"]


def _sum_except_batch(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).sum(1)


# ------------------------------------------------------------------ diagonal Gaussian


def gaussian_log_prob(z: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mean, diag(exp(logvar))) summed over the last dimension -> [B]."""
    return -0.5 * (LOG_2PI + logvar + (z - mean).pow(2) * torch.exp(-logvar)).sum(-1)


def gaussian_kl(
    mean_q: torch.Tensor, logvar_q: torch.Tensor, mean_p: torch.Tensor, logvar_p: torch.Tensor
) -> torch.Tensor:
    """KL(N(mean_q, e^logvar_q) || N(mean_p, e^logvar_p)) elementwise (closed form)."""
    return 0.5 * (
        logvar_p
        - logvar_q
        + (torch.exp(logvar_q) + (mean_q - mean_p).pow(2)) * torch.exp(-logvar_p)
        - 1.0
    )


def reparameterise(
    mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """z = mean + sigma * eps (seed 003, the reparameterisation trick)."""
    eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return mean + torch.exp(0.5 * logvar) * eps


# ------------------------------------------------------------------ pixel likelihoods


def discretised_logistic_log_prob(
    x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor
) -> torch.Tensor:
    """log P(bin of x) under a logistic(mean, e^log_scale) discretised to 256 bins -> [B]."""
    inv_s = torch.exp(-log_scale)
    plus = (x - mean + HALF_BIN) * inv_s  # upper bin edge, standardised
    minus = (x - mean - HALF_BIN) * inv_s
    # sigmoid(a) - sigmoid(b) = sigmoid(a) sigmoid(-b) (1 - e^(b - a)), exact and stable.
    interior = F.logsigmoid(plus) + F.logsigmoid(-minus) + torch.log(-torch.expm1(minus - plus))
    lp = torch.where(x < -EDGE, F.logsigmoid(plus), interior)
    lp = torch.where(x > EDGE, F.logsigmoid(-minus), lp)
    return _sum_except_batch(lp)


def _log_ndtr_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log(Phi(a) - Phi(b)) for a > b, stable in both tails: Phi(a)-Phi(b) = Phi(-b)-Phi(-a)."""
    flip = (a + b) > 0
    hi = torch.where(flip, -b, a)
    lo = torch.where(flip, -a, b)
    log_hi = torch.special.log_ndtr(hi)
    log_lo = torch.special.log_ndtr(lo)
    return log_hi + torch.log(-torch.expm1(log_lo - log_hi))


def discretised_gaussian_log_prob(
    x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor
) -> torch.Tensor:
    """log P(bin of x) under N(mean, e^(2 log_scale)) discretised to 256 bins -> [B]."""
    inv_s = torch.exp(-log_scale)
    plus = (x - mean + HALF_BIN) * inv_s
    minus = (x - mean - HALF_BIN) * inv_s
    interior = _log_ndtr_diff(plus, minus)
    lp = torch.where(x < -EDGE, torch.special.log_ndtr(plus), interior)
    lp = torch.where(x > EDGE, torch.special.log_ndtr(-minus), lp)
    return _sum_except_batch(lp)


def bernoulli_log_prob(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Bernoulli cross-entropy with pixel intensities (x+1)/2 in [0, 1] as soft targets.

    Not a normalised likelihood over 256 grey levels, so a VAE using it reports that its
    number is not a bound on the discrete NLL.
    """
    target = (x + 1) / 2
    return -_sum_except_batch(F.binary_cross_entropy_with_logits(logits, target, reduction="none"))


LIKELIHOOD_CHANNELS = {"logistic": 2, "gaussian": 2, "bernoulli": 1}  # decoder outputs per channel
MIN_LOG_SCALE = -7.0  # far below one bin (log(1/256) = -5.5): lets the model be sharp, not singular


def pixel_log_prob(kind: Likelihood, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """log p(x | decoder params) per example; params [B, LIKELIHOOD_CHANNELS[kind] * C, H, W]."""
    if kind == "bernoulli":
        return bernoulli_log_prob(x, params)
    mean, log_scale = params.chunk(2, dim=1)
    log_scale = log_scale.clamp(min=MIN_LOG_SCALE)
    fn = discretised_logistic_log_prob if kind == "logistic" else discretised_gaussian_log_prob
    return fn(x, torch.tanh(mean), log_scale)


def pixel_mean(kind: Likelihood, params: torch.Tensor) -> torch.Tensor:
    """The decoder's point prediction in model space (what reconstructions and samples show)."""
    if kind == "bernoulli":
        return torch.sigmoid(params) * 2 - 1
    return torch.tanh(params.chunk(2, dim=1)[0])
