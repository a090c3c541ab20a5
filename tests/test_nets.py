"""UNet / ResMLP / layers: shapes for 8x8 to 64x64 and odd sizes, zero output at init,
per-example independence, conditioning, and that the networks can actually fit a target."""

from __future__ import annotations

import math

import pytest
import torch

from diffrep.errors import UserError
from diffrep.nets.encoders import ConvEncoder
from diffrep.nets.layers import FiLM, TimeEmbedding, sinusoidal_embedding
from diffrep.nets.mlp import ResMLP
from diffrep.nets.unet import UNet

TINY = dict(base_channels=8, channel_mults=(1, 2, 2), num_res_blocks=1)


def _randomise_output(net: torch.nn.Module) -> None:
    """Zero-initialised output layers hide everything else; give them weights for probing."""
    g = torch.Generator().manual_seed(0)
    for p in net.parameters():
        if (p == 0).all() and p.dim() > 1:
            with torch.no_grad():
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize(
    "shape, image_size",
    [((1, 8, 8), 8), ((1, 28, 28), 28), ((3, 32, 32), 32), ((1, 7, 7), None), ((2, 12, 20), None)],
)
@pytest.mark.parametrize("upsample", ["thin", "wide"])
def test_unet_shapes_and_zero_init(shape, image_size, upsample):
    net = UNet(shape[0], image_size=image_size, upsample=upsample, **TINY)
    x = torch.randn(3, *shape)
    out = net(x, torch.rand(3))
    assert out.shape == x.shape
    assert torch.count_nonzero(out) == 0  # training starts at eps_hat = 0


def test_unet_64x64_and_downsampling_rule():
    net = UNet(3, base_channels=8, channel_mults=(1, 1, 2, 2), image_size=64, attn_resolutions=(8,))
    assert net._level_sizes(64) == [(64, 64), (32, 32), (16, 16), (8, 8)]
    assert net._level_sizes(28)[:3] == [(28, 28), (14, 14), (7, 7)]
    assert net._level_sizes(28)[3] == (7, 7)  # 7 is odd: no further downsampling
    # attention only where the level size is listed: the 8x8 level, one per block and direction
    assert set(net.attn_down) == {"3_0"}
    out = net(torch.randn(2, 3, 64, 64), torch.rand(2))
    assert out.shape == (2, 3, 64, 64)


