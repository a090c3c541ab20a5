"""Are training images attractors of a denoiser? (seed 003, "Attractor on the Manifold?")

For a method with `denoise(x)` (dae, ideal, svd): noisy held-out images x = x_test + s eps (s the
method's `sigma`) are iterated with x' = (1 - eta) x + eta DAE(x) (`diffrep.methods.iteration`),
and an iterate counts as ending *on* a stored training image when its nearest training image
(L2) is within half an 8-bit level in every pixel (the same 8-bit image). The seed says: the
ideal denoiser restores a stored image every time, the linear-subspace denoiser V V^T x never
(it converges to the projection of its start); a trained `dae` is measured.

eval.json["attractors"] = {"on_training_image_fraction", "median_distance_to_train" (the final
iterates'), "median_test_to_train" (the clean test images', for scale), "n_inputs", "steps",
"eta", "sigma"}, and a figure: noisy input, iterate after steps/10, final iterate, nearest
training image, one column per input.
"""

from __future__ import annotations

import numpy as np
import torch

from diffrep.diffusion.ideal import nearest_distances
from diffrep.eval import plots as P
from diffrep.eval.batching import model_input, subset_indices, to_uint8_np
from diffrep.eval.context import EVALS, EvalContext
from diffrep.methods.iteration import ETA, STEPS, iterate_denoiser

#: Noisy test images iterated (the nearest-neighbour search covers the whole training split).
N_INPUTS = 200
#: Columns of the figure.
N_SHOWN = 8
#: Half an 8-bit level in model space (bins of width 2/256): closer in every pixel than this,
#: an iterate is the training image as an 8-bit picture.
HALF_LEVEL = 1.0 / 256


@EVALS.register("attractors")
def attractors_family(ctx: EvalContext) -> dict:
    """Fraction of denoiser iterates from noisy test images that end on a training image."""
    method = ctx.method
    if not callable(getattr(method, "denoise", None)):
        return {}
    cfg = ctx.cfg
    sigma = float(getattr(method, "sigma", 0.3))
    idx = subset_indices(len(ctx.test), N_INPUTS, cfg.seed)
    dev = method.device
    x_test = model_input(ctx.test.images[idx], dev)  # [M, C, H, W]
    g = ctx.generator(31)
    x = x_test + sigma * torch.randn(x_test.shape, generator=g).to(dev)
    early = iterate_denoiser(method.denoise, x, eta=ETA, steps=max(1, STEPS // 10))
    final = iterate_denoiser(method.denoise, early, eta=ETA, steps=STEPS - max(1, STEPS // 10))
    train = model_input(ctx.full_train.images, torch.device("cpu"))
    d, nn = nearest_distances(final.cpu(), train)
    on = (final.cpu() - train[nn]).flatten(1).abs().amax(1) < HALF_LEVEL  # [M]
    d_test, _ = nearest_distances(x_test.cpu(), train)
    out = {
        "on_training_image_fraction": float(on.double().mean()),
        "median_distance_to_train": float(d.median()),
        "median_test_to_train": float(d_test.median()),
        "n_inputs": len(idx),
        "steps": STEPS,
        "eta": ETA,
        "sigma": sigma,
    }
    k = min(N_SHOWN, len(idx))
    rows = [x[:k].clamp(-1, 1), early[:k].clamp(-1, 1), final[:k].clamp(-1, 1), train[nn[:k]]]
    png = P.image_grid(np.concatenate([to_uint8_np(r) for r in rows]), nrow=k)
    caption = (
        f"Rows: noisy test images (s = {sigma:g}); after {max(1, STEPS // 10)} and {STEPS} steps "
        f"of x' = (1 - {ETA:g}) x + {ETA:g} DAE(x); the nearest training image. "
        f"{out['on_training_image_fraction']:.0%} of {len(idx)} iterates end on a training image."
    )
    ctx.figure("attractors", png, "Training images as attractors", "Denoiser", caption, order=62)
    return {"attractors": out}
