"""Reconstruction quality: MSE, PSNR and SSIM on intensities in [0, 1].

- MSE: mean squared error per pixel value, images mapped from model space to [0, 1].
- PSNR: 10 log10(1 / MSE_i) per image (data range 1), averaged over images.
- SSIM (Wang, Bovik, Sheikh, Simoncelli 2004, eq. 13): local means, variances and covariance under
  an 11x11 Gaussian window (sigma 1.5), C1 = (0.01 L)^2, C2 = (0.03 L)^2, L = 1, on reflect-padded
  images, averaged over all pixels and channels of each image: torchmetrics' convention
  (scikit-image instead averages over the unpadded interior only). Images smaller than 11 pixels
  use the largest odd window that fits.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.nn import functional as F

from diffrep.eval.batching import batches, model_input, to_uint8_np, to_unit


def _gaussian_window(size: int, sigma: float, dtype) -> torch.Tensor:
    x = torch.arange(size, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]  # [size, size]


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM [B] of images [B, C, H, W] with values in [0, 1]."""
    x, y = x.double(), y.double()
    c = x.shape[1]
    size = min(window, *(s - (1 - s % 2) for s in x.shape[-2:]))  # largest odd size that fits
    w = _gaussian_window(size, sigma, x.dtype).expand(c, 1, size, size)
    p = (size - 1) // 2
    x = F.pad(x, (p, p, p, p), mode="reflect")
    y = F.pad(y, (p, p, p, p), mode="reflect")

    def filt(a):  # depthwise "valid" convolution of the padded image: output H x W
        return F.conv2d(a, w, groups=c)

    mu_x, mu_y = filt(x), filt(y)
    var_x = (filt(x * x) - mu_x**2).clamp_min(0.0)  # round-off can go below 0
    var_y = (filt(y * y) - mu_y**2).clamp_min(0.0)
    cov = filt(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    return s.flatten(1).mean(1)


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR [B] in dB for values in [0, 1] (MSE floored at 1e-10: 100 dB)."""
    mse = ((x.double() - y.double()) ** 2).flatten(1).mean(1)
    return 10.0 * torch.log10(1.0 / mse.clamp_min(1e-10))


@torch.no_grad()
def recon_metrics(
    method,
    images_uint8: np.ndarray,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
    keep: int = 0,
) -> tuple[dict, np.ndarray | None]:
    """({"mse", "psnr", "ssim"}, uint8 reconstructions of the first `keep` images or None)."""
    if not method.can("reconstruct"):
        return {}, None
    sums = {"mse": 0.0, "psnr": 0.0, "ssim": 0.0}
    kept = []
    for sl in batches(len(images_uint8), batch_size, "reconstruct"):
        x0 = model_input(images_uint8[sl], method.device)
        x_hat = method.reconstruct(x0, generator=generator)
        a, b = to_unit(x0).cpu(), to_unit(x_hat).cpu()
        sums["mse"] += float(((a.double() - b.double()) ** 2).flatten(1).mean(1).sum())
        sums["psnr"] += float(psnr(a, b).sum())
        sums["ssim"] += float(ssim(a, b).sum())
        if sum(len(k) for k in kept) < keep:
            kept.append(to_uint8_np(x_hat))
    n = len(images_uint8)
    out = {k: v / n for k, v in sums.items()}
    if not math.isfinite(out["psnr"]):
        out["psnr"] = None
    recons = np.concatenate(kept)[:keep] if kept else None
    return out, recons
