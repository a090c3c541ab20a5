"""The one denoiser interface: codes pass through samplers, objectives and the pixel part;
combinators (bind, guided, switch); weighting and time-sampling registries."""

import math

import pytest
import torch

from diffrep.diffusion import objectives as O
from diffrep.diffusion import samplers as S
from diffrep.diffusion.denoiser import bind, guided, switch, unconditional
from diffrep.diffusion.gaussian import analytic_gaussian_eps_model
from diffrep.diffusion.pixel import PixelDiffusion
from diffrep.diffusion.schedules import build_schedule
from diffrep.diffusion.weighting import TIME_SAMPLERS, WEIGHTINGS, build_weighting, sample_t
from diffrep.errors import UserError

F64 = torch.float64
SHAPE = (1, 8, 8)


def _part(cond_dim=None, **kw):
    torch.manual_seed(0)
    part = PixelDiffusion(
        SHAPE, unet={"base_channels": 8, "channel_mults": (1,)}, cond_dim=cond_dim, **kw
    )
    # zero-initialised layers (output, code embedding) made non-zero, so the code shows
    with torch.no_grad():
        for p in part.net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return part.eval()


def _code_shift(x_t, t, cond=None):
    """A toy denoiser that uses its code: eps_hat = 0.1 x_t + mean(cond)."""
    out = 0.1 * x_t
    return out if cond is None else out + cond.mean(1).view(-1, 1, 1, 1).to(x_t)


@pytest.mark.parametrize("sampler", ["ancestral", "ddim", "ode"])
def test_a_denoiser_that_ignores_its_code_samples_bit_identically(sampler):
    sched = build_schedule("vdm-linear")
    model = analytic_gaussian_eps_model(0.1, 0.3, sched)  # (x_t, t): takes no code
    cond = torch.randn(5, 3)

    def run(c, d=model):
        g = torch.Generator().manual_seed(1)
        return S.sample(d, sched, (5, 4), sampler=sampler, steps=6, generator=g, cond=c)

    assert torch.equal(run(None), run(cond))
    ignoring = unconditional(_code_shift)
    assert torch.equal(run(None, ignoring), run(cond, ignoring))
    # one that uses the code does not sample the same
    assert not torch.allclose(run(None, _code_shift), run(cond, _code_shift))


def test_pixel_part_passes_the_code_to_the_unet_everywhere():
    part = _part(cond_dim=3)
    x0 = torch.rand(4, *SHAPE) * 2 - 1
    c1, c2 = torch.randn(4, 3), torch.randn(4, 3)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    a = part.vdm_elbo(x0, c1, generator=g())["diffusion"]
    b = part.vdm_elbo(x0, c2, generator=g())["diffusion"]
    assert torch.isfinite(a).all() and not torch.allclose(a, b)
    x_T = torch.randn(4, *SHAPE)
    s1 = part.sample(4, cond=c1, x_T=x_T, sampler="ddim", steps=3)
    s2 = part.sample(4, cond=c2, x_T=x_T, sampler="ddim", steps=3)
    assert s1.shape == (4, *SHAPE) and not torch.allclose(s1, s2)
    # a given x_T is used as is: the same x_T and code give the same deterministic sample
    assert torch.equal(s1, part.sample(4, cond=c1, x_T=x_T, sampler="ddim", steps=3))
    # DDIM inversion sees the code too
    inv1, inv2 = part.invert(x0, cond=c1, steps=4), part.invert(x0, cond=c2, steps=4)
    assert torch.isfinite(inv1).all() and not torch.allclose(inv1, inv2)
    with pytest.raises(UserError, match="cond_dim=3"):
        part.sample(2, sampler="ddim", steps=2)  # a conditional part needs its code


def test_unet_settings_are_validated_as_one_mapping():
    with pytest.raises(UserError, match="unknown option 'widht'") as e:
        PixelDiffusion(SHAPE, unet={"widht": 8})
    offered = set(str(e.value).split("valid options: ")[1].split(", "))
    assert "base_channels" in offered  # and not the options PixelDiffusion sets itself:
    assert not offered & {"in_channels", "out_channels", "image_size", "cond_dim"}
    for key in ("image_size", "cond_dim", "out_channels"):
        with pytest.raises(UserError, match=f"{key} is set from the data"):
            PixelDiffusion(SHAPE, unet={key: 8})
    p = PixelDiffusion(SHAPE, unet={"base_channels": 8, "channel_mults": [1, 2]})
    assert p.net.conv_in.out_channels == 8 and p.net._levels == 2


def test_bind_fixes_the_code_and_guided_shifts_by_scale_times_gradient():
    x, t = torch.randn(3, 1, 2, 2), torch.full((3,), 0.5)
    c = torch.tensor([[1.0], [2.0], [3.0]])
    b = bind(_code_shift, c)
    assert torch.equal(b(x, t), _code_shift(x, t, c))
    assert torch.equal(b(x, t, torch.zeros(3, 1)), _code_shift(x, t, c))  # later code ignored

    def grad(x_t, t, cond=None):
        return torch.ones_like(x_t) * cond.view(-1, 1, 1, 1)

    g = guided(_code_shift, grad, lambda t: 2 * t)
    want = _code_shift(x, t, c) - 2 * 0.5 * c.view(-1, 1, 1, 1)
    torch.testing.assert_close(g(x, t, c), want)


