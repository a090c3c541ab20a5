"""Editing images through a code-conditioned diffusion model's two codes: x_T and z.

A deterministic DDIM inversion x0 -> x_T given z = E(x0) keeps what the code does not (pose,
stroke detail) in x_T, so moving z alone changes what the code holds and little else (PDAE, seed
002 "attribute manipulation"; Diff-AE, Preechakul et al. 2022):

- `interpolate`: slerp between the inverted x_T (they are Gaussian-like: their norms ~ sqrt(D),
  which a straight line would shrink in the middle), lerp between the codes;
- `manipulate`: z + a * direction (e.g. a linear probe's weight), each decoded from x0's own x_T.

`model` has encode(x0) -> z [B, Z], invert(x0, z, steps) -> x_T and decode(x_T, z, steps) -> x0
(`methods.pdae.PDAE`); steps None means the model's default.
"""

from __future__ import annotations

import torch


def slerp(a: torch.Tensor, b: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """a, b [B, D], lam [n] in [0, 1] -> [B, n, D]: the great-circle path from a to b (Shoemake
    1985), sin((1 - lam) theta) / sin(theta) a + sin(lam theta) / sin(theta) b."""
    lam = lam.to(a)[None, :, None]  # [1, n, 1]
    cos = torch.nn.functional.cosine_similarity(a, b)[:, None, None].clamp(-1, 1)
    theta = torch.acos(cos).clamp(min=1e-6)  # (parallel a, b: the limit is the straight line)
    return (torch.sin((1 - lam) * theta) * a[:, None] + torch.sin(lam * theta) * b[:, None]) / (
        torch.sin(theta)
    )


@torch.no_grad()
def interpolate(model, x0_a, x0_b, n: int = 8, steps: int | None = None) -> torch.Tensor:
    """[B, n, C, H, W]: from x0_a to x0_b [B, C, H, W], slerp of x_T and lerp of z."""
    shape = x0_a.shape[1:]
    za, zb = model.encode(x0_a), model.encode(x0_b)
    xa, xb = model.invert(x0_a, za, steps).flatten(1), model.invert(x0_b, zb, steps).flatten(1)
    lam = torch.linspace(0, 1, n, device=xa.device)
    x_T = slerp(xa, xb, lam).reshape(-1, *shape)
    w = lam.to(za)[None, :, None]  # [1, n, 1]
    z = ((1 - w) * za[:, None] + w * zb[:, None]).flatten(0, 1)  # [B n, Z]
    return model.decode(x_T, z, steps).reshape(len(x0_a), n, *shape)


@torch.no_grad()
def manipulate(model, x0, direction, amounts, steps: int | None = None) -> torch.Tensor:
    """[B, len(amounts), C, H, W]: z + a * direction [Z] for each a, all from x0's own x_T."""
    z = model.encode(x0)
    x_T = model.invert(x0, z, steps)
    a = torch.as_tensor(amounts, dtype=z.dtype, device=z.device)
    zs = (z[:, None] + a[None, :, None] * direction.to(z)[None, None]).flatten(0, 1)
    x_T = x_T.repeat_interleave(len(a), dim=0)
    return model.decode(x_T, zs, steps).reshape(len(x0), len(a), *x0.shape[1:])
