"""What a code-conditioned diffusion decoder makes of its code, in pictures (seed 000's "guided
generation" and reconstructions; seed 001's generation with a fixed code).

For methods of the convention in `diffrep.eval.collapse` (`method.diffusion` with `cond_dim`,
`method.encode(x0)` the code w), the `code_samples` family draws, with the decoder's sampler:

- reconstructions: `N_IMAGES` test images encoded to w, then `N_SEEDS` ancestral samples of
  p(x | w) each, one column per image: what w pins down (a collapsed code gives unrelated digits);
- DDIM inversion and regeneration: x_T = DDIM^-1(x0; w) (deterministic, Song et al. 2021a
  sec. 4.3), then DDIM from that x_T with the own code (close to x0) and with another image's
  code w' (what the code changes while the noise stays);
- interpolation: codes (1 - a) w_A + a w_B for `N_INTERP` values of a, decoded by DDIM from one
  shared x_T, so only the code moves along a row;
- samples from the prior when the method samples (w ~ p(w), then p(x | w)).

eval.json["code_samples"]: per-pixel mean squared errors (model space) of the reconstructions
against their own image ("recon_mse") and against another image of the set ("recon_mse_other":
equal to recon_mse when the code carries nothing), and of the DDIM regenerations with the own
and with a swapped code ("regen_mse", "regen_mse_swapped").
"""

from __future__ import annotations

import numpy as np
import torch

from diffrep.eval import collapse as C
from diffrep.eval import plots as P
from diffrep.eval.batching import model_input, to_uint8_np
from diffrep.eval.context import EVALS, EvalContext

N_IMAGES = 8  # test images in the reconstruction and regeneration grids
N_SEEDS = 5  # samples of p(x | w) per image
N_INTERP = 8  # points per interpolation row
N_PAIRS = 2  # interpolation rows
N_PRIOR = 16  # samples from the prior


def _mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).pow(2).mean())


def _pairs(labels: np.ndarray | None, n: int, k: int) -> list[tuple[int, int]]:
    """k index pairs among the first n images, with different labels where labels exist."""
    out: list[tuple[int, int]] = []
    used: set[int] = set()
    for i in range(n):
        for j in range(i + 1, n):
            if len(out) == k:
                return out
            if i in used or j in used:
                continue
            if labels is None or labels[i] != labels[j]:
                out.append((i, j))
                used.update((i, j))
    return out


@torch.no_grad()
def code_samples(method, x0: torch.Tensor, labels=None, *, steps=None, generator=None) -> dict:
    """{"numbers": {...}, "grids": {name: uint8 [N, C, H, W]}} for test images x0 [n, C, H, W]."""
    diffusion = C.code_conditioned_diffusion(method)
    dev = method.device
    x0 = x0.to(dev)
    n = x0.shape[0]
    w = C.codes(method, x0)  # [n, K]
    other = torch.roll(torch.arange(n, device=dev), 1)  # image i borrows image i-1's code

    # reconstructions: N_SEEDS samples with each code, laid out one column per image
    rep = w.repeat(N_SEEDS, 1)  # [N_SEEDS * n, K]: row s holds the n codes
    recon = diffusion.sample(rep.shape[0], cond=rep, steps=steps, generator=generator)
    recon = recon.view(N_SEEDS, n, *x0.shape[1:])
    numbers = {
        "recon_mse": _mse(recon, x0.expand_as(recon)),
        "recon_mse_other": _mse(recon, x0[other].expand_as(recon)),
    }
    grids = {"reconstructions": torch.cat([x0, recon.flatten(0, 1)])}

    # deterministic DDIM round trip, with the own code and with a swapped one
    x_T = diffusion.invert(x0, cond=w, steps=steps)
    ddim = dict(sampler="ddim", steps=steps, x_T=x_T)
    regen = diffusion.sample(n, cond=w, **ddim)
    swapped = diffusion.sample(n, cond=w[other], **ddim)
    numbers["regen_mse"] = _mse(regen, x0)
    numbers["regen_mse_swapped"] = _mse(swapped, x0)
    grids["regeneration"] = torch.cat([x0, regen, x0[other], swapped])

    # interpolation between two codes from one shared x_T
    rows = []
    a = torch.linspace(0.0, 1.0, N_INTERP, device=dev)[:, None]  # [N_INTERP, 1]
    for i, j in _pairs(labels, n, N_PAIRS):
        path = (1 - a) * w[i] + a * w[j]  # [N_INTERP, K]
        noise = torch.randn((1, *x0.shape[1:]), generator=generator).to(dev)
        x_T = noise.expand(N_INTERP, *x0.shape[1:])
        rows.append(diffusion.sample(N_INTERP, cond=path, sampler="ddim", steps=steps, x_T=x_T))
    if rows:
        grids["interpolation"] = torch.cat(rows)
    if method.can("sample"):
        kw = {} if steps is None else {"steps": steps}
        grids["prior_samples"] = method.sample(N_PRIOR, generator=generator, **kw)
    return {"numbers": numbers, "grids": {k: to_uint8_np(v) for k, v in grids.items()}}


@EVALS.register("code_samples")
def code_samples_family(ctx: EvalContext) -> dict:
    """Reconstruction, regeneration and interpolation grids of a code-conditioned decoder."""
    if C.code_conditioned_diffusion(ctx.method) is None:
        return {}
    n = min(N_IMAGES, len(ctx.test))
    if n < 2:
        return {}
    steps = ctx.cfg.sample_kwargs.get("steps")
    x0 = model_input(ctx.test.images[:n], torch.device("cpu"))
    labels = ctx.test.labels[:n] if ctx.test.labels is not None else None
    res = code_samples(ctx.method, x0, labels, steps=steps, generator=ctx.generator(22))
    g, num = res["grids"], res["numbers"]
    figures = [
        ("code_reconstructions", "reconstructions", n, "Reconstructions with the code fixed",
         f"Top row: test images; below: {N_SEEDS} samples of p(x | w) with each image's code w "
         f"(different noise). Pixel MSE to the own image {num['recon_mse']:.3f}, to another "
         f"image {num['recon_mse_other']:.3f} (equal when the code carries nothing)."),
        ("code_regeneration", "regeneration", n, "DDIM inversion and regeneration",
         "Rows: test images; DDIM inversion to x_T and regeneration with the own code "
         f"(MSE {num['regen_mse']:.3f}); the images whose codes are swapped in; regeneration "
         f"from the same x_T with the swapped code (MSE {num['regen_mse_swapped']:.3f})."),
        ("code_interpolation", "interpolation", N_INTERP, "Interpolation between two codes",
         "Each row: codes (1 - a) w_A + a w_B, a from 0 to 1, decoded by DDIM from one x_T."),
        ("code_prior_samples", "prior_samples", 8, "Samples: w ~ p(w), then p(x | w)",
         "Seed 000's guided generation: a code from the prior, then the conditional diffusion."),
    ]  # fmt: skip
    for order, (name, key, ncol, title, caption) in enumerate(figures):
        if key in g:
            png = P.image_grid(g[key], nrow=ncol)
            ctx.figure(name, png, title, "Code-conditioned generation", caption, order=36 + order)
    return {"code_samples": num}
