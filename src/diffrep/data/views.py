"""Random views of a batch for an encoder: what the code may not depend on.

An encoder that sees x0 shifted by a random few pixels, while the denoiser it conditions must
restore the *unshifted* x0, cannot put the exact position in its code: the denoiser has to read
the position from x_t, and the code keeps what survives the shift (the digit, its style). This is
the novel-view bottleneck of SODA (Hudson et al. 2024, "SODA: Bottleneck diffusion models for
representation learning"), with translations, rotations and scalings as the views. Views are
for training, and for the bounds of methods whose encoder was trained on them (a bound with
q(z | v(x0)) is a bound for every v); a representation, `encode(x0)`, reads x0 itself.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from diffrep.errors import UserError


def random_translate(
    x: torch.Tensor, max_shift: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """x [B, C, H, W] translated by (dy, dx) ~ U{-max_shift..max_shift}^2, one per example.

    Pixels moved in from outside repeat the border (the background of centred digits), so the
    view has no black bars the encoder could read the shift from. max_shift = 0 returns x.
    """
    if max_shift <= 0:
        return x
    b, _, h, w = x.shape
    s = int(max_shift)
    dev = generator.device if generator is not None else x.device
    offsets = torch.randint(0, 2 * s + 1, (2, b), generator=generator, device=dev).to(x.device)
    padded = F.pad(x, (s, s, s, s), mode="replicate")  # [B, C, H + 2s, W + 2s]
    rows = offsets[0, :, None] + torch.arange(h, device=x.device)  # [B, H]
    cols = offsets[1, :, None] + torch.arange(w, device=x.device)  # [B, W]
    idx_b = torch.arange(b, device=x.device)[:, None, None]
    # [B, H, W, C] from advanced indexing over (batch, row, col), channels last, then back
    return padded.permute(0, 2, 3, 1)[idx_b, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


class RandomView:
    """The encoder's random view: integer shifts up to `shift` pixels, and when `rotate` (degrees)
    or `scale` (relative) is set, a random affine map instead (bilinear, border repeated; shifts
    then continuous). All 0: the identity, and no random numbers are drawn."""

    def __init__(self, shift: int = 0, rotate: float = 0.0, scale: float = 0.0):
        if shift < 0 or shift != int(shift) or rotate < 0 or not 0 <= scale < 1:
            raise UserError(
                f"view: need a whole shift >= 0, rotate >= 0 and 0 <= scale < 1, got "
                f"shift={shift}, rotate={rotate}, scale={scale}; "
                "fix: e.g. {shift: 2, rotate: 10, scale: 0.1}"
            )
        self.shift, self.rotate, self.scale = int(shift), float(rotate), float(scale)

    def __bool__(self) -> bool:
        return bool(self.shift or self.rotate or self.scale)

    def encoder_input(
        self, x0: torch.Tensor, training: bool, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """What an encoder sees in a method's loss: a random view of x0 in training, x0 itself
        in eval() mode (the target of the denoiser is x0 either way)."""
        return self(x0, generator) if training else x0

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if not (self.rotate or self.scale):
            return random_translate(x, self.shift, generator)
        b, _, h, w = x.shape
        dev = generator.device if generator is not None else x.device
        u = 2 * torch.rand(4, b, generator=generator, device=dev, dtype=torch.float64) - 1
        u = u.to(x.device)  # [4, B] in [-1, 1): angle, log scale, dy, dx
        angle = torch.deg2rad(self.rotate * u[0])
        s = torch.exp(math.log1p(self.scale) * u[1])
        cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
        # affine_grid maps output coordinates in [-1, 1] to input ones: a shift of k pixels is
        # 2k / size in those units
        theta = torch.stack(
            [
                torch.stack([cos, -sin, 2 * self.shift * u[3] / w], 1),
                torch.stack([sin, cos, 2 * self.shift * u[2] / h], 1),
            ],
            1,
        ).to(x.dtype)  # [B, 2, 3]
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def build_view(options: dict | None) -> RandomView:
    """A method's `view: {shift: .., rotate: .., scale: ..}` option as a RandomView."""
    options = dict(options or {})
    unknown = set(options) - {"shift", "rotate", "scale"}
    if unknown:
        raise UserError(
            f"view: unknown option(s) {sorted(unknown)}; fix: use shift, rotate and scale"
        )
    return RandomView(**options)
