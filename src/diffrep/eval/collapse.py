"""Posterior-collapse diagnostics for methods whose diffusion decoder is conditioned on a code.

Applies to any method that follows the convention of `diffrep.diffusion.pixel`: `method.diffusion`
is a diffusion part with `cond_dim` set (`per_t_loss(x0, t, cond=, eps=)`, `schedule`) and
`method.encode(x0)` gives the code w the decoder is conditioned on (vae_vdm, drl; an encoder
that takes t, `encode(x0, t=...)`, is asked at each example's t). Seed 000 reports that the VAE's
code collapses with a VDM decoder; these numbers say whether, how much and where it is used:

- latent health (`diffrep.eval.latents`): KL per dimension against N(0, 1), active units, I(x; w)
  under q (methods with a Gaussian `posterior`; active units only for deterministic codes);
- the **shuffle test**: the increase of the denoising error when every example gets another
  example's code, with the *same* t and eps (common random numbers, so a decoder that ignores
  its code gives exactly 0):

      Delta(t) = E_x,eps ||eps - eps_hat(x_t, t, w')||^2 - ||eps - eps_hat(x_t, t, w)||^2,

  w' = the code of another example of the batch (a derangement). Per t bin (t stratified
  uniformly in each of `T_BINS` bins), and integrated two ways:

      shuffle_nats = int_0^1 1/2 gamma'(t) Delta(t) dt   (VDM eq. 17's weight: the nats of the
                     continuous-time bound by which the own code beats a foreign one; a lower
                     bound on neither I(x; w) nor the KL, but 0 when the decoder ignores w)
      shuffle_mse  = int_0^1 Delta(t) dt                  (unweighted: every noise level alike)

  with the standard error of shuffle_nats from the per-bin variances.

eval.json["collapse"] holds the numbers and the per-bin curves; the figure shows the own and
shuffled errors per t and the weighted increase (where along t the code is worth nats).
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import torch

from diffrep.eval import plots as P
from diffrep.eval.batching import batches, model_input, subset_indices
from diffrep.eval.context import EVALS, EvalContext

#: t bins of the shuffle test (one t per example and bin, uniform inside the bin); the family
#: uses EvalConfig.shuffle_t_bins and EvalConfig.shuffle_examples.
T_BINS = 10


def code_conditioned_diffusion(method):
    """`method.diffusion` when the method encodes and its diffusion part takes a code, else None."""
    diffusion = getattr(method, "diffusion", None)
    if diffusion is None or not getattr(diffusion, "cond_dim", None):
        return None
    return diffusion if method.can("encode") else None


def encode_takes_t(method) -> bool:
    """True for a time-dependent encoder E(x0, t) (seed 001 eq. 4): `encode(x0, t=...)`."""
    return "t" in inspect.signature(method.encode).parameters


def codes(method, x0: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
    """The code the decoder is conditioned on [B, K] (at t [B] for a time-dependent encoder)."""
    if t is not None and encode_takes_t(method):
        return method.encode(x0, t=t)
    return method.encode(x0)


def derangement(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random permutation idx [n] with idx[i] != i for every i (n >= 2): a cyclic shift along a
    random order, so that no example keeps its own code."""
    if n < 2:
        raise ValueError("the shuffle test needs at least 2 examples per batch")
    order = torch.randperm(n, generator=generator)
    idx = torch.empty_like(order)
    idx[order] = order.roll(1)
    return idx


