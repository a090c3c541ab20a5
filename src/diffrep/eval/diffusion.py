"""Evaluation families of the diffusion methods: the noise schedule, FID against DDIM steps, and
whether samples copy training images.

Registered in `diffrep.eval.context.EVALS` (each family skips, returning {}, what a method lacks):

- `schedule`: for a method with a noise schedule, i.e. `method.schedule` is a
  `diffrep.diffusion.schedules.Schedule` (vdm, ddpm), plots gamma(t) = -logSNR(t) and
  alpha_t, sigma_t (alpha_t^2 = sigmoid(-gamma), sigma_t^2 = sigmoid(gamma); VDM eq. 3) on
  [0, 1], marks the endpoints of a learned schedule, and writes
  eval.json["schedule"] = {"gamma_0", "gamma_1", "learnable", "kind"} (a DDPM schedule has
  gamma_0 = -inf, written as null, and also gets "gamma_first_step" = gamma(1/T)).
- `ddim_steps`: for a method whose `sample()` takes `sampler` and `steps` keywords (vdm, ddpm),
  the domain FID (the `fid` family's feature network and Frechet distance) of deterministic DDIM
  samples (Song et al. 2021a eq. 12, eta = 0) at each of `EvalConfig.ddim_steps` step counts:
  eval.json["ddim_steps"] = {"10": fid, ...} and a line plot of FID against steps.
- `memorisation`: for any sampling method, `diffrep.diffusion.ideal.memorisation` of the samples
  (the suite's shared samples) against the training split, calibrated on test images:
  eval.json["memorisation"] = {"copy_fraction", "median_ratio", ...}, a figure of samples next to
  their nearest training images and a histogram of the two nearest-neighbour distance sets.

Both sampling families use at most `MAX_SAMPLES` samples so that a CPU evaluation stays in
minutes (FID from 1000 samples is biased upwards but comparable across step counts, since every
step count starts from the same x_T: the differences are what the plot shows).
"""

from __future__ import annotations

import inspect

import numpy as np
import torch

from diffrep.diffusion.ideal import memorisation, nearest_distances
from diffrep.diffusion.process import alpha_sigma
from diffrep.diffusion.schedules import Schedule
from diffrep.errors import UserError
from diffrep.eval import plots as P
from diffrep.eval.batching import model_input, subset_indices
from diffrep.eval.context import EVALS, EvalContext, draw_samples

#: At most this many generated samples (and test images) per family: FID and nearest-neighbour
#: distances from 1000 images are stable enough to compare, and cheap on a CPU.
MAX_SAMPLES = 1000
#: Sampled images of the memorisation check whose nearest-training-image distance is below the
#: `MEMO_QUANTILE` quantile of test-to-train distances are counted as copies.
MEMO_QUANTILE = 0.05
#: Pairs (sample, nearest training image) shown in the memorisation figure.
MEMO_PAIRS = 8


def method_schedule(method) -> Schedule | None:
    """The method's noise schedule: `method.schedule` when it is a diffrep `Schedule`, else None.

    This is the duck-typed contract: a method with a diffusion over its data exposes the schedule
    as the attribute `schedule` (vdm, ddpm). Latent-prior methods keep theirs inside the prior.
    """
    s = getattr(method, "schedule", None)
    return s if isinstance(s, Schedule) else None


def takes_sampler_and_steps(method) -> bool:
    """True when `method.sample(n, sampler=..., steps=...)` is accepted (vdm, ddpm)."""
    if not method.can("sample"):
        return False
    params = inspect.signature(method.sample).parameters
    return "sampler" in params and "steps" in params


def _finite_or_none(v: float) -> float | None:
    return v if np.isfinite(v) else None


# --------------------------------------------------------------------------- schedule


@torch.no_grad()
def schedule_curves(schedule: Schedule, points: int = 201) -> dict[str, np.ndarray]:
    """{"t", "gamma", "alpha", "sigma"} float64 [points] on t in [0, 1]."""
    t = torch.linspace(0, 1, points, dtype=torch.float64)
    gamma = schedule(t.to(schedule.device)).detach().cpu().double()
    alpha, sigma = alpha_sigma(gamma)
    return {
        k: v.numpy() for k, v in {"t": t, "gamma": gamma, "alpha": alpha, "sigma": sigma}.items()
    }


