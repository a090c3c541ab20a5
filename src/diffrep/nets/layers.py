"""Building blocks shared by the denoiser networks (UNet, ResMLP).

Networks never see noise schedules: they receive a float "time" t [B] whose meaning the caller
chooses (t in [0, 1], or a normalised gamma). `TimeEmbedding` scales t by 1000 before the
sinusoidal features (as DDPM/VDM do with t * 1000), so inputs of order one are resolved finely.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Transformer-style features of a scalar (Vaswani et al.; DDPM appendix B).

    t: [B] float -> [B, dim]; frequencies geometric from 1 to 1/max_period.
    """
    half = dim // 2
    # (under torch.compile uncached: dynamo warns on a cached call, and in a graph it is free)
    freqs = _frequencies.__wrapped__ if torch.compiler.is_compiling() else _frequencies
    args = t.float()[:, None] * freqs(half, max_period, t.device)[None, :]  # [B, half]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


@functools.cache
def _frequencies(half: int, max_period: float, device: torch.device) -> torch.Tensor:
    """[half] float32: a constant, built once per device (a sampler embeds t at every step;
    4 small ops of the ~60 in a latent prior's step)."""
    k = torch.arange(half, dtype=torch.float32, device=device)
    return torch.exp(-math.log(max_period) * k / half)


class TimeEmbedding(nn.Module):
    """t [B] -> [B, dim]: sinusoidal features of `scale * t`, then a 2-layer SiLU MLP."""

    def __init__(self, dim: int, *, scale: float = 1000.0, features: int | None = None):
        super().__init__()
        self.scale = float(scale)
        self.features = int(features or dim)
        self.mlp = nn.Sequential(
            nn.Linear(self.features, dim), nn.SiLU(), nn.Linear(dim, dim), nn.SiLU()
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        if t.dim() == 0:
            t = t[None]
        t = t.reshape(-1)
        return self.mlp(sinusoidal_embedding(t * self.scale, self.features))


class CondEmbedding(nn.Module):
    """A conditioning code c [B, K] -> [B, dim] (2-layer SiLU MLP)."""

    def __init__(self, cond_dim: int, dim: int):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(cond_dim, dim), nn.SiLU(), nn.Linear(dim, dim), nn.SiLU()
        )

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        return self.mlp(c)


def time_and_code_embedding(net: nn.Module, t: torch.Tensor, cond, x: torch.Tensor):
    """The per-example embedding a denoiser conditions on: time, plus the code when it has one.

    `net` has `time_embed`, `cond_dim`, `cond_embed` and `cond_mode` ("add": the code's
    embedding is added to the time embedding; "film": concatenated, for per-block FiLM).
    t is [B] or a scalar; cond [B, cond_dim] or None.
    """
    from diffrep.errors import UserError

    t = t.to(x.dtype).reshape(-1)
    B = x.shape[0]
    # One time for the whole batch (every sampler step, each term of a prior's T-step bound):
    # embed it once and expand; FiLM sees the stride-0 batch and projects one row too.
    # (a sampler's t is one value expanded, stride 0: known shared without comparing values)
    shared = t.numel() == 1 or t.stride(0) == 0
    # (not under torch.compile: reading values there is a host sync that splits the graph)
    eager_cpu = t.device.type == "cpu" and not torch.compiler.is_compiling()
    shared = shared or (eager_cpu and B > 1 and bool((t == t[0]).all()))
    emb = net.time_embed(t[:1]).expand(B, -1) if shared else net.time_embed(t)
    if net.cond_dim is None:
        return emb
    if cond is None or cond.shape[-1] != net.cond_dim:
        got = None if cond is None else tuple(cond.shape)
        raise UserError(
            f"{type(net).__name__} was built with cond_dim={net.cond_dim} but got cond {got}; "
            f"fix: pass a [B, {net.cond_dim}] code"
        )
    c = net.cond_embed(cond.to(x.dtype))
    return emb + c if net.cond_mode == "add" else torch.cat([emb, c], dim=1)


