"""Evaluations of a code-guided diffusion model: the posterior-mean gap and the critical stage.

Seed 002 (PDAE, slides "Class information benefit" and Figs. 3 and 5) studies a frozen DPM whose
reverse mean mu_theta(x_t, t) misses the true posterior mean mu~(x_t, x0) of q(x_s | x_t, x0),
and how much a code z = E(x0) closes that gap.

Hook (duck-typed, so any method providing it gets these families): `method.denoiser(x_t, t,
cond=None) -> eps_hat` is the model's own unconditional prediction without a code and its
z-guided prediction with cond = z = `method.encode(x0)`; `method.schedule` is its Schedule;
`method.reverse_step` (a float, 1/T of a discrete-time DPM) the step s = t - reverse_step.

- **Posterior-mean gap** (`posterior_gap`, the slides' Fig. 5 right). With mu(x_t) = c_z x_t +
  c_x x0_hat and x0_hat = (x_t - sigma_t eps_hat) / alpha_t (VDM eqs. 32-33 in gamma),

      ||mu(x_t) - mu~(x_t, x0)||^2 = (c_x sigma_t / alpha_t)^2 ||eps - eps_hat||^2,

  reported per dimension and averaged in `bins` equal t bins, for the DPM alone (cond=None) and
  with z, on the same (x0, t, eps). With a code that carries information about x0 the second
  curve lies below the first in every bin.
- **Critical stage** (`critical_stage`, the slides' Fig. 3): mixed sampling, unconditional from
  t = 1 to t1, z-guided from t1 to t2, unconditional after (`denoiser.switch`), ancestral steps
  from one shared x_T and noise for every (t1, t2) on a grid. Score: agreement between the
  source image's label and the class a small classifier (the domain network the `fid` family
  trains on the training split) gives the sample. The shortest stage whose agreement is within
  `tolerance` of full-range guidance (t1, t2) = (1, 0) is reported (the paper: (0.7, 0.4) of
  MNIST's 1000 steps, written (400, 700) there in steps).
"""

from __future__ import annotations

import numpy as np
import torch

from diffrep.diffusion import samplers as S
from diffrep.diffusion.denoiser import bind, switch, unconditional
from diffrep.diffusion.process import _bc, alpha_sigma, posterior_coefficients, q_sample
from diffrep.eval import plots as P
from diffrep.eval.batching import model_input, subset_indices
from diffrep.eval.context import EVALS, EvalContext

F64 = torch.float64


def is_guided(method) -> bool:
    """True when the method has the hook above (a denoiser with and without a code)."""
    from diffrep.diffusion.schedules import Schedule

    return (
        callable(getattr(method, "denoiser", None))
        and isinstance(getattr(method, "schedule", None), Schedule)
        and method.can("encode")
    )


def gap_coefficient(schedule, t: torch.Tensor, step: float) -> torch.Tensor:
    """c_x sigma_t / alpha_t [B] float64: the reverse mean's sensitivity to eps_hat at t."""
    g_t = schedule(t.to(F64))
    g_s = schedule((t.to(F64) - step).clamp(min=0.0))
    _, c_x, _ = posterior_coefficients(g_s, g_t)
    a_t, s_t = alpha_sigma(g_t)
    return c_x * s_t / a_t