def schedule_figure(curves: dict, gamma_0: float, gamma_1: float, learnable: bool, kind: str):
    """Two panels: gamma(t) (endpoints marked for a learned schedule) and alpha_t, sigma_t."""
    fig = P._figure(9.0, 3.4)
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    t, g = curves["t"], curves["gamma"]
    ok = np.isfinite(g)  # gamma(0) = -inf for DDPM schedules (t = 0 is the data itself)
    ax1.plot(t[ok], g[ok], color="tab:blue", lw=1.5, label=f"gamma(t) ({kind})")
    if learnable:
        ends = [(0.0, gamma_0), (1.0, gamma_1)]
        ax1.scatter([e[0] for e in ends], [e[1] for e in ends], color="tab:red", zorder=3)
        for x, y in ends:
            ax1.annotate(f"gamma({x:g}) = {y:.3g}", (x, y), textcoords="offset points",
                         xytext=(6 if x == 0 else -6, 6), ha="left" if x == 0 else "right",
                         fontsize=8)  # fmt: skip
    ax1.margins(y=0.12)  # room for the endpoint labels
    ax1.set(title="gamma(t) = -log SNR(t)", xlabel="t", ylabel="gamma")
    ax1.legend(fontsize=8, loc="lower right")
    ax2.plot(t, curves["alpha"], label="alpha_t", color="tab:blue")
    ax2.plot(t, curves["sigma"], label="sigma_t", color="tab:orange")
    ax2.set(title="alpha_t, sigma_t (alpha^2 + sigma^2 = 1)", xlabel="t", ylim=(-0.02, 1.02))
    ax2.legend(fontsize=8)
    return P._png(fig)


@EVALS.register("schedule")
def schedule_family(ctx: EvalContext) -> dict:
    """gamma_0, gamma_1 of the method's schedule and its plot (skips methods without one)."""
    schedule = method_schedule(ctx.method)
    if schedule is None:
        return {}
    with torch.no_grad():
        g0, g1 = (float(v) for v in schedule.endpoints())
    kind = getattr(type(schedule), "registry_name", type(schedule).__name__)
    learnable = bool(schedule.learnable)
    out = {"gamma_0": _finite_or_none(g0), "gamma_1": g1, "learnable": learnable, "kind": kind}
    T = getattr(schedule, "T", None)
    if not np.isfinite(g0) and isinstance(T, int):
        with torch.no_grad():  # the least noisy step a discrete-time model is trained on
            out["gamma_first_step"] = float(schedule(1.0 / T))
    png = schedule_figure(schedule_curves(schedule), g0, g1, learnable, kind)
    caption = (
        "Learned schedule: its endpoints set SNR_max (reconstruction) and SNR_min (prior)."
        if learnable
        else "Fixed schedule."
    )
    ctx.figure("schedule", png, "Noise schedule", "Diffusion", caption, order=50)
    return {"schedule": out}


# --------------------------------------------------------------------------- DDIM steps


def fid_steps_figure(steps: list[int], fids: list[float]) -> bytes:
    fig = P._figure(5.0, 3.2)
    ax = fig.add_subplot()
    ax.plot(steps, fids, marker="o", color="tab:blue")
    ax.set_xscale("log")
    ax.set_xticks(steps, [str(s) for s in steps])
    ax.minorticks_off()  # only the evaluated step counts are labelled
    ax.set(title="Domain FID of DDIM (eta = 0) samples", xlabel="DDIM steps", ylabel="FID")
    return P._png(fig)


