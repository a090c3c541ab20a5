"""Where the diffusion bound spends its nats: the per-t loss curve of a pixel diffusion part.

For a method with a `diffusion` part (`diffrep.diffusion.pixel.PixelDiffusion`: vdm, ddpm and
the code-conditioned methods), the continuous-time diffusion term of the bound is
L_inf = E_t[gamma'(t)/2 ||eps - eps_hat(x_t, t, cond)||^2] (VDM eq. 17): its integrand over t
shows which noise levels the model finds hard (and, for a conditional decoder, which ones its code
helps with: see the collapse diagnostics). The family evaluates `per_t_loss` on `bins` fixed t
(bin centres), the same eps for every t, on up to `MAX_IMAGES` test images:

eval.json["loss_vs_t"] = {"t": [...], "mse": [...] (||eps - eps_hat||^2 per image),
"nats": [...] (gamma'(t)/2 * mse: the integrand), "diffusion_nats" (its mean over the bins: a
midpoint-rule estimate of the diffusion term)} and a figure. A code-conditioned part is given
`method.encode(x0)` as its code.
"""

from __future__ import annotations

import numpy as np
import torch

from diffrep.eval import plots as P
from diffrep.eval.batching import model_input, subset_indices
from diffrep.eval.context import EVALS, EvalContext

MAX_IMAGES = 256
BINS = 20


def loss_vs_t(method, x0: torch.Tensor, bins: int = BINS, generator=None) -> dict:
    """{"t", "mse", "nats"} lists over `bins` t-bin centres, averaged over the images x0."""
    part = method.diffusion
    cond = method.encode(x0) if part.cond_dim is not None else None
    t_grid = (torch.arange(bins, dtype=torch.float64) + 0.5) / bins
    eps = torch.randn(x0.shape, generator=generator).to(x0)  # the same noise at every t
    mse, nats = [], []
    for t in t_grid:
        tb = t.expand(x0.shape[0]).to(x0.device)
        m = part.per_t_loss(x0, tb, cond=cond, eps=eps).double().mean()
        _, dg = part.schedule.gamma_and_derivative(tb[:1])
        mse.append(float(m))
        nats.append(float(0.5 * dg.detach()[0].cpu() * m.cpu()))
    return {"t": t_grid.tolist(), "mse": mse, "nats": nats}


def loss_curve_figure(curve: dict) -> bytes:
    fig = P._figure(8.0, 2.8)
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    ax1.plot(curve["t"], curve["mse"], marker=".")
    ax1.set(title="||eps - eps_hat||^2 per image", xlabel="t", yscale="log")
    ax2.plot(curve["t"], curve["nats"], marker=".", color="tab:red")
    ax2.set(title="gamma'(t)/2 x error: nats of the bound", xlabel="t", yscale="log")
    return P._png(fig)


@EVALS.register("loss_vs_t")
def loss_vs_t_family(ctx: EvalContext) -> dict:
    """The per-t diffusion loss curve (skips methods without a pixel diffusion part)."""
    if getattr(getattr(ctx.method, "diffusion", None), "per_t_loss", None) is None:
        return {}
    idx = subset_indices(len(ctx.test), MAX_IMAGES, ctx.cfg.seed)
    x0 = model_input(ctx.test.images[idx], ctx.method.device)
    with torch.no_grad():
        curve = loss_vs_t(ctx.method, x0, generator=ctx.generator(40))
    curve["diffusion_nats"] = float(np.mean(curve["nats"]))
    caption = (
        "The diffusion term's integrand over t (midpoint rule over the bins, the same noise at "
        f"every t, {len(idx)} test images): which noise levels cost the most nats."
    )
    ctx.figure("loss_vs_t", loss_curve_figure(curve), "Loss against t", "Diffusion", caption, 55)
    return {"loss_vs_t": curve}
