"""Samplers driven by the analytic Gaussian denoiser reproduce N(mu, s2); DDIM inversion."""

import math

import pytest
import torch

from diffrep.diffusion import samplers as S
from diffrep.diffusion.gaussian import analytic_gaussian_eps_model, gaussian_marginal
from diffrep.diffusion.schedules import build_schedule
from diffrep.errors import UserError

F64 = torch.float64
MU, S2 = 0.3, 0.25
N = 8_000  # sample values: standard errors 0.0056 (mean) and 0.0040 (variance, 1.6 %)

# (sampler, schedule, steps, options). Ancestral and DDIM steps are first order in the step
# size: their variance bias is ~1 % at 1000 steps and ~2 % at 500 (below the 4-sigma
# tolerance of 6 %); Heun's method is second order and needs far fewer steps.
CASES = [
    ("ancestral", "vdm-linear", 1000, {}),
    ("ancestral", "ddpm-linear", 500, {}),
    ("ddim", "cosine", 500, {"eta": 0.0}),
    ("ddim", "learned-net", 500, {"eta": 0.5}),
    ("ode", "vdm-linear", 100, {}),
    ("ode", "cosine", 200, {}),
]


def _sched(name):
    return build_schedule(name, n_features=32) if name == "learned-net" else build_schedule(name)