class FiLM(nn.Module):
    """Feature-wise linear modulation (Perez et al. 2018): h * (1 + scale(e)) + shift(e).

    Initialised to the identity (zero projection), so conditioning starts as a no-op.
    Works on [B, C, ...] feature maps and on [B, C] vectors.
    """

    def __init__(self, emb_dim: int, channels: int):
        super().__init__()
        self.proj = nn.Linear(emb_dim, 2 * channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return self.modulate(h, self.rows(e))

    def rows(self, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(1 + scale, shift) [B, C] each for embeddings e [B, emb_dim] (what `modulate` takes:
        a network can project a sampler's whole time grid at once, `ResMLP.on_grid`)."""
        if e.shape[0] > 1 and e.stride(0) == 0:  # one embedding shared by the batch
            row = self.proj(e[:1])  # [1, 2C]: project it once
            # Outside autograd the ops below broadcast the row ([1, C]; an expanded [B, C]
            # makes `1 + scale` write out B rows): the same values, bit for bit. With
            # autograd the expanded form stays, so gradients keep their summation order.
            if torch.is_grad_enabled():
                row = row.expand(e.shape[0], -1)
            scale, shift = row.chunk(2, dim=1)
        else:
            scale, shift = self.proj(e).chunk(2, dim=1)  # [B, C] each
        return 1 + scale, shift

    @staticmethod
    def modulate(h: torch.Tensor, rows: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """h [B, C, ...] * (1 + scale) + shift, rows [B or 1, C] broadcast over h's other dims."""
        scale1, shift = rows
        extra = (1,) * (h.dim() - 2)
        return h * scale1.view(*scale1.shape, *extra) + shift.view(*shift.shape, *extra)


def group_norm(channels: int, max_groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= max_groups that divides `channels`."""
    g = math.gcd(channels, max_groups)
    return nn.GroupNorm(g, channels)


def zero_module(m: nn.Module) -> nn.Module:
    """Zero a layer's parameters: residual branches and outputs then start as the identity/0."""
    for p in m.parameters():
        nn.init.zeros_(p)
    return m


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv x2 with the embedding applied by FiLM after the second norm (ADM's
    scale-shift norm); the second conv starts at zero so the block starts as the identity.

    x [B, C_in, H, W], emb [B, E] -> [B, C_out, H, W].
    """

    def __init__(self, c_in: int, c_out: int, emb_dim: int, *, dropout: float = 0.0):
        super().__init__()
        self.norm1 = group_norm(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = group_norm(c_out)
        self.film = FiLM(emb_dim, c_out)
        self.drop = nn.Dropout(dropout)
        self.conv2 = zero_module(nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = F.silu(self.film(self.norm2(h), emb))
        h = self.conv2(self.drop(h))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head self-attention over spatial positions, residual, output projection zeroed.

    x [B, C, H, W] -> [B, C, H, W]. Used only at low resolution (cost is O((HW)^2)).
    """

    def __init__(self, channels: int, heads: int = 1):
        super().__init__()
        if channels % heads:
            raise ValueError(f"attention: channels {channels} not divisible by heads {heads}")
        self.heads = heads
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = zero_module(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w)
        # contiguous [B, heads, HW, C/heads]: the fused (flash) CPU kernel needs unit stride in
        # the last dimension; a strided view falls back to the unfused math path
        q, k, v = (qkv[:, i].transpose(-1, -2).contiguous() for i in range(3))
        a = F.scaled_dot_product_attention(q, k, v)  # [B, heads, HW, C/heads]
        a = a.transpose(-1, -2).reshape(b, c, h, w)
        return x + self.out(a)


def upsample_nearest(h: torch.Tensor, size) -> torch.Tensor:
    """Nearest-neighbour resize of h [B, C, H, W] to `size` (F.interpolate's values, bit for bit).

    An exact 2x, the U-Net's and the decoders' usual case, is a broadcast and a copy: about twice
    as fast on CPU as interpolate's gather kernel (28 vs 13 ms for [128, 64, 14, 14]).
    """
    b, c, hh, ww = h.shape
    if tuple(size) == (2 * hh, 2 * ww):
        # (width 1: autograd's sum then runs over 4 contiguous values, in another order)
        fast_grad = torch.is_grad_enabled() and ww > 1
        return _Nearest2x.apply(h) if fast_grad else _nearest2x(h)
    return F.interpolate(h, size=tuple(size), mode="nearest")


def _nearest2x(h: torch.Tensor) -> torch.Tensor:
    b, c, hh, ww = h.shape  # [B, C, h, w] -> [B, C, 2h, 2w]
    return h[:, :, :, None, :, None].expand(b, c, hh, 2, ww, 2).reshape(b, c, 2 * hh, 2 * ww)


class _Nearest2x(torch.autograd.Function):
    """`_nearest2x` whose backward sums each 2x2 block of the gradient as two pair sums: columns,
    then rows. That is the order autograd's own backward (a sum over the expanded dims) takes
    for widths > 1, so gradients are bit for bit the same; but its strided 6-d reduction is slow
    on CPU: 4.9 against 0.3 ms for [64, 16, 28, 28], a small U-Net's step 3-4% faster."""

    @staticmethod
    def forward(ctx, h: torch.Tensor) -> torch.Tensor:
        return _nearest2x(h)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        b, c, H, W = g.shape
        g = g.reshape(b, c, H, W // 2, 2)
        g = g[..., 0] + g[..., 1]  # [B, C, 2h, w]: each row's column pairs
        g = g.view(b, c, H // 2, 2, W // 2)
        return g[:, :, :, 0] + g[:, :, :, 1]  # [B, C, h, w]: then the row pairs


@functools.cache
def _transposed_taps(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """T [4, 3]: how a 3x3 kernel applied after nearest-2x upsampling becomes the 4 taps of a
    stride-2 transposed conv (padding 1). Upsampled row 2i + a + d - 1 (tap d) is low-resolution
    row i + (a + d - 1) // 2; the transposed conv's tap k writes output row 2i + a from low row
    i + (a + 1 - k) / 2 with a = 1 - k % 2. T[k, d] = 1 where the two name the same low row.
    Built once per dtype and device (a constant; no per-element writes to a GPU)."""
    rows = []
    for k in range(4):
        a = 1 - k % 2
        rows.append([float((a + d - 1) // 2 == (a + 1 - k) // 2) for d in range(3)])
    return torch.tensor(rows, dtype=dtype, device=device)


class UpConv(nn.Conv2d):
    """Nearest-neighbour upsampling of h [B, C_in, h, w] to `size`, then a 3x3 conv (padding 1).

    Parameters are a plain Conv2d's (`weight`, `bias`). For an exact 2x and outside autograd
    (sampling, decoding, evaluation) the same map runs as one stride-2 transposed conv with a
    folded 4x4 kernel: each output pixel reads 2x2 low-resolution pixels, not the 3x3 upsampled
    ones, and the 4x larger upsampled map is never built. About 4x faster on one CPU thread for
    [128, 32, 14, 14] -> [128, 16, 28, 28]; equal up to float rounding (~1e-6). Training keeps
    the literal form, so trained weights (and every figure made from them) stay bit for bit.
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True):
        super().__init__(in_channels, out_channels, 3, padding=1, bias=bias)

    def forward(self, h: torch.Tensor, size) -> torch.Tensor:
        _, _, hh, ww = h.shape
        if torch.is_grad_enabled() or tuple(size) != (2 * hh, 2 * ww):
            return super().forward(upsample_nearest(h, size))
        m = _transposed_taps(self.weight.dtype, self.weight.device)
        w = torch.einsum("kd,le,oide->iokl", m, m, self.weight)  # [C_in, C_out, 4, 4]
        return F.conv_transpose2d(h, w.contiguous(), self.bias, stride=2, padding=1)


class CodeMap(nn.Linear):
    """A code [B, K] as a feature map [B, *shape] (shape = (C, h, w)): Linear(code), reshaped.

    Added to a network's lowest-resolution features, it lets a code place coarse shapes where
    FiLM (the same at every pixel) cannot. Zero-initialised, so the features start unchanged.
    A subclass of nn.Linear: its parameters are `weight` and `bias`, as a plain Linear's.
    """

    def __init__(self, code_dim: int, shape: tuple[int, ...]):
        super().__init__(code_dim, math.prod(shape))
        self.shape = tuple(shape)
        zero_module(self)

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        return super().forward(code).view(-1, *self.shape)