@EVALS.register("ddim_steps")
def ddim_steps_family(ctx: EvalContext) -> dict:
    """Domain FID against the number of DDIM steps (skips methods without sampler/steps)."""
    from diffrep.eval.fid import fid_from_features
    from diffrep.eval.fidnet import fidnet_features

    if not takes_sampler_and_steps(ctx.method):
        return {}
    cfg = ctx.cfg
    steps = sorted(set(cfg.ddim_steps))
    if not steps or steps[0] < 1:
        raise UserError(
            f"eval.ddim_steps must be step counts >= 1, got {list(cfg.ddim_steps)}; "
            "fix: e.g. --set 'eval.ddim_steps=[10, 25, 50, 100]'"
        )
    n = min(cfg.n_samples, MAX_SAMPLES)
    net, sha = ctx.fidnet()
    # the `fid` family's real set (the same images whenever n_samples <= MAX_SAMPLES)
    real = ctx.test.images[subset_indices(len(ctx.test), n, cfg.seed)]
    real_f = fidnet_features(net, real, cfg.batch_size)
    fids, rows = {}, []
    for k in steps:
        # The same generator seed for every k: the same x_T, so the curve shows the effect of the
        # step count, not of a new draw (common random numbers).
        s = draw_samples(ctx.method, n, cfg.batch_size, ctx.generator(11), sampler="ddim", steps=k)
        fids[str(k)] = fid_from_features(real_f, fidnet_features(net, s, cfg.batch_size))
        rows.append(s[:MEMO_PAIRS])
    ctx.figure(
        "ddim_steps", fid_steps_figure(steps, [fids[str(k)] for k in steps]),
        "Sample quality against DDIM steps", "Diffusion",
        f"Domain FID of {n} samples against {len(real)} test images (feature net {sha[:12]}).",
        order=51,
    )  # fmt: skip
    ctx.figure(
        "ddim_steps_samples", P.image_grid(np.concatenate(rows), nrow=len(rows[0])),
        "DDIM samples by step count", "Diffusion",
        f"One row per step count ({', '.join(map(str, steps))}, top to bottom), same x_T.",
        order=52,
    )  # fmt: skip
    info = {"n_samples": n, "n_real": len(real), "feature_net_sha256": sha}
    return {"ddim_steps": fids, "ddim_steps_info": info}


# --------------------------------------------------------------------------- memorisation


def distance_histogram(d_samples: np.ndarray, d_test: np.ndarray, threshold: float) -> bytes:
    fig = P._figure(5.5, 3.2)
    ax = fig.add_subplot()
    hi = max(float(d_samples.max()), float(d_test.max()))
    bins = np.linspace(0.0, hi * 1.02 + 1e-9, 40)
    ax.hist(d_test, bins=bins, alpha=0.6, label="test -> train", color="tab:blue", density=True)
    ax.hist(d_samples, bins=bins, alpha=0.6, label="sample -> train", color="tab:orange",
            density=True)  # fmt: skip
    ax.axvline(threshold, color="tab:red", ls="--", lw=1, label="copy threshold")
    ax.set(title="Distance to the nearest training image", xlabel="L2 distance (model space)",
           ylabel="density")  # fmt: skip
    ax.legend(fontsize=8)
    return P._png(fig)


@EVALS.register("memorisation")
def memorisation_family(ctx: EvalContext) -> dict:
    """Do samples copy training images? (seed 003; skips methods that cannot sample)."""
    if not ctx.method.can("sample"):
        return {}
    cfg = ctx.cfg
    samples_u8 = ctx.samples()[:MAX_SAMPLES]  # the suite's shared samples (cfg.sample_kwargs)
    test_u8 = ctx.test.images[subset_indices(len(ctx.test), MAX_SAMPLES, cfg.seed)]
    cpu = torch.device("cpu")
    samples = model_input(samples_u8, cpu)
    # the whole training split: a copy of an image outside an evaluation subset is still a copy
    train = model_input(ctx.full_train.images, cpu)
    test = model_input(test_u8, cpu)
    out = memorisation(samples, train, test, quantile=MEMO_QUANTILE)
    out["quantile"] = MEMO_QUANTILE

    d_s, nn_s = nearest_distances(samples, train)
    d_t, _ = nearest_distances(test, train)
    k = min(MEMO_PAIRS, len(samples))
    show = torch.cat([d_s.argsort()[:k], torch.arange(k)])  # the closest k, then k arbitrary
    png = P.recon_grid(samples_u8[show], ctx.full_train.images[nn_s[show]], ncol=k)
    caption = (
        f"Odd rows: samples; even rows: their nearest training images. First pair of rows: the "
        f"{k} samples closest to a training image; second: {k} arbitrary samples. "
        f"copy_fraction {out['copy_fraction']:.3f} (test images: {out['test_copy_fraction']:.3f})."
    )
    ctx.figure("memorisation_pairs", png, "Nearest training images", "Memorisation", caption, 60)
    png = distance_histogram(d_s.numpy(), d_t.numpy(), out["copy_threshold"])
    caption = (
        f"A sample closer than the {MEMO_QUANTILE:.0%} quantile of the test-to-train distances "
        "(dashed) counts as a copy; a memorising model piles up at 0."
    )
    ctx.figure("memorisation_hist", png, "Nearest-neighbour distances", "Memorisation", caption, 61)
    return {"memorisation": out}