@torch.no_grad()
def shuffle_test(
    method,
    x0: torch.Tensor,
    bins: int = T_BINS,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
) -> dict:
    """The shuffle test on model-space images x0 [N, C, H, W] (see the module docstring).

    Returns {"shuffle_nats", "shuffle_nats_se", "shuffle_bpd", "shuffle_mse", "shuffle_mse_rel",
    "shuffle_examples", "t_bins": {"t", "own_mse", "shuffled_mse", "increase_mse",
    "increase_nats"}}: per bin the mean errors (summed over pixels) and the mean of
    1/2 gamma'(t) Delta (nats per unit t; their sum times the bin width is shuffle_nats).
    """
    diffusion = code_conditioned_diffusion(method)
    if diffusion is None:
        raise ValueError("the shuffle test needs method.diffusion with cond_dim and encode()")
    schedule, dev = diffusion.schedule, method.device
    edges = torch.linspace(0.0, 1.0, bins + 1, dtype=torch.float64)
    width = edges[1:] - edges[:-1]  # [bins]
    keys = ("own", "shuffled", "increase", "nats", "nats_sq")
    sums = {k: torch.zeros(bins, dtype=torch.float64) for k in keys}
    n_seen = 0
    for sl in batches(len(x0), batch_size, "shuffle test"):
        xb = x0[sl].to(dev)
        B = xb.shape[0]
        if B < 2:  # a last batch of one example has no other code to borrow
            continue
        for b in range(bins):
            u = torch.rand(B, generator=generator, dtype=torch.float64)
            t = (edges[b] + u * width[b]).to(dev)  # [B] stratified in bin b
            eps = torch.randn(xb.shape, generator=generator).to(dev)
            w = codes(method, xb, t)  # [B, K]
            own = diffusion.per_t_loss(xb, t, cond=w, eps=eps).double()
            idx = derangement(B, generator).to(dev)
            shuffled = diffusion.per_t_loss(xb, t, cond=w[idx], eps=eps).double()
            _, dgamma = schedule.gamma_and_derivative(t)
            nats = 0.5 * dgamma.detach().double() * (shuffled - own)  # [B] VDM eq. 17's integrand
            for k, v in (("own", own), ("shuffled", shuffled), ("increase", shuffled - own),
                         ("nats", nats), ("nats_sq", nats**2)):  # fmt: skip
                sums[k][b] += float(v.sum())
        n_seen += B
    if n_seen == 0:
        raise ValueError("the shuffle test needs at least 2 examples")
    mean = {k: v / n_seen for k, v in sums.items()}
    var = (mean["nats_sq"] - mean["nats"] ** 2).clamp(min=0) * n_seen / max(1, n_seen - 1)
    shuffle_nats = float((width * mean["nats"]).sum())
    own_total = float((width * mean["own"]).sum())
    shuffle_mse = float((width * mean["increase"]).sum())
    c, h, w_ = x0.shape[1:]
    return {
        "shuffle_nats": shuffle_nats,
        "shuffle_nats_se": float(torch.sqrt((width**2 * var / n_seen).sum())),
        "shuffle_bpd": shuffle_nats / (c * h * w_ * math.log(2)),
        "shuffle_mse": shuffle_mse,
        "shuffle_mse_rel": shuffle_mse / own_total if own_total > 0 else float("nan"),
        "shuffle_examples": n_seen,
        "t_bins": {
            "t": ((edges[1:] + edges[:-1]) / 2).tolist(),
            "own_mse": mean["own"].tolist(),
            "shuffled_mse": mean["shuffled"].tolist(),
            "increase_mse": mean["increase"].tolist(),
            "increase_nats": mean["nats"].tolist(),
        },
    }


def shuffle_figure(result: dict, title: str = "") -> bytes:
    """Two panels: own vs shuffled denoising error per t; the ELBO-weighted increase per t."""
    bins = result["t_bins"]
    t = np.asarray(bins["t"])
    fig = P._figure(9.0, 3.4)
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    ax1.plot(t, bins["own_mse"], marker="o", ms=3, label="own code w")
    ax1.plot(t, bins["shuffled_mse"], marker="o", ms=3, ls="--", label="another example's w")
    ax1.set_yscale("log")
    ax1.set(title="||eps - eps_hat||^2, same t and eps", xlabel="t", ylabel="per image")
    ax1.legend(fontsize=8)
    ax2.bar(t, bins["increase_nats"], width=0.9 / len(t), color="tab:red")
    ax2.axhline(0.0, color="black", lw=0.8)
    ax2.set(
        title=f"ELBO-weighted increase: {result['shuffle_nats']:.2f} "
        f"+- {result['shuffle_nats_se']:.2f} nats",
        xlabel="t",
        ylabel="nats per unit t",
    )
    if title:
        fig.suptitle(title)
    return P._png(fig)


@EVALS.register("collapse")
def collapse_family(ctx: EvalContext) -> dict:
    """Latent health and the shuffle test of a code-conditioned diffusion decoder (else {})."""
    from diffrep.eval.latents import latent_health

    method, cfg = ctx.method, ctx.cfg
    if code_conditioned_diffusion(method) is None:
        return {}
    out: dict = {}
    health = latent_health(
        method, ctx.test.images, cfg.batch_size, cfg.active_unit_threshold, cfg.mi_examples,
        cfg.seed,
    )  # fmt: skip
    if "kl_per_dim" in health:
        out["kl_per_dim_mean"] = health["kl_total"] / health["latent_dim"]
        out["kl_total"] = health["kl_total"]
        out["mi"], out["mi_max"] = health["mi"], health["mi_max"]
    out["active_units"], out["latent_dim"] = health["active_units"], health["latent_dim"]
    idx = subset_indices(len(ctx.test), cfg.shuffle_examples, cfg.seed)
    x0 = model_input(ctx.test.images[idx], torch.device("cpu"))
    res = shuffle_test(method, x0, cfg.shuffle_t_bins, cfg.batch_size, ctx.generator(21))
    out.update(res)
    caption = (
        f"Shuffle test on {res['shuffle_examples']} test images: the denoising error with the "
        "own code and with another example's code, same t and eps. Right: the increase "
        "weighted by the ELBO weight 1/2 gamma'(t); its integral is the nats of the bound the "
        "code is worth (0: the decoder ignores w, posterior collapse)."
    )
    ctx.figure("shuffle_test", shuffle_figure(res), "Shuffle test", "Collapse", caption, order=35)
    return {"collapse": out}
