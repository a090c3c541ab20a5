"""eval_speed: FID from 10k + 10k feature vectors, diffrep against torchmetrics'
FrechetInceptionDistance fed the same features (an identity feature extractor).

Features: MNIST's 10k test images (from ../shared/data/mnist or $DIFFREP_DATA; the embedded
digits, tiled, when absent) and the same images blurred, passed through a fixed random ReLU
layer (seeded) to d = 256 and 2048 features (2048 is Inception's width). The two FIDs must agree
to 1e-3 relative; the ratio is torchmetrics' time over diffrep's (both include computing the
means and covariances from the features and the matrix square root).

    python benchmarks/bench_eval_speed.py --quick
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as H  # noqa: E402


def images(n: int) -> np.ndarray:
    """n uint8 images [n, 784]: MNIST test when present, else the digits upsampled and tiled."""
    from diffrep.data import load_dataset
    from diffrep.errors import UserError

    try:
        x = load_dataset("mnist", "test").images
    except UserError:
        x = load_dataset("digits", "train").images
        x = np.repeat(np.repeat(x, 3, axis=2), 3, axis=3)[:, :, :24, :24]
    reps = -(-n // len(x))
    return np.concatenate([x] * reps)[:n].reshape(n, -1)


def features(x: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray]:
    """(real, fake) features [N, d]: a fixed random ReLU layer of the images and of a blur."""
    g = np.random.default_rng(0)
    w = g.standard_normal((x.shape[1], d)) / np.sqrt(x.shape[1])
    xf = x.astype(np.float64) / 255
    side = int(np.sqrt(x.shape[1]))
    im = xf.reshape(-1, side, side)
    blur = im + np.roll(im, 1, 1) + np.roll(im, -1, 1) + np.roll(im, 1, 2) + np.roll(im, -1, 2)
    blur = (blur / 5).reshape(len(x), -1)
    return np.maximum(xf @ w, 0), np.maximum(blur @ w, 0)


def _compare(real: np.ndarray, fake: np.ndarray, d: int, reps: int):
    """({impl: fid}, {impl: median seconds}) for diffrep and torchmetrics on the same features."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    from diffrep.eval.fid import fid_from_features

    class Identity(torch.nn.Module):
        num_features = d

        def forward(self, f):
            return f

    tm = FrechetInceptionDistance(feature=Identity(), normalize=False)
    r_t, f_t = torch.from_numpy(real), torch.from_numpy(fake)
    values = {}

    def ours():
        values["diffrep"] = fid_from_features(real, fake)

    def theirs():
        tm.reset()
        tm.update(r_t, real=True)
        tm.update(f_t, real=False)
        values["torchmetrics"] = float(tm.compute())

    sec = H.interleaved({"diffrep": ours, "torchmetrics": theirs}, torch.device("cpu"), reps=reps)
    return values, sec


def run(quick: bool, device: torch.device) -> dict:
    rec = H.record(
        "eval_speed",
        "FID of 10k vs 10k feature vectors: diffrep.eval.fid vs torchmetrics "
        "FrechetInceptionDistance fed the same features",
        device,
    )
    n = 10000
    x = images(n)
    dims = (256,) if quick else (256, 2048)
    plot = {"title": f"FID of {n} vs {n} features", "kind": "bar", "x": [f"d = {d}" for d in dims],
            "y": {"diffrep": [], "torchmetrics": []}, "ylabel": "seconds"}  # fmt: skip
    for d in dims:
        values, sec = _compare(*features(x, d), d, reps=3 if quick else 5)
        rel = abs(values["diffrep"] - values["torchmetrics"]) / abs(values["torchmetrics"])
        for k in ("diffrep", "torchmetrics"):
            rec["rows"].append({"features": d, "images": f"{n} + {n}", "impl": k,
                                "fid": values[k], "seconds": sec[k]})  # fmt: skip
            plot["y"][k].append(sec[k])
        rec["ratios"][f"torchmetrics / diffrep time, d={d}"] = sec["torchmetrics"] / sec["diffrep"]
        rec["targets"][f"torchmetrics / diffrep time, d={d}"] = ">= 1 (at least as fast)"
        rec["ratios"][f"relative FID difference, d={d}"] = rel
        rec["targets"][f"relative FID difference, d={d}"] = "<= 1e-3"
    rec["plots"].append(plot)
    return rec


if __name__ == "__main__":
    H.cli(run, __doc__, torch.device("cpu"))
