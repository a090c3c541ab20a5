"""Procedural shapes with known generative factors (a small dSprites-like set, drawn with numpy).

Every image is one white-ish shape on black, its factors drawn independently and uniformly:

    shape      discrete    0 square, 1 circle, 2 triangle      (also the label)
    scale      continuous  [0.5, 1]   circumradius as a fraction of R_max = size / 4
    x, y       continuous  [0, 1]     centre, mapped to [R_max, size - R_max] pixels (x right,
                                      y down), so no shape leaves the image
    rotation   continuous  [0, pi/3)  radians, counter-clockwise; shorter than the symmetry
                                      period of the square (pi/2) and triangle (2 pi/3), so it
                                      is identifiable for both (it cannot change a circle)
    intensity  continuous  [0.5, 1]   foreground brightness as a fraction of 255

Pixels are the covered area fraction (anti-aliased from the signed distance to the outline),
times intensity * 255, rounded. The data are a pure function of the options:
`train` uses numpy's PCG64 seeded with (seed, 0), `test` with (seed, 1).
"""

from __future__ import annotations

import numpy as np

from diffrep.data.core import DatasetInfo, ImageData, dataset
from diffrep.errors import UserError

SHAPES = ("square", "circle", "triangle")
FACTOR_NAMES = ("shape", "scale", "x", "y", "rotation", "intensity")
FACTOR_KINDS = ("discrete",) + ("continuous",) * 5
RANGES = {
    "scale": (0.5, 1.0),
    "x": (0.0, 1.0),
    "y": (0.0, 1.0),
    "rotation": (0.0, np.pi / 3),
    "intensity": (0.5, 1.0),
}


def sample_factors(n: int, rng: np.random.Generator) -> np.ndarray:
    """float64 [n, 6] factors in FACTOR_NAMES order, each uniform on its range."""
    cols = [rng.integers(0, len(SHAPES), size=n).astype(np.float64)]
    for name in FACTOR_NAMES[1:]:
        lo, hi = RANGES[name]
        cols.append(rng.uniform(lo, hi, size=n))
    return np.stack(cols, axis=1)


def signed_distance(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance (negative inside) of (u, v) to the unit-circumradius shape, own frame."""
    if shape == 1:  # circle
        return np.sqrt(u * u + v * v) - 1.0
    if shape == 0:  # square inscribed in the unit circle: half side 1/sqrt(2)
        h = 1.0 / np.sqrt(2.0)
        qx, qy = np.abs(u) - h, np.abs(v) - h
        return np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0)
    # Equilateral triangle, apex up (v up): inradius 1/2, outward edge normals at -90, 30 and
    # 150 degrees. The max of the half-plane distances is exact inside and near the edges,
    # which is all the anti-aliasing in `render` uses.
    d = -v - 0.5
    for a in (np.pi / 6, 5 * np.pi / 6):
        d = np.maximum(d, u * np.cos(a) + v * np.sin(a) - 0.5)
    return d


def render(factors: np.ndarray, size: int = 32, chunk: int = 256) -> np.ndarray:
    """Draw factors [N, 6] -> uint8 [N, 1, size, size].

    Anti-aliasing: a pixel's coverage is clip(1/2 - d, 0, 1) with d the signed distance of its
    centre to the outline in pixels, i.e. a straight edge crossing the pixel covers it linearly.
    """
    g = np.arange(size, dtype=np.float32) + 0.5  # pixel centres
    py, px = np.meshgrid(g, g, indexing="ij")  # [S, S]
    r_max = size / 4.0
    out = np.empty((len(factors), 1, size, size), dtype=np.uint8)
    for k in range(len(SHAPES)):  # one shape at a time: each pixel gets one distance function
        idx = np.flatnonzero(factors[:, 0] == k)
        for i in range(0, len(idx), chunk):
            j = idx[i : i + chunk]
            f = factors[j, :, None, None].astype(np.float32)  # [b, 6, 1, 1]
            _, scale, x, y, rot, inten = (f[:, c] for c in range(6))
            r = scale * r_max  # circumradius in pixels
            cx = r_max + x * (size - 2 * r_max)
            cy = r_max + y * (size - 2 * r_max)
            dx, dy = (px - cx) / r, (cy - py) / r  # image y points down; shape frame v up
            c, sn = np.cos(rot), np.sin(rot)
            u, v = c * dx + sn * dy, -sn * dx + c * dy  # rotate the points by -rotation
            cover = np.clip(0.5 - signed_distance(k, u, v) * r, 0.0, 1.0)
            out[j, 0] = np.rint(cover * inten * 255.0).astype(np.uint8)
    return out


@dataset(
    "shapes",
    DatasetInfo(
        description="generated shapes with known factors (shape, scale, x, y, rotation, "
        "intensity); labels = shape",
        shape="1xSxS (size, default 32)",
        splits=("train", "test"),
        files="generated from a seed (no files)",
    ),
)
def shapes(
    split: str,
    root: str | None,
    *,
    n_train: int = 10000,
    n_test: int = 2000,
    size: int = 32,
    seed: int = 0,
) -> ImageData:
    if size < 8 or n_train < 1 or n_test < 1:
        raise UserError(
            f"shapes: need size >= 8 and n_train, n_test >= 1 "
            f"(got size={size}, n_train={n_train}, n_test={n_test})"
        )
    n = n_train if split == "train" else n_test
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    factors = sample_factors(n, rng)
    return ImageData(
        name="shapes",
        images=render(factors, size),
        labels=factors[:, 0].astype(np.int64),
        factors=factors,
        factor_names=FACTOR_NAMES,
        factor_kinds=FACTOR_KINDS,
        num_classes=len(SHAPES),
        class_names=SHAPES,
        source="generated",
    )