def test_unet_examples_are_independent_and_time_matters():
    torch.manual_seed(0)
    net = UNet(1, image_size=28, **TINY).eval()
    _randomise_output(net)
    x, t = torch.randn(4, 1, 28, 28), torch.rand(4)
    full = net(x, t)
    single = torch.cat([net(x[i : i + 1], t[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(full, single, rtol=1e-4, atol=1e-5)  # GroupNorm: no batch mixing
    assert (net(x, t + 0.3) - full).abs().mean() > 1e-3 * full.abs().mean()
    # a scalar t is broadcast over the batch
    torch.testing.assert_close(net(x, torch.tensor(0.5)), net(x, torch.full((4,), 0.5)))


def test_unet_channels_last_and_fourier_features():
    torch.manual_seed(0)
    a = UNet(1, image_size=28, **TINY)
    b = UNet(1, image_size=28, channels_last=True, **TINY)
    b.load_state_dict(a.state_dict())
    _randomise_output(a)
    b.load_state_dict(a.state_dict())
    x, t = torch.randn(2, 1, 28, 28), torch.rand(2)
    torch.testing.assert_close(a(x, t), b(x, t), rtol=1e-4, atol=1e-5)
    ff = UNet(1, image_size=28, fourier_exponents=(6, 7), **TINY)
    assert ff.conv_in.in_channels == 5  # x plus sin and cos at two frequencies
    assert ff(x, t).shape == x.shape


@pytest.mark.parametrize("mode", ["add", "film"])
def test_unet_conditioning(mode):
    torch.manual_seed(0)
    net = UNet(1, image_size=8, cond_dim=3, cond_mode=mode, **TINY)
    _randomise_output(net)
    x, t = torch.randn(2, 1, 8, 8), torch.rand(2)
    c = torch.randn(2, 3)
    # conditioning paths start as the identity (zeroed FiLM); give them weights to probe
    for m in net.modules():
        if isinstance(m, FiLM):
            torch.nn.init.normal_(m.proj.weight, std=0.1)
    assert (net(x, t, c) - net(x, t, -c)).abs().max() > 1e-4
    with pytest.raises(UserError, match="cond_dim=3"):
        net(x, t)
    with pytest.raises(UserError, match="in_channels"):
        net(torch.randn(2, 3, 8, 8), t)


def test_unet_cond_map_places_the_code_spatially():
    """cond_map adds Linear(code) as a [C, h, w] map at the bottleneck: zero at init (the code
    changes nothing), then a code reaches the output through it even with FiLM left at zero."""
    torch.manual_seed(0)
    net = UNet(1, image_size=8, cond_dim=3, cond_mode="film", cond_map=True, **TINY)
    x, t, c = torch.randn(2, 1, 8, 8), torch.rand(2), torch.randn(2, 3)
    assert torch.equal(net(x, t, c), net(x, t, -c))
    _randomise_output(net)  # this also gives the FiLM projections weights: zero them again
    with torch.no_grad():
        for m in [net.cond_map, *(m.proj for m in net.modules() if isinstance(m, FiLM))]:
            m.weight.zero_()
    torch.nn.init.normal_(net.cond_map.weight, std=0.1)
    assert (net(x, t, c) - net(x, t, -c)).abs().max() > 1e-4
    assert net.cond_map.out_features == math.prod(net._map_shape)
    with pytest.raises(UserError, match="cond_map"):
        UNet(1, cond_dim=3, cond_map=True, **TINY)  # no image_size: the map's shape is unknown


def test_unet_learns_to_denoise():
    """A few Adam steps on a fixed noisy batch must cut the eps-prediction error a lot."""
    torch.manual_seed(0)
    net = UNet(1, image_size=8, **TINY)
    x0 = torch.zeros(8, 1, 8, 8)
    x0[:, :, 2:6, 2:6] = 1.0
    t = torch.rand(8)
    a, s = (1 - t).sqrt().view(-1, 1, 1, 1), t.sqrt().view(-1, 1, 1, 1)
    eps = torch.randn(8, 1, 8, 8)
    xt = a * x0 + s * eps
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    first = (net(xt, t) - eps).square().mean().item()
    for _ in range(60):
        loss = (net(xt, t) - eps).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first == pytest.approx(1.0, abs=0.1)  # eps_hat = 0 at init: E||eps||^2 = 1
    assert loss.item() < 0.5 * first


def test_time_embedding_resolves_small_steps():
    e = sinusoidal_embedding(torch.tensor([0.0, 1.0]), 16)
    assert e.shape == (2, 16)
    torch.testing.assert_close(e[0, 8:], torch.ones(8))  # cos(0) = 1
    emb = TimeEmbedding(32)
    # t in [0, 1] is scaled by 1000, so t and t + 1/1000 give clearly different features
    f = sinusoidal_embedding(1000 * torch.tensor([0.5, 0.501]), 32)
    assert (f[0] - f[1]).abs().max() > 0.5
    assert emb(torch.rand(5)).shape == (5, 32)


def test_resmlp_shapes_conditioning_and_fit():
    torch.manual_seed(0)
    net = ResMLP(2, hidden=64, depth=2, emb_dim=32)
    x, t = torch.randn(256, 2), torch.rand(256)
    assert torch.count_nonzero(net(x, t)) == 0
    target = x * t[:, None] - torch.sin(3 * x.flip(1))  # depends on x and t
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    first = (net(x, t) - target).square().mean().item()
    for _ in range(300):
        loss = (net(x, t) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first
    cnet = ResMLP(4, out_dim=3, hidden=32, depth=1, cond_dim=5, cond_mode="film")
    assert cnet(torch.randn(7, 4), torch.rand(7), torch.randn(7, 5)).shape == (7, 3)
    with pytest.raises(UserError, match="ResMLP expects"):
        cnet(torch.randn(7, 3), torch.rand(7), torch.randn(7, 5))
    with pytest.raises(UserError, match="cond_dim=5"):
        cnet(torch.randn(7, 4), torch.rand(7))


@pytest.mark.parametrize("upsample", ["thin", "wide"])
@pytest.mark.parametrize("size, mults", [(28, (1, 2, 2, 2)), (8, (1, 2, 2))])
def test_unet_every_parameter_is_used(size, mults, upsample):
    """With image_size known, no layer is dead weight (levels that cannot downsample at 7x7
    or 4x4 get no resampling convs, attention only where the size is listed)."""
    net = UNet(1, image_size=size, base_channels=8, channel_mults=mults, upsample=upsample)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.05)
    net(torch.randn(2, 1, size, size), torch.rand(2)).square().sum().backward()
    assert [n for n, p in net.named_parameters() if p.grad is None] == []


# --------------------------------------------------------------------------- E(x0, t)


def test_time_dependent_encoder_shapes_init_and_independence():
    torch.manual_seed(0)
    enc = ConvEncoder((1, 28, 28), 6, width=8, time_embedding=True).eval()
    x, t = torch.randn(4, 1, 28, 28), torch.rand(4)
    out = enc(x, t=t)
    assert out.shape == (4, 6)
    # FiLM starts at the identity: at init E(x0, t) does not depend on t
    torch.testing.assert_close(enc(x, t=torch.zeros(4)), enc(x, t=torch.ones(4)))
    _randomise_output(enc)  # now the time embedding reaches the output
    out = enc(x, t=t)
    assert (enc(x, t=t + 0.3) - out).abs().mean() > 1e-3 * out.abs().mean()
    single = torch.cat([enc(x[i : i + 1], t=t[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(out, single, rtol=1e-4, atol=1e-5)  # per-example t, no mixing
    torch.testing.assert_close(enc(x, t=torch.tensor(0.5)), enc(x, t=torch.full((4,), 0.5)))


def test_time_dependent_encoder_checks_t_and_keeps_plain_weights():
    plain = ConvEncoder((1, 8, 8), 3, width=8)
    timed = ConvEncoder((1, 8, 8), 3, width=8, time_embedding=True)
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(UserError, match="time_embedding=True"):
        timed(x)
    with pytest.raises(UserError, match="time_embedding=False"):
        plain(x, t=torch.rand(2))
    # the plain encoder's parameters (and checkpoints) are unchanged by the option
    extra = set(timed.state_dict()) - set(plain.state_dict())
    assert extra and all(k.startswith("time_embed.") or ".film." in k for k in extra)
    assert set(plain.state_dict()) <= set(timed.state_dict())


def test_time_dependent_encoder_fits_what_a_plain_one_cannot():
    """Each image twice, once at t < 1/2 with target +m(x), once at t > 1/2 with -m(x):
    a function of x alone can at best output 0 (loss = the target's variance)."""
    torch.manual_seed(0)
    x = torch.randn(32, 1, 8, 8).repeat(2, 1, 1, 1)
    t = torch.cat([0.5 * torch.rand(32), 0.5 + 0.5 * torch.rand(32)])
    target = (torch.sign(0.5 - t) * x.mean((1, 2, 3)))[:, None] * 4

    def fit(time_embedding: bool) -> float:
        torch.manual_seed(1)
        enc = ConvEncoder((1, 8, 8), 1, width=8, time_embedding=time_embedding)
        opt = torch.optim.Adam(enc.parameters(), lr=3e-3)
        for _ in range(150):
            out = enc(x, t=t) if time_embedding else enc(x)
            loss = (out - target).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return loss.item()

    var = float(target.var())
    assert fit(False) > 0.5 * var  # a function of x alone cannot know the sign
    assert fit(True) < 0.2 * var


def test_unet_thin_upsampling_convolves_at_the_low_resolution():
    """Thin upsampling maps 2c -> c at 14x14 before repeating pixels; wide keeps 2c and convolves at
    28x28: same layout otherwise, so thin has fewer parameters and a quarter-cost resample."""
    from torch.utils.flop_counter import FlopCounterMode

    kw = dict(base_channels=16, channel_mults=(1, 2), image_size=28, attn_resolutions=())
    nets = {m: UNet(1, upsample=m, **kw) for m in ("thin", "wide")}
    thin, wide = (nets[m].up_path.resample[0] for m in ("thin", "wide"))
    assert (thin.in_channels, thin.out_channels) == (32, 16)
    assert (wide.in_channels, wide.out_channels) == (32, 32)
    # the wide net's extra parameters: a 32 -> 32 instead of 32 -> 16 resample conv, and its
    # first up block at 28x28 reads 32 + 16 channels instead of 16 + 16 (norm1, conv1, 1x1 skip)
    extra = (32 * 16 * 9 + 16) + 2 * 16 + 16 * 16 * 9 + 16 * 16
    n = {m: sum(p.numel() for p in net.parameters()) for m, net in nets.items()}
    assert n["wide"] - n["thin"] == extra
    flops = {}
    for m, net in nets.items():
        with FlopCounterMode(display=False) as fc:
            net(torch.randn(2, 1, 28, 28), torch.rand(2))
        flops[m] = fc.get_total_flops()
    assert flops["thin"] < 0.85 * flops["wide"]
    with pytest.raises(UserError, match="upsample"):
        UNet(1, upsample="bilinear", **kw)


@pytest.mark.parametrize(
    "shape, size",
    [
        ((3, 5, 7, 7), (14, 14)),
        ((2, 4, 4, 3), (8, 6)),
        ((2, 3, 7, 7), (13, 13)),
        ((1, 2, 3, 5), (3, 10)),
    ],
)
def test_upsample_nearest_is_interpolate_bit_for_bit(shape, size):
    import torch.nn.functional as F

    from diffrep.nets.layers import upsample_nearest

    h = torch.randn(shape)
    assert torch.equal(upsample_nearest(h, size), F.interpolate(h, size=size, mode="nearest"))
    cl = h.to(memory_format=torch.channels_last)
    assert torch.equal(upsample_nearest(cl, size), F.interpolate(cl, size=size, mode="nearest"))


@pytest.mark.parametrize("shape", [(3, 5, 7, 7), (2, 4, 4, 3), (4, 14, 10, 1), (1, 1, 1, 1)])
def test_upsample_nearest_gradient(shape):
    """The 2x gradient is the sum of each input's 2x2 block: exact against a float64 block sum,
    and bit for bit autograd's own backward of the broadcast form (its summation order), also
    for width 1, where that order differs and the broadcast form itself is used."""
    from diffrep.nets.layers import _nearest2x, upsample_nearest

    b, c, hh, ww = shape
    torch.manual_seed(0)
    h = torch.randn(shape, requires_grad=True)
    g = torch.randn(b, c, 2 * hh, 2 * ww) * torch.logspace(-3, 3, 2 * ww)  # order shows
    (got,) = torch.autograd.grad(upsample_nearest(h, (2 * hh, 2 * ww)), h, g)
    (ref,) = torch.autograd.grad(_nearest2x(h), h, g)
    assert torch.equal(got, ref)
    blocks = g.double().view(b, c, hh, 2, ww, 2)
    err = (got.double() - blocks.sum((3, 5))).abs()
    assert (err <= 1e-6 * blocks.abs().sum((3, 5))).all()  # float32 rounding of 4 terms
    hd = h.detach().double().requires_grad_(True)
    assert torch.autograd.gradgradcheck(lambda x: upsample_nearest(x, (2 * hh, 2 * ww)) ** 2, hd)


@pytest.mark.parametrize(
    "shape, size", [((3, 5, 7, 7), (14, 14)), ((2, 4, 4, 3), (8, 6)), ((2, 3, 7, 7), (13, 13))]
)
@pytest.mark.parametrize("bias", [True, False])
def test_upconv_is_nearest_upsample_then_conv(shape, size, bias):
    """UpConv = nearest upsample to `size`, then its 3x3 conv. Outside autograd an exact 2x runs
    as a folded sub-pixel conv: equal to float64 rounding. With autograd, the literal form."""
    import torch.nn.functional as F

    from diffrep.nets.layers import UpConv

    torch.manual_seed(0)
    conv = UpConv(shape[1], 6, bias=bias).double()
    h = torch.randn(shape, dtype=torch.float64)
    want = F.conv2d(F.interpolate(h, size=size, mode="nearest"), conv.weight, conv.bias, padding=1)
    with torch.no_grad():
        fast = conv(h, size)
    assert fast.shape == want.shape == (shape[0], 6, *size)
    assert torch.allclose(fast, want, rtol=0, atol=1e-12)
    assert torch.equal(conv(h, size), want)  # training: the same ops, bit for bit
    assert sorted(conv.state_dict()) == (["bias", "weight"] if bias else ["weight"])


@pytest.mark.parametrize("h_shape", [(5, 6), (5, 6, 3, 4)])
def test_film_projects_a_shared_embedding_once(h_shape):
    """A sampler's time embedding is one row expanded (stride 0): FiLM projects that row once
    and broadcasts, giving exactly h * (1 + scale) + shift of that row; a batch of copies
    (projected row by row) agrees to float rounding."""
    film = FiLM(7, 6)
    torch.nn.init.normal_(film.proj.weight)
    torch.nn.init.normal_(film.proj.bias)
    h, row = torch.randn(h_shape), torch.randn(1, 7)
    shared = row.expand(5, -1)
    assert shared.stride(0) == 0
    out = film(h, shared)
    scale, shift = film.proj(row).reshape(1, 2, 6, *(1,) * (len(h_shape) - 2)).unbind(1)
    assert torch.equal(out, h * (1 + scale) + shift)
    with torch.no_grad():  # outside autograd the row is broadcast, not expanded: same bits
        assert torch.equal(film(h, shared), out)
    assert torch.allclose(out, film(h, shared.contiguous()), atol=1e-5)
    out.sum().backward()  # gradients flow through the one-row path
    assert film.proj.weight.grad.abs().sum() > 0