def test_switch_uses_inner_only_inside_the_range_per_example():
    def inner(x_t, t, cond=None):
        return torch.ones_like(x_t)

    def outer(x_t, t, cond=None):
        return -torch.ones_like(x_t)

    d = switch(inner, outer, 0.4, 0.7)
    x = torch.zeros(4, 1, 2, 2)
    out = d(x, torch.tensor([0.1, 0.4, 0.7, 0.9]))
    assert out[:, 0, 0, 0].tolist() == [-1.0, 1.0, 1.0, -1.0]
    calls = []

    def counting(x_t, t, cond=None):
        calls.append(x_t.shape[0])
        return torch.zeros_like(x_t)

    switch(counting, outer, 0.0, 0.5)(x, torch.full((4,), 0.9))  # all outside: never called
    assert calls == []
    with pytest.raises(ValueError):
        switch(inner, outer, 0.8, 0.2)


def test_weightings_registry_closed_forms():
    gamma = torch.tensor([-6.0, -1.0, 0.0, 2.0, 7.0], dtype=F64)
    snr = torch.exp(-gamma)
    for p in (0.1, 0.5):
        torch.testing.assert_close(build_weighting("pdae", snr_power=p)(gamma), snr**p / (1 + snr))
    hi, lo = build_weighting("high-noise")(gamma), build_weighting("low-noise")(gamma)
    torch.testing.assert_close(hi + lo, torch.ones_like(gamma))
    assert (hi.diff() > 0).all() and (lo.diff() < 0).all()  # gamma grows with the noise
    dg = torch.full_like(gamma, 18.3)
    torch.testing.assert_close(build_weighting("elbo")(gamma, dg), 0.5 * dg)
    assert {"simple", "x0", "min-snr", "elbo", "pdae", "high-noise", "low-noise"} <= set(
        WEIGHTINGS.names()
    )
    with pytest.raises(UserError, match="unknown weighting"):
        build_weighting("nope")
    with pytest.raises(UserError, match="unknown option"):
        build_weighting("pdae", gamma=0.1)


def test_time_samplers_registry_and_range():
    g = torch.Generator().manual_seed(0)
    t = sample_t(4000, kind="range", t_min=0.4, t_max=0.7, generator=g)
    assert t.dtype == F64 and t.min() >= 0.4 and t.max() <= 0.7
    assert abs(float(t.mean()) - 0.55) < 0.01
    assert set(TIME_SAMPLERS.names()) == {"uniform", "antithetic", "low-discrepancy", "range"}
    with pytest.raises(UserError, match="t sampling"):
        sample_t(4, kind="sobol")


def test_elbo_weighted_denoising_loss_is_the_vdm_diffusion_term():
    """lambda = gamma'(t)/2 with the same t and eps: denoising_loss == vdm_elbo's diffusion."""
    sched = build_schedule("learned-linear")
    x0 = (torch.rand(16, 6, dtype=F64) * 2 - 1).mul(0.9)
    cond = torch.randn(16, 2, dtype=F64)

    def model(x_t, t, cond=None):
        return 0.3 * x_t + cond.sum(1, keepdim=True)

    g = torch.Generator().manual_seed(3)
    want = O.vdm_elbo(model, sched, x0, cond=cond, t_sampling="uniform", generator=g)
    g = torch.Generator().manual_seed(3)
    torch.randn(x0.shape, generator=g, dtype=F64)  # vdm_elbo draws z_0's noise first
    got = O.denoising_loss(model, sched, x0, cond=cond, weighting="elbo", generator=g)
    torch.testing.assert_close(got["loss"], want["diffusion"])


def test_per_t_loss_matches_the_closed_form_for_gaussian_data():
    """E||eps - eps_hat||^2 = D sigma^2 / (alpha^2 s2 + sigma^2) ... for the optimal denoiser:
    with data N(0, s2), Var[eps | x_t] = alpha^2 s2 / (alpha^2 s2 + sigma^2) per dimension."""
    sched = build_schedule("vdm-linear")
    s2, D, N = 0.4, 4, 40000
    model = analytic_gaussian_eps_model(0.0, s2, sched)
    g = torch.Generator().manual_seed(0)
    x0 = math.sqrt(s2) * torch.randn(N, D, generator=g, dtype=F64)
    t = torch.full((N,), 0.5, dtype=F64)
    got = O.per_t_loss(model, sched, x0, t, generator=g).mean()
    a2 = torch.sigmoid(-sched(torch.tensor(0.5, dtype=F64)))
    want = D * a2 * s2 / (a2 * s2 + 1 - a2)
    assert abs(float(got / want) - 1) < 0.02


def test_loss_vs_t_family_on_an_untrained_vdm_is_the_closed_form(tmp_path):
    """eps_hat = 0 at init (zero output conv): ||eps||^2 has mean D at every t, and with the
    linear schedule gamma' = gamma_max - gamma_min, so the integrand is D (g1 - g0) / 2."""
    import numpy as np

    from diffrep.data import load_dataset
    from diffrep.eval import EvalConfig, evaluate
    from diffrep.methods import build_method

    data = load_dataset("digits", "test")
    m = build_method("vdm", (1, 8, 8), unet={"base_channels": 8, "channel_mults": (1,)}).eval()
    cfg = EvalConfig(metrics=("loss_vs_t",), max_eval=200)
    res = evaluate(m, data, data, cfg, run_dir=tmp_path)["loss_vs_t"]
    assert len(res["t"]) == 20 and np.allclose(res["mse"], 64, rtol=0.06)
    np.testing.assert_allclose(res["nats"], np.array(res["mse"]) * (5.0 + 13.3) / 2, rtol=1e-6)
    assert res["diffusion_nats"] == pytest.approx(np.mean(res["nats"]))
    assert (tmp_path / "figures" / "loss_vs_t.png").exists()
