"""A compact U-Net denoiser for 8x8 to 64x64 images (DDPM/ADM layout, VDM input features).

`UNet(in_channels, ...)(x, t, cond=None) -> [B, out_channels, H, W]`. The network knows nothing
about noise schedules: `t` is a float [B] whose meaning the caller picks (t in [0, 1] or a
normalised gamma); it is embedded by sinusoidal features of 1000 t (`layers.TimeEmbedding`).

Layout: conv_in -> per level `num_res_blocks` ResBlocks (attention where the current size is in
`attn_resolutions`) then a stride-2 downsample -> middle (res, attn, res) -> the mirror image with
skip concatenation (`UpPath`) -> GroupNorm, SiLU, conv_out. The time embedding enters every
ResBlock by scale/shift (FiLM) of its second norm.

Upsampling (`upsample`): "thin" (the default) convolves at the lower resolution from that level's
width to the next level's, then repeats pixels (nearest); "wide" (DDPM/ADM, diffusers) repeats
first and convolves at the higher resolution, keeping the lower level's width. Thin costs a
quarter of the FLOPs of that conv and narrows the next block's input: at 28x28 and matched
parameters the training step is about 10% faster (benchmarks/bench_train_step.py times both).

Odd sizes: a level downsamples only while H and W are both even and >= 8, so 28x28 goes
28 -> 14 -> 7 and further levels stay at 7x7 (no padding, no cropping); 8x8 goes 8 -> 4.

Conditioning on a code c [B, cond_dim]: `cond_mode="add"` adds an MLP embedding of c to the
time embedding (one shared embedding); `cond_mode="film"` concatenates it, so every block's FiLM
projection gets its own scale/shift from the code. FiLM is the same at every pixel, so a code can
only say *where* things are through features that x_t already has; `cond_map=True` also adds a
linear map of the code to the lowest-resolution features [C, h, w] before the middle block (a
VAE decoder's first layer), which lets the code place coarse shapes when x_t is mostly noise.

Optional `fourier_exponents` (VDM, Kingma et al. 2021, appendix B): extra input channels
sin(2^n pi x), cos(2^n pi x); with n near 7 they resolve single 8-bit bins (width 2/256 in model
space), which the likelihood at small noise depends on.

The last conv is zero-initialised, so training starts from eps_hat = 0.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from diffrep.errors import UserError
from diffrep.nets import NETWORKS
from diffrep.nets.layers import (
    Attention,
    CodeMap,
    CondEmbedding,
    ResBlock,
    TimeEmbedding,
    UpConv,
    group_norm,
    time_and_code_embedding,
    upsample_nearest,
)


def _can_downsample(h: int, w: int) -> bool:
    return h % 2 == 0 and w % 2 == 0 and min(h, w) >= 8


@NETWORKS.register("unet")
class UNet(nn.Module):
    def __init__(
        self,
        in_channels: int,
        *,
        out_channels: int | None = None,
        base_channels: int = 32,
        channel_mults: tuple[int, ...] = (1, 2, 2),
        num_res_blocks: int = 1,
        attn_resolutions: tuple[int, ...] = (7, 8),
        attn_heads: int = 1,
        cond_dim: int | None = None,
        cond_mode: Literal["add", "film"] = "add",
        dropout: float = 0.0,
        fourier_exponents: tuple[int, ...] = (),
        image_size: int | tuple[int, int] | None = None,
        channels_last: bool = False,
        upsample: Literal["thin", "wide"] = "thin",
        cond_map: bool = False,
    ):
        super().__init__()
        if in_channels < 1 or base_channels < 1 or num_res_blocks < 1 or not channel_mults:
            raise UserError(
                "UNet: in_channels, base_channels and num_res_blocks must be >= 1 and "
                "channel_mults non-empty; fix: e.g. base_channels=32, channel_mults=(1, 2, 2)"
            )
        if cond_mode not in ("add", "film"):
            raise UserError(f"UNet: cond_mode {cond_mode!r} is not allowed; use 'add' or 'film'")
        if upsample not in UpPath.MODES:
            raise UserError(f"UNet: upsample {upsample!r} is not allowed; use 'thin' or 'wide'")
        self.in_channels = in_channels
        self.out_channels = out_channels or in_channels
        self.cond_dim = cond_dim
        self.cond_mode = cond_mode
        self.channels_last = channels_last
        self.register_buffer(
            "fourier_freqs",
            torch.tensor([math.pi * 2.0**n for n in fourier_exponents], dtype=torch.float32),
            persistent=False,
        )
        self.attn_resolutions = tuple(attn_resolutions)
        # image_size (optional) lets the block layout (which levels downsample, where attention
        # goes) be fixed at construction; without it the layout is decided from the first input's
        # size, which is the same rule, so it only matters for parameter counts before a forward.
        temb = 4 * base_channels
        self.time_embed = TimeEmbedding(temb)
        emb_dim = temb
        if cond_dim is not None:
            self.cond_embed = CondEmbedding(cond_dim, temb)
            if cond_mode == "film":
                emb_dim = 2 * temb
        c_in = in_channels * (1 + 2 * len(fourier_exponents))
        self.conv_in = nn.Conv2d(c_in, base_channels, 3, padding=1)

        chans = [base_channels * m for m in channel_mults]
        self._levels = len(chans)
        self._nrb = num_res_blocks
        sizes = self._level_sizes(image_size) if image_size is not None else None
        # resize[i]: level i is followed by a downsample (known only when image_size is given;
        # otherwise every level gets resampling layers and the size rule decides at run time)
        self.resize = [
            i < self._levels - 1 and (sizes is None or sizes[i + 1] != sizes[i])
            for i in range(self._levels)
        ]
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        c = base_channels
        skip_chans = []  # the down path's output widths, one per ResBlock
        for i, ch in enumerate(chans):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(ResBlock(c, ch, emb_dim, dropout=dropout))
                c = ch
                skip_chans.append(c)
            self.down.append(blocks)
            self.downsample.append(nn.Conv2d(c, c, 3, 2, 1) if self.resize[i] else nn.Identity())
        self.cond_map = None
        if cond_map:
            if cond_dim is None or sizes is None:
                raise UserError(
                    "UNet: cond_map needs cond_dim and image_size (the map's shape); "
                    "fix: pass both, or cond_map=False"
                )
            self._map_shape = (c, *sizes[-1])
            self.cond_map = CodeMap(cond_dim, self._map_shape)
        self.mid1 = ResBlock(c, c, emb_dim, dropout=dropout)
        self.mid_attn = Attention(c, attn_heads)
        self.mid2 = ResBlock(c, c, emb_dim, dropout=dropout)
        self.up_path = UpPath(
            chans, skip_chans, emb_dim, self.resize, upsample=upsample, dropout=dropout
        )
        # One attention module per (level, block) whose size is in attn_resolutions. Which levels
        # qualify depends on the input size: with `image_size` given only those are created;
        # without it every level gets one and the size check picks at run time (the unused ones
        # then get no gradient; pass image_size to avoid the extra parameters).
        self.attn_down = nn.ModuleDict()
        self.attn_up = nn.ModuleDict()
        for i, ch in enumerate(chans):
            if sizes is not None and min(sizes[i]) not in self.attn_resolutions:
                continue
            if sizes is None and not self.attn_resolutions:
                continue
            for j in range(num_res_blocks):
                self.attn_down[f"{i}_{j}"] = Attention(ch, attn_heads)
                self.attn_up[f"{i}_{j}"] = Attention(ch, attn_heads)
        self.norm_out = group_norm(chans[0])
        self.conv_out = nn.Conv2d(chans[0], self.out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def _level_sizes(self, image_size: int | tuple[int, int]) -> list[tuple[int, int]]:
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        sizes = []
        for i in range(self._levels):
            sizes.append((h, w))
            if i < self._levels - 1 and _can_downsample(h, w):
                h, w = h // 2, w // 2
        return sizes

    def _attn(self, table: nn.ModuleDict, i: int, j: int, h: torch.Tensor) -> torch.Tensor:
        key = f"{i}_{j}"
        if key in table and min(h.shape[-2:]) in self.attn_resolutions:
            return table[key](h)
        return h

    def down_path(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None):
        """The encoder half: (h after the middle block, skips, level sizes, embedding [B, E]).

        `forward` is `down_path` then the up path; PDAE's gradient estimator (seed 002) reuses a
        frozen U-Net's `down_path` and adds its own up path.
        """
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise UserError(
                f"UNet expects images [B, {self.in_channels}, H, W], got {tuple(x.shape)}; "
                "fix: pass in_channels matching the data"
            )
        emb = time_and_code_embedding(self, t, cond, x)
        if self.fourier_freqs.numel():
            f = x[:, :, None] * self.fourier_freqs[None, None, :, None, None]  # [B, C, F, H, W]
            feats = torch.cat([torch.sin(f), torch.cos(f)], dim=2).flatten(1, 2)
            x = torch.cat([x, feats], dim=1)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)

        h = self.conv_in(x)
        skips, shapes = [], []
        for i, blocks in enumerate(self.down):
            for j, block in enumerate(blocks):
                h = self._attn(self.attn_down, i, j, block(h, emb))
                skips.append(h)
            shapes.append(h.shape[-2:])
            if i < self._levels - 1 and _can_downsample(*h.shape[-2:]):
                h = self.downsample[i](h)
        if self.cond_map is not None:  # the code as a coarse spatial map [B, C, h, w]
            h = h + self.cond_map(cond.to(h.dtype))
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        return h, skips, shapes, emb

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        # x [B, C, H, W], t [B] (or scalar), cond [B, cond_dim] -> [B, out_channels, H, W]
        return self.head(*self.down_path(x, t, cond))

    def head(self, h, skips: list, shapes: list, emb: torch.Tensor) -> torch.Tensor:
        """The decoder half on `down_path`'s outputs (`skips` is left intact for another head)."""
        h = self.up_path(h, list(skips), shapes, emb, attn=self._up_attn)
        return self.conv_out(F.silu(self.norm_out(h)))

    def _up_attn(self, i: int, j: int, h: torch.Tensor) -> torch.Tensor:
        return self._attn(self.attn_up, i, self._nrb - 1 - j, h)