@torch.no_grad()
def posterior_mean_gap(
    method, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(gap without z, gap with z) [B]: ||mu - mu~||^2 / D at (x0, t, eps); t float [B]."""
    schedule = method.schedule
    x_t = q_sample(x0, schedule(t.to(F64)), eps)
    z = method.encode(x0)
    coef = _bc(gap_coefficient(schedule, t, method.reverse_step) ** 2, x0)
    t = t.to(x0.dtype)
    alone = coef * (eps - method.denoiser(x_t, t)) ** 2
    with_z = coef * (eps - method.denoiser(x_t, t, z)) ** 2
    return alone.flatten(1).mean(1), with_z.flatten(1).mean(1)


@torch.no_grad()
def gap_curve(
    method, images_uint8: np.ndarray, bins: int = 10, batch_size: int = 256, generator=None
) -> dict:
    """{"t": bin centres, "alone", "with_z": mean gap per bin, "ratio"} over all images.

    Each image gets one t per bin (uniform inside the bin, on the 1/T grid) and one eps shared by
    both predictions.
    """
    T = max(1, round(1.0 / method.reverse_step))
    edges = np.linspace(0.0, 1.0, bins + 1)
    sums = np.zeros((2, bins))
    n = 0
    for start in range(0, len(images_uint8), batch_size):
        x0 = model_input(images_uint8[start : start + batch_size], method.device)
        n += len(x0)
        for b in range(bins):
            u = torch.rand(len(x0), generator=generator, dtype=F64)
            t = edges[b] + (edges[b + 1] - edges[b]) * u
            t = (torch.ceil(t * T).clamp(1, T) / T).to(method.device)  # trained steps i / T
            eps = torch.randn(x0.shape, generator=generator).to(x0)
            alone, with_z = posterior_mean_gap(method, x0, t, eps)
            sums[0, b] += float(alone.double().sum())
            sums[1, b] += float(with_z.double().sum())
    alone, with_z = sums / max(n, 1)
    return {
        "t": ((edges[:-1] + edges[1:]) / 2).tolist(),
        "alone": alone.tolist(),
        "with_z": with_z.tolist(),
        "ratio": (with_z / np.maximum(alone, 1e-30)).tolist(),
        "with_z_lower_in_every_bin": bool(np.all(with_z < alone)),
        "n": n,
    }


def gap_figure(curve: dict) -> bytes:
    fig = P._figure(6.0, 3.6)
    ax = fig.add_subplot()
    ax.plot(curve["t"], curve["alone"], "o-", label="frozen DPM alone")
    ax.plot(curve["t"], curve["with_z"], "o-", label="with z (guided)")
    ax.set_yscale("log")
    ax.set(xlabel="t", ylabel="||mu - mu~||^2 per dimension", title="Posterior-mean gap")
    ax.legend(fontsize=8)
    return P._png(fig)


@EVALS.register("posterior_gap")
def posterior_gap_family(ctx: EvalContext) -> dict:
    if not is_guided(ctx.method):
        return {}
    curve = gap_curve(
        ctx.method, ctx.test.images, ctx.cfg.gap_bins, ctx.cfg.batch_size, ctx.generator(7)
    )
    caption = "Mean squared distance between the reverse mean and q(x_s | x_t, x0)'s mean."
    ctx.figure("posterior_gap", gap_figure(curve), "Posterior-mean gap", "Diffusion", caption, 55)
    return {"posterior_gap": curve}


# --------------------------------------------------------------------------- critical stage


@torch.no_grad()
def mixed_samples(
    method, z: torch.Tensor, t1: float, t2: float, steps: int, seed: int = 0
) -> torch.Tensor:
    """Ancestral samples, z-guided for t2 <= t <= t1 only; x_T and noise fixed by `seed`."""
    guided = bind(method.denoiser, z)
    den = switch(guided, unconditional(method.denoiser), t2, t1)
    g = torch.Generator().manual_seed(seed)
    x_T = torch.randn((len(z), *method.data_shape), generator=g).to(z.device)
    return S.ancestral(den, method.schedule, x_T, steps, generator=g).clamp(-1, 1)


def stage_pairs(grid: int) -> list[tuple[float, float]]:
    """(t1, t2) with t1 > t2 on the grid k / grid, plus (0, 0) (no guidance)."""
    edges = [k / grid for k in range(grid + 1)]
    return [(0.0, 0.0)] + [(a, b) for a in edges for b in edges if a > b]


@torch.no_grad()
def critical_stage(
    method,
    images_uint8: np.ndarray,
    labels: np.ndarray,
    classify,
    grid: int = 5,
    steps: int = 50,
    tolerance: float = 0.05,
    seed: int = 0,
    batch_size: int = 256,
) -> dict:
    """Agreement of label(x0) and classify(sample) for each guided stage [t2, t1]."""
    x0 = model_input(images_uint8, method.device)
    z = torch.cat([method.encode(x0[s : s + batch_size]) for s in range(0, len(x0), batch_size)])
    y = torch.as_tensor(np.asarray(labels), device=x0.device)
    cells = []
    for t1, t2 in stage_pairs(grid):
        preds = []
        for s in range(0, len(z), batch_size):
            x = mixed_samples(method, z[s : s + batch_size], t1, t2, steps, seed + s)
            preds.append(classify(x))
        agree = float((torch.cat(preds) == y).double().mean())
        cells.append({"t1": t1, "t2": t2, "agreement": agree})
    full = next(c["agreement"] for c in cells if c["t1"] == 1.0 and c["t2"] == 0.0)
    ok = [c for c in cells if c["t1"] > c["t2"] and c["agreement"] >= full - tolerance]
    best = min(ok, key=lambda c: (round(c["t1"] - c["t2"], 9), -c["agreement"]))
    none = cells[0]["agreement"]
    return {
        "cells": cells,
        "full_range": full,
        "unguided": none,
        "shortest": {**best, "length": best["t1"] - best["t2"]},
        "grid": grid,
        "steps": steps,
        "tolerance": tolerance,
        "n": len(z),
    }


def stage_figure(result: dict) -> bytes:
    """Heat map of agreement over (t1, t2); the shortest qualifying stage framed."""
    from matplotlib.patches import Rectangle

    grid = result["grid"]
    m = np.full((grid + 1, grid + 1), np.nan)
    for c in result["cells"]:
        if c["t1"] > c["t2"]:
            m[round(c["t2"] * grid), round(c["t1"] * grid)] = c["agreement"]
    fig = P._figure(5.2, 4.2)
    ax = fig.add_subplot()
    ticks = [f"{k / grid:g}" for k in range(grid + 1)]
    im = ax.imshow(m, origin="lower", vmin=0, vmax=1, cmap="viridis")
    for c in result["cells"]:
        if c["t1"] > c["t2"]:
            i, j = round(c["t2"] * grid), round(c["t1"] * grid)
            ax.text(j, i, f"{c['agreement']:.2f}", ha="center", va="center", fontsize=7,
                    color="w" if c["agreement"] < 0.6 else "k")  # fmt: skip
    b = result["shortest"]
    i, j = round(b["t2"] * grid), round(b["t1"] * grid)
    ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="tab:red", lw=2))
    ax.set_xticks(range(grid + 1), ticks)
    ax.set_yticks(range(grid + 1), ticks)
    ax.set(xlabel="t1 (guidance starts)", ylabel="t2 (guidance ends)",
           title=f"class agreement (unguided {result['unguided']:.2f})")  # fmt: skip
    fig.colorbar(im, ax=ax)
    return P._png(fig)


def classifier(net):
    """x0 [B, C, H, W] model space -> predicted class [B] of a domain network (FidNet)."""
    dev = next(net.parameters()).device
    return lambda x: net(x.to(dev)).argmax(1).to(x.device)


@torch.no_grad()
def classifier_accuracy(net, images_uint8: np.ndarray, labels: np.ndarray, batch_size=256):
    classify = classifier(net)
    preds = [
        classify(model_input(images_uint8[s : s + batch_size], torch.device("cpu"))).numpy()
        for s in range(0, len(images_uint8), batch_size)
    ]
    return float((np.concatenate(preds) == np.asarray(labels)).mean())


@EVALS.register("critical_stage")
def critical_stage_family(ctx: EvalContext) -> dict:
    if not is_guided(ctx.method) or ctx.test.labels is None:
        return {}
    cfg = ctx.cfg
    net, sha = ctx.fidnet()
    idx = subset_indices(len(ctx.test), cfg.stage_examples, cfg.seed)
    acc = classifier_accuracy(net, ctx.test.images, ctx.test.labels, cfg.batch_size)
    out = critical_stage(
        ctx.method, ctx.test.images[idx], ctx.test.labels[idx], classifier(net),
        cfg.stage_grid, cfg.stage_steps, seed=cfg.seed, batch_size=cfg.batch_size,
    )  # fmt: skip
    out.update(classifier_test_acc=acc, feature_net_sha256=sha)
    caption = (
        f"Unconditional from t=1 to t1, z-guided to t2, unconditional after; agreement of the "
        f"source label and the sample's class (classifier test accuracy {acc:.3f})."
    )
    ctx.figure("critical_stage", stage_figure(out), "Critical stage", "Diffusion", caption, 56)
    return {"critical_stage": out}
