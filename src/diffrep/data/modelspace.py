"""Between 8-bit images and model space, and bits per dimension.

Model space: an 8-bit value k in {0..255} is the centre of the k-th of 256 bins of width 2/256
that tile [-1, 1]:

    x0 = (2 k + 1) / 256 - 1              (to_model_input; inverse: to_uint8)

Dequantisation (for likelihoods): a continuous density p on model space evaluated at uniformly
dequantised points

    x = 2 (k + u) / 256 - 1,  u ~ U[0, 1)^D   (dequantise)

bounds the discrete probability of the 8-bit image (Theis, van den Oord & Bethge 2016, with the bin
volume (2/256)^D of model space):

    -log P(k) <= E_u[-log p(x)] - D log(2/256).

Methods with a discretised likelihood (256 bins in model space, e.g. VDM's decoder) give
-log P(k) directly. Bits per dim = nats / (D ln 2) (`bits_per_dim`).
"""

from __future__ import annotations

import math

import numpy as np
import torch

#: log of the bin width of model space: add -D * LOG_BIN to a continuous NLL at dequantised x.
LOG_BIN = math.log(2.0 / 256.0)


def _as_uint8_tensor(images) -> torch.Tensor:
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8:
            raise TypeError(f"expected uint8 images, got {images.dtype}")
        # np.array copies, so read-only (cached) arrays are fine and torch never warns.
        return torch.from_numpy(np.array(images, copy=True))
    if isinstance(images, torch.Tensor):
        if images.dtype != torch.uint8:
            raise TypeError(f"expected uint8 images, got {images.dtype}")
        return images
    raise TypeError(f"expected a uint8 numpy array or tensor, got {type(images).__name__}")


def to_model_input(images) -> torch.Tensor:
    """uint8 images -> float32 x0 = (2k + 1)/256 - 1 (bin centres, strictly inside (-1, 1))."""
    k = _as_uint8_tensor(images)
    return (2.0 * k.to(torch.float32) + 1.0) / 256.0 - 1.0


def to_uint8(x0: torch.Tensor) -> torch.Tensor:
    """Model space -> uint8: the bin that contains x0, k = floor((x0 + 1) * 128), clamped."""
    k = torch.floor((x0.detach().to(torch.float32) + 1.0) * 128.0)
    return k.clamp_(0, 255).to(torch.uint8)


def dequantise(images, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform dequantisation x = 2(k + u)/256 - 1, u ~ U[0, 1) (see the module docstring)."""
    k = _as_uint8_tensor(images)
    u = torch.rand(k.shape, generator=generator, device=k.device, dtype=torch.float32)
    return 2.0 * (k.to(torch.float32) + u) / 256.0 - 1.0


def bits_per_dim(nats, dim: int):
    """Negative log-likelihood in nats (per example) -> bits per dimension."""
    return nats / (dim * math.log(2.0))


def make_batch(images, labels=None, device: torch.device | str | None = None) -> dict:
    """A method batch {"x0": float32 [B, C, H, W] model space, "y": int64 [B], -1 = unknown}."""
    x0 = to_model_input(images)
    if labels is None:
        y = torch.full((x0.shape[0],), -1, dtype=torch.int64)
    elif isinstance(labels, torch.Tensor):
        y = labels.to(torch.int64)
    else:
        y = torch.as_tensor(np.asarray(labels, dtype=np.int64).copy())
    if y.shape != (x0.shape[0],):
        raise ValueError(f"labels shape {tuple(y.shape)} does not match {x0.shape[0]} images")
    if device is not None:
        x0, y = x0.to(device), y.to(device)
    return {"x0": x0, "y": y}