class UpPath(nn.Module):
    """The decoder half of a U-Net: per level, deepest first, `nrb` ResBlocks on [h, skip] then
    upsampling to the next level's size; shared by `UNet` and PDAE's gradient estimator.

    chans [L]: each level's width; skip_chans: the down path's skip widths in order; resize [L]:
    level i - 1 is larger than level i (known from image_size; True everywhere when unknown, and
    the sizes seen at run time decide). (h [B, C_L, h, w], skips, shapes, emb [B, E]) -> [B, C_0,
    H, W]. See the module doc for "thin" vs "wide" upsampling.
    """

    MODES = ("thin", "wide")

    def __init__(
        self,
        chans: list[int],
        skip_chans: list[int],
        emb_dim: int,
        resize: list[bool],
        *,
        upsample: str = "thin",
        dropout: float = 0.0,
    ):
        super().__init__()
        self.mode = upsample
        skip_chans = list(skip_chans)
        nrb = len(skip_chans) // len(chans)
        self.blocks = nn.ModuleList()
        self.resample = nn.ModuleList()
        c = chans[-1]
        for i in reversed(range(len(chans))):
            blocks = nn.ModuleList()
            for _ in range(nrb):
                blocks.append(ResBlock(c + skip_chans.pop(), chans[i], emb_dim, dropout=dropout))
                c = chans[i]
            self.blocks.append(blocks)
            if i > 0 and resize[i - 1]:
                thin = upsample == "thin"
                c_next = chans[i - 1] if thin else c
                self.resample.append(nn.Conv2d(c, c_next, 3, padding=1) if thin else UpConv(c, c))
                c = c_next
            else:
                self.resample.append(nn.Identity())

    def forward(self, h, skips: list, shapes: list, emb: torch.Tensor, attn=None) -> torch.Tensor:
        levels = len(self.blocks)
        for k, blocks in enumerate(self.blocks):
            i = levels - 1 - k
            for j, block in enumerate(blocks):
                h = block(torch.cat([h, skips.pop()], dim=1), emb)
                h = h if attn is None else attn(i, j, h)
            if i == 0 or isinstance(self.resample[k], nn.Identity):
                continue
            grow = h.shape[-2:] != shapes[i - 1]
            if self.mode == "wide":  # DDPM/ADM: repeat pixels, then convolve at the new size
                if grow:
                    h = self.resample[k](h, shapes[i - 1])
            else:  # convolve at the low resolution (always: it sets the next level's width)
                h = self.resample[k](h)
                h = upsample_nearest(h, shapes[i - 1]) if grow else h
        return h
