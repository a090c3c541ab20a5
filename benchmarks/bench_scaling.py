"""scaling: how cost grows with the work, as log-log slopes (cost ~ work^b).

- train step (fwd + bwd + AdamW, diffrep's ~1M-parameter U-Net) against batch size, and against
  image size (8, 28, 32, 64 pixels) at a fixed batch;
- FID (diffrep.eval.fid, d = 256 features) against the number of images;
- the ideal denoiser (seed 003: a softmax over the whole training set) against training-set size;
- the latent diffusion prior's exact bound (T network calls per example) against T.

b = 1 is linear; a step's b below 1 against batch size means fixed per-step costs that larger
batches amortise.

    python benchmarks/bench_scaling.py --quick
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_train_step as TS  # noqa: E402
import harness as H  # noqa: E402


def _curve(rec: dict, title: str, xlabel: str, xs: list, secs: list[float]) -> None:
    b = H.loglog_slope([float(x) for x in xs], secs)
    for x, s in zip(xs, secs):
        rec["rows"].append({"curve": title, "x": x, "seconds": s})
    rec["ratios"][f"exponent: {title}"] = b
    rec["plots"].append({"title": f"{title} (slope {b:.2f})", "x": list(xs),
                         "y": {"seconds": secs}, "xlabel": xlabel, "ylabel": "seconds",
                         "loglog": True})  # fmt: skip


def run(quick: bool, device: torch.device) -> dict:
    from diffrep.diffusion.ideal import IdealDenoiser
    from diffrep.diffusion.schedules import build_schedule
    from diffrep.eval.fid import fid_from_features
    from diffrep.priors import PRIORS

    rec = H.record("scaling", "cost against work, log-log slopes", device)
    reps = 2 if quick else 3
    # train step vs batch size (28x28, ~1M parameters)
    c = TS.WIDTHS["1M"]
    batches = [8, 16, 32] if quick else [8, 16, 32, 64, 128]
    model = TS.ours(c, 28)
    steps = {b: TS.make_step("diffrep", model, b, 28, device) for b in batches}
    sec = H.interleaved({str(b): f for b, f in steps.items()}, device, reps=reps)
    _curve(rec, "train step vs batch", "batch (28x28)", batches, [sec[str(b)] for b in batches])
    # train step vs image size (batch 16)
    sizes = [8, 28, 32] if quick else [8, 28, 32, 64]
    steps = {r: TS.make_step("diffrep", TS.ours(c, r), 16, r, device) for r in sizes}
    sec = H.interleaved({str(r): f for r, f in steps.items()}, device, reps=reps)
    _curve(rec, "train step vs image side", "image side (pixels), batch 16", sizes,
           [sec[str(r)] for r in sizes])  # fmt: skip
    # FID vs number of images
    g = np.random.default_rng(0)
    ns = [1000, 2000, 5000] if quick else [1000, 2000, 5000, 10000, 20000]
    feats = {n: (g.standard_normal((n, 256)), g.standard_normal((n, 256)) + 0.1) for n in ns}
    fns = {str(n): (lambda n=n: fid_from_features(*feats[n])) for n in ns}
    sec = H.interleaved(fns, torch.device("cpu"), reps=reps)
    _curve(rec, "FID vs images", "images per set (d = 256)", ns, [sec[str(n)] for n in ns])
    # ideal denoiser vs training-set size (64 queries of 28x28)
    sched = build_schedule("vdm-linear")
    Ns = [500, 1000, 2000] if quick else [500, 1000, 2000, 4000, 8000]
    q = torch.randn(64, 1, 28, 28, dtype=torch.float64)
    t = torch.full((64,), 0.5)
    dens = {n: IdealDenoiser(torch.rand(n, 1, 28, 28, dtype=torch.float64) * 2 - 1, sched)
            for n in Ns}  # fmt: skip
    fns = {str(n): (lambda n=n: dens[n](q, t)) for n in Ns}
    sec = H.interleaved(fns, torch.device("cpu"), reps=reps)
    _curve(rec, "ideal denoiser vs training set", "training images", Ns, [sec[str(n)] for n in Ns])
    # diffusion prior's exact bound vs T
    Ts = [50, 100, 200] if quick else [50, 100, 200, 400, 800]
    z = torch.randn(256, 16, device=device)
    priors = {T: PRIORS.build("diffusion", 16, T=T, hidden=128, depth=2).to(device).eval()
              for T in Ts}  # fmt: skip

    @torch.no_grad()
    def bound(T):
        return priors[T].nll_terms(z, exact=True)

    fns = {str(T): (lambda T=T: bound(T)) for T in Ts}
    sec = H.interleaved(fns, device, reps=reps)
    _curve(rec, "diffusion prior exact bound vs T", "T (256 latents of 16 dims)", Ts,
           [sec[str(T)] for T in Ts])  # fmt: skip
    return rec


if __name__ == "__main__":
    H.cli(run, __doc__)
