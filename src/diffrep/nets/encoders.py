"""Convolutional encoder (also with a Gaussian head) and decoder shared by vae, dae, drl, pdae and
vae_vdm.

Sized for 8x8 to 64x64 images: the encoder halves the resolution while both sides are even and
at least 8 (28 -> 14 -> 7, 32 -> 16 -> 8 -> 4, 8 -> 4), then a linear head maps the flattened
features to `out_dim`. The decoder mirrors the same size sequence, upsampling to the exact sizes,
so odd resolutions (7x7) round-trip without padding tricks.

`ConvEncoder(..., time_embedding=True)` is the time-dependent encoder E(x0, t) of DRL (seed 001
eq. 4): t [B] in [0, 1] is embedded as in the UNet (`layers.TimeEmbedding`) and enters every
residual block by FiLM after its second norm (ADM's scale-shift norm, zero-initialised, so the
encoder starts out independent of t). The network knows nothing of schedules: t is just a float.
"""

from __future__ import annotations

import torch
from torch import nn

from diffrep.errors import UserError
from diffrep.nets.layers import FiLM, TimeEmbedding, UpConv


def _num_groups(channels: int) -> int:
    for g in (8, 4, 2, 1):
        if channels % g == 0:
            return g
    return 1


def size_sequence(h: int, w: int) -> list[tuple[int, int]]:
    """Spatial sizes at each encoder level, from the input down to the bottleneck."""
    sizes = [(h, w)]
    while h % 2 == 0 and w % 2 == 0 and min(h, w) >= 8:
        h, w = h // 2, w // 2
        sizes.append((h, w))
    return sizes


class ConvBlock(nn.Module):
    """GroupNorm -> SiLU -> conv3x3, twice, with a residual connection.

    With `emb_dim > 0` an embedding e [B, emb_dim] modulates the second norm's output by FiLM.
    """

    def __init__(self, channels: int, emb_dim: int = 0):
        super().__init__()
        self.net = nn.Sequential(
            nn.GroupNorm(_num_groups(channels), channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.GroupNorm(_num_groups(channels), channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )
        self.film = FiLM(emb_dim, channels) if emb_dim > 0 else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        if self.film is None:
            return x + self.net(x)
        h = self.film(self.net[:4](x), emb)  # after the second GroupNorm
        return x + self.net[4:](h)


def _check_sizes(where: str, **sizes: int) -> None:
    bad = {k: v for k, v in sizes.items() if v < 1}
    if bad:
        got = ", ".join(f"{k}={v}" for k, v in bad.items())
        raise UserError(f"{where}: sizes must be >= 1, got {got}; fix: e.g. width=32")


class ConvEncoder(nn.Module):
    """x [B, C, H, W] (and t [B] when `time_embedding`) -> [B, out_dim]."""

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        out_dim: int,
        width: int = 32,
        max_mult: int = 4,
        cond_dim: int = 0,
        time_embedding: bool = False,
    ):
        super().__init__()
        _check_sizes("ConvEncoder", out_dim=out_dim, width=width, max_mult=max_mult)
        c, h, w = in_shape
        self.sizes = size_sequence(h, w)
        chans = [width * min(2**i, max_mult) for i in range(len(self.sizes))]
        self.time_embedding = time_embedding
        emb_dim = 4 * width if time_embedding else 0  # the UNet's 4 x base width
        self.time_embed = TimeEmbedding(emb_dim) if time_embedding else None
        self.stem = nn.Conv2d(c, chans[0], 3, padding=1)
        blocks: list[nn.Module] = []
        for i in range(len(self.sizes)):
            blocks.append(ConvBlock(chans[i], emb_dim))
            if i + 1 < len(self.sizes):  # stride-2 conv: learned downsampling
                blocks.append(nn.Conv2d(chans[i], chans[i + 1], 3, stride=2, padding=1))
        self.blocks = nn.Sequential(*blocks)
        hb, wb = self.sizes[-1]
        self.flat_dim = chans[-1] * hb * wb
        # cond_dim > 0: an extra vector (e.g. a time embedding for E(x0, t)) joins the head.
        self.head = nn.Sequential(
            nn.SiLU(), nn.Linear(self.flat_dim + cond_dim, 2 * width * max_mult), nn.SiLU()
        )
        self.out = nn.Linear(2 * width * max_mult, out_dim)

    def forward(
        self, x: torch.Tensor, cond: torch.Tensor | None = None, t: torch.Tensor | None = None
    ) -> torch.Tensor:
        if (t is None) == self.time_embedding:
            raise UserError(
                "ConvEncoder: pass t exactly when built with time_embedding=True "
                f"(time_embedding={self.time_embedding}, t given: {t is not None}); "
                "fix: encoder(x, t=t) for E(x0, t), encoder(x) otherwise"
            )
        emb = None
        if t is not None:  # [B] or a scalar shared by the batch
            t = t.to(x.dtype).reshape(-1)
            emb = self.time_embed(t)
            emb = emb.expand(x.shape[0], -1) if t.numel() == 1 else emb  # FiLM: one row
        h = self.stem(x)
        for block in self.blocks:
            h = block(h, emb) if isinstance(block, ConvBlock) else block(h)
        hidden = h.flatten(1)  # [B, flat_dim]
        if cond is not None:
            hidden = torch.cat([hidden, cond], dim=1)
        return self.out(self.head(hidden))


class GaussianConvEncoder(ConvEncoder):
    """x [B, C, H, W] -> (mean, logvar) [B, Z] each: a diagonal Gaussian q(z | x).

    The log-variance is clamped to [-12, 8], which keeps exp(logvar) finite early in training.
    """

    def __init__(self, in_shape: tuple[int, int, int], latent_dim: int, width: int = 32, **kw):
        super().__init__(in_shape, 2 * latent_dim, width=width, **kw)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None):
        mean, logvar = super().forward(x, cond).chunk(2, dim=1)
        return mean, logvar.clamp(-12.0, 8.0)


class ConvDecoder(nn.Module):
    """z [B, z_dim] -> [B, out_channels, H, W] for an image of shape `out_shape` (C, H, W)."""

    def __init__(
        self,
        z_dim: int,
        out_shape: tuple[int, int, int],
        out_channels: int,
        width: int = 32,
        max_mult: int = 4,
    ):
        super().__init__()
        _check_sizes("ConvDecoder", z_dim=z_dim, width=width, max_mult=max_mult)
        _, h, w = out_shape
        self.sizes = size_sequence(h, w)[::-1]  # bottleneck first
        n = len(self.sizes)
        chans = [width * min(2 ** (n - 1 - i), max_mult) for i in range(n)]
        hb, wb = self.sizes[0]
        self.chans0 = chans[0]
        self.inp = nn.Sequential(
            nn.Linear(z_dim, 2 * width * max_mult),
            nn.SiLU(),
            nn.Linear(2 * width * max_mult, chans[0] * hb * wb),
        )
        self.blocks = nn.ModuleList(ConvBlock(c) for c in chans)
        self.ups = nn.ModuleList(UpConv(chans[i], chans[i + 1]) for i in range(n - 1))
        self.out = nn.Sequential(
            nn.GroupNorm(_num_groups(chans[-1]), chans[-1]),
            nn.SiLU(),
            nn.Conv2d(chans[-1], out_channels, 3, padding=1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        hb, wb = self.sizes[0]
        h = self.inp(z).view(z.shape[0], self.chans0, hb, wb)
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i < len(self.ups):  # nearest upsample to the exact next size, then conv
                h = self.ups[i](h, self.sizes[i + 1])
        return self.out(h)
