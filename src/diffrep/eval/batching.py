"""Shared plumbing of the metrics: batches of 8-bit images in, numpy arrays out, progress bars.

Metrics take uint8 images [N, C, H, W] (what `diffrep.data.ImageData.images` holds) and convert
one batch at a time to model space, so memory stays flat whatever N is.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator

import numpy as np
import torch


def progress(iterable, desc: str, total: int | None = None, enable: bool | None = None):
    """tqdm on an interactive stderr, the bare iterable otherwise (logs stay clean)."""
    from tqdm.auto import tqdm

    disable = not sys.stderr.isatty() if enable is None else not enable
    return tqdm(iterable, desc=desc, total=total, disable=disable, leave=False)


def batches(n: int, batch_size: int, desc: str = "") -> Iterator[slice]:
    """Slices covering range(n) in order, with a progress bar."""
    starts = range(0, n, batch_size)
    for s in progress(starts, desc, total=len(starts)):
        yield slice(s, min(s + batch_size, n))


def model_input(images_uint8: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 [B, C, H, W] -> model-space float32 on `device` (centred 8-bit bins)."""
    from diffrep.data import to_model_input

    return to_model_input(torch.as_tensor(np.asarray(images_uint8))).to(device)


def to_unit(x0: torch.Tensor) -> torch.Tensor:
    """Model space (-1, 1) -> intensities in [0, 1] (clamped), float32."""
    return ((x0.float() + 1.0) / 2.0).clamp(0.0, 1.0)


def to_uint8_np(x0: torch.Tensor) -> np.ndarray:
    """Model space -> uint8 numpy [B, C, H, W] for pictures and feature networks."""
    from diffrep.data import to_uint8

    return to_uint8(x0.detach().cpu()).numpy()


@torch.no_grad()
def map_batches(
    fn: Callable[[torch.Tensor], torch.Tensor],
    images_uint8: np.ndarray,
    batch_size: int,
    device: torch.device,
    desc: str = "",
) -> np.ndarray:
    """Apply `fn` to model-space batches; concatenate the outputs as float64 numpy."""
    out = []
    for sl in batches(len(images_uint8), batch_size, desc):
        y = fn(model_input(images_uint8[sl], device))
        out.append(y.detach().reshape(y.shape[0], -1).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0))


def subset_indices(n: int, k: int | None, seed: int) -> np.ndarray:
    """A seeded random subset of range(n) of size min(k, n), sorted (datasets may be ordered by
    class or factor, so the first k examples are not representative)."""
    if k is None or k >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=k, replace=False))


def encode_features(
    method, images_uint8: np.ndarray, batch_size: int, t: float | None = None
) -> np.ndarray:
    """The representation `method.encode(x0)` (`encode(x0, t=t)` when t is given, for methods
    whose code depends on a noise level) flattened to [N, Z] float64."""
    if t is None:
        return map_batches(method.encode, images_uint8, batch_size, method.device, "encode")

    def encode_at_t(x0: torch.Tensor) -> torch.Tensor:
        return method.encode(x0, t=t)

    return map_batches(encode_at_t, images_uint8, batch_size, method.device, f"encode t={t:g}")