@pytest.mark.parametrize("sampler,schedule,steps,kw", CASES)
def test_samplers_reproduce_the_gaussian_data_distribution(sampler, schedule, steps, kw):
    sched = _sched(schedule)
    model = analytic_gaussian_eps_model(MU, S2, sched)
    g = torch.Generator().manual_seed(0)
    # Start from the exact marginal q(z_1) (not N(0, I)): this tests the sampler, not the
    # prior mismatch at gamma_max = 5 (which the ELBO's prior term accounts for).
    m1, v1 = gaussian_marginal(MU, S2, sched(1.0).detach())
    x_T = m1 + v1.sqrt() * torch.randn(N // 4, 4, generator=g, dtype=F64)
    calls = []
    x = S.SAMPLERS.get(sampler)(
        model, sched, x_T, steps, generator=g, progress=lambda k, n: calls.append((k, n)), **kw
    )
    assert x.shape == x_T.shape and x.dtype == F64
    assert calls[-1] == (steps, steps) and len(calls) == steps
    se_mean, se_var = math.sqrt(S2 / N), S2 * math.sqrt(2 / N)
    print(f"{sampler} {schedule}: mean {x.mean():.4f} var {x.var():.4f}")
    assert abs(x.mean().item() - MU) < 4 * se_mean
    assert abs(x.var().item() - S2) < 4 * se_var


def test_stochastic_samplers_depend_on_the_generator_and_ddim_eta1_is_ancestral():
    sched = build_schedule("vdm-linear")
    model = analytic_gaussian_eps_model(MU, S2, sched)
    x_T = torch.randn(8, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    a = S.ancestral(model, sched, x_T, 20, generator=torch.Generator().manual_seed(1))
    b = S.ddim(model, sched, x_T, 20, eta=1.0, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)
    c = S.ancestral(model, sched, x_T, 20, generator=torch.Generator().manual_seed(2))
    assert (a - c).abs().max() > 1e-3
    d1 = S.ddim(model, sched, x_T, 20, generator=torch.Generator().manual_seed(1))
    d2 = S.ddim(model, sched, x_T, 20, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(d1, d2)  # eta = 0 is deterministic


@pytest.mark.parametrize("schedule", ["vdm-linear", "ddpm-linear", "cosine"])
def test_ddim_inversion_then_generation_recovers_x0(schedule):
    sched = build_schedule(schedule)
    model = analytic_gaussian_eps_model(MU, S2, sched)
    g = torch.Generator().manual_seed(0)
    x0 = MU + math.sqrt(S2) * torch.randn(64, 8, generator=g, dtype=F64)
    # exact inverse of DDIM's step (fixed-point iterations), few steps
    z1 = S.ddim_invert(model, sched, x0, 100, fixed_point_iters=4)
    rel = ((S.ddim(model, sched, z1, 100) - x0).norm() / x0.norm()).item()
    assert rel < 1e-3, rel
    # the encoding is the ODE's: z_1 is close to N(0, 1) (whitened data)
    assert abs(z1.var().item() - 1) < 0.3
    # the classic one-evaluation inversion errs by O(1/steps)
    rel_classic = []
    for steps in (100, 400):
        z1 = S.ddim_invert(model, sched, x0, steps)
        rel_classic.append(((S.ddim(model, sched, z1, steps) - x0).norm() / x0.norm()).item())
    assert rel_classic[1] < rel_classic[0] / 3, rel_classic


def test_ode_inversion_round_trip_and_sampler_validation():
    sched = build_schedule("vdm-linear")
    model = analytic_gaussian_eps_model(MU, S2, sched)
    x0 = MU + math.sqrt(S2) * torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
    x0 = x0.to(F64)
    z1 = S.ode_invert(model, sched, x0, 100)
    rel = ((S.ode_sample(model, sched, z1, 100) - x0).norm() / x0.norm()).item()
    assert rel < 1e-3
    with pytest.raises(UserError, match="steps"):
        S.ancestral(model, sched, z1, 0)
    with pytest.raises(UserError, match="sampler"):
        S.sample(model, sched, (2, 3), sampler="euler-maruyama")
    with pytest.raises(UserError, match="eta"):
        S.sample(model, sched, (2, 3), sampler="ode", eta=0.5)


def test_sample_helper_and_clipping_on_float32():
    sched = build_schedule("ddpm-linear", T=100)
    model = analytic_gaussian_eps_model(0.9, 0.5, sched)  # mass outside [-1, 1]
    g = torch.Generator().manual_seed(0)
    x = S.sample(model, sched, (256, 2), sampler="ancestral", steps=50, generator=g, clip_x0=True)
    assert x.dtype == torch.float32 and x.shape == (256, 2)
    assert x.min() >= -1 and x.max() <= 1  # the last step returns the clipped x0_hat


class _Counting(torch.nn.Module):
    """Counts forward calls of a wrapped module (here a ResMLP's time embedding)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, *a):
        self.calls += 1
        return self.inner(*a)


@pytest.mark.parametrize("sampler,kw", [("ancestral", {}), ("ddim", {}), ("ode_sample", {})])
def test_a_denoiser_on_the_grid_samples_as_its_per_step_calls(sampler, kw):
    """A ResMLP offers `on_grid`: the samplers embed the grid's times once (one time-MLP call
    for the whole run, not one a step) and sample what per-step calls of the same network
    sample, to float rounding (a batched row may round differently)."""
    from diffrep.nets.mlp import ResMLP

    torch.manual_seed(0)
    net = ResMLP(4, hidden=32, depth=2, emb_dim=16).eval()
    for p in net.parameters():  # away from the zero init, so every layer matters
        torch.nn.init.normal_(p, std=0.3)
    net.time_embed = _Counting(net.time_embed)
    schedule, x_T = build_schedule("cosine"), torch.randn(64, 4)

    def per_step(z, t, cond=None):  # the same network, without `on_grid`
        return net(z, t, cond)

    run = getattr(S, sampler)
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    on_grid = run(net, schedule, x_T, 20, generator=g(), **kw)
    assert net.time_embed.calls == 1
    plain = run(per_step, schedule, x_T, 20, generator=g(), **kw)
    calls = 39 if sampler == "ode_sample" else 20  # Heun: 2 a step, 1 on the last (sigma = 0)
    assert net.time_embed.calls == 1 + calls
    scale = plain.abs().max()
    assert scale > 1 and torch.allclose(on_grid, plain, rtol=0, atol=1e-5 * scale)
    inverted = S.ddim_invert(net, schedule, on_grid, 20)
    assert torch.allclose(inverted, S.ddim_invert(per_step, schedule, on_grid, 20), atol=1e-4)


def test_on_grid_is_the_network_at_each_grid_time_and_plain_calls_with_a_code():
    from diffrep.nets.mlp import ResMLP

    torch.manual_seed(0)
    t, x = torch.linspace(1, 0, 6, dtype=torch.float64), torch.randn(8, 3)
    net = ResMLP(3, hidden=16, depth=3, emb_dim=8)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.5)
    at = net.on_grid(t)
    for k in range(6):
        want = net(x, t[k].float().expand(8))
        assert torch.allclose(at(k, x), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(UserError, match=r"expects vectors \[B, 3\]"):
        at(0, torch.randn(8, 4))
    coded = ResMLP(3, hidden=16, depth=2, emb_dim=8, cond_dim=2, cond_mode="film")
    for p in coded.parameters():
        torch.nn.init.normal_(p, std=0.5)
    c = torch.randn(8, 2)  # per-example rows: the plain call, bit for bit
    assert torch.equal(coded.on_grid(t)(2, x, c), coded(x, t[2].float().expand(8), c))
