"""Noise schedules: monotone gamma for every registered schedule, DDPM tables, fixed endpoints."""

import math

import pytest
import torch

from diffrep.diffusion.process import alpha_sigma
from diffrep.diffusion.schedules import SCHEDULES, build_schedule
from diffrep.errors import UserError

F64 = torch.float64


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_gamma_is_strictly_increasing_float64_and_finite_inside(name):
    s = build_schedule(name)
    t = torch.linspace(0, 1, 2001, dtype=F64)
    g = s(t)
    assert g.dtype == F64 and g.shape == t.shape
    assert (g[1:] > g[:-1]).all(), f"{name}: gamma not strictly increasing"
    assert torch.isfinite(g[1:]).all()
    table = s.table(50)
    assert table.dtype == F64 and table.shape == (51,)
    torch.testing.assert_close(table, s(torch.arange(51, dtype=F64) / 50))
    _, dg = s.gamma_and_derivative(t[1:-1])
    assert (dg > 0).all(), f"{name}: gamma' not positive"
    # the derivative matches finite differences of gamma
    h = 1e-6
    tm = torch.tensor([0.2003, 0.5007, 0.8005], dtype=F64)  # off the DDPM grid (kinks)
    fd = (s(tm + h) - s(tm - h)) / (2 * h)
    torch.testing.assert_close(s.gamma_and_derivative(tm)[1], fd, rtol=1e-5, atol=1e-6)


def test_ddpm_linear_table_matches_ho_et_al():
    T = 1000
    s = build_schedule("ddpm-linear", T=T)
    betas = torch.linspace(1e-4, 0.02, T, dtype=F64)
    alpha_bar = torch.cumprod(1 - betas, 0)
    a, _ = alpha_sigma(s.table(T))
    torch.testing.assert_close(a[1:] ** 2, alpha_bar, rtol=1e-12, atol=0)
    assert a[0] == 1.0  # t = 0 is the data
    torch.testing.assert_close(s.betas, betas, rtol=1e-9, atol=0)


def test_cosine_table_matches_nichol_dhariwal():
    T, off = 100, 0.008
    s = build_schedule("cosine", T=T)
    t = torch.arange(T + 1, dtype=F64) / T
    f = torch.cos((t + off) / (1 + off) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    alpha_bar = torch.cumprod(1 - betas, 0)
    a, _ = alpha_sigma(s.table(T))
    torch.testing.assert_close(a[1:] ** 2, alpha_bar, rtol=1e-10, atol=1e-300)
    assert betas[-1] == 0.999  # the clip is active at t = 1


@pytest.mark.parametrize("name", ["learned-linear", "learned-net"])
def test_learned_schedules_train_but_net_endpoints_stay_exact(name):
    torch.manual_seed(0)
    extra = {"n_features": 64} if name == "learned-net" else {}
    s = build_schedule(name, gamma_min=-10.0, gamma_max=6.0, **extra)
    opt = torch.optim.Adam(s.parameters(), lr=0.05)
    before = s(torch.tensor([0.3, 0.7], dtype=F64)).detach().clone()
    for _ in range(20):
        t = torch.rand(64, dtype=F64)
        g, dg = s.gamma_and_derivative(t)
        # a loss that pulls the interior and the endpoints around
        loss = (g - 3 * t).pow(2).mean() + dg.pow(2).mean() * 1e-3 + s(torch.ones(1)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = s(torch.tensor([0.3, 0.7], dtype=F64)).detach()
    assert (after - before).abs().max() > 1e-3, "the schedule did not train"
    g0, g1 = s.endpoints()
    if name == "learned-net":  # fixed endpoints: exactly where they were set
        assert g0.item() == -10.0 and g1.item() == 6.0
        t = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
        assert s(t)[0].item() == -10.0 and s(t)[2].item() == 6.0
        assert s.table(7)[0].item() == -10.0 and s.table(7)[-1].item() == 6.0
    else:  # learned endpoints move, and gamma(1) is still exactly the endpoint value
        assert abs(g1.item() - 6.0) > 1e-3
        assert s(torch.ones(3, dtype=F64)).eq(g1).all()


def test_learned_net_endpoints_can_be_learned_and_stay_exact():
    s = build_schedule("learned-net", learn_endpoints=True, n_features=16)
    opt = torch.optim.SGD(s.parameters(), lr=0.1)
    for _ in range(5):
        loss = s(torch.tensor([0.0, 1.0], dtype=F64)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    g0, g1 = s.endpoints()
    assert g0.item() < -13.3 and g1.item() < 5.0
    t = torch.tensor([0.0, 1.0], dtype=F64)
    assert s(t)[0] == g0 and s(t)[1] == g1


def test_bad_schedule_arguments_raise_user_errors():
    with pytest.raises(UserError, match="gamma_min"):
        build_schedule("vdm-linear", gamma_min=5.0, gamma_max=-5.0)
    with pytest.raises(UserError, match="beta"):
        build_schedule("ddpm-linear", beta_1=0.1, beta_T=0.01)
    with pytest.raises(UserError, match="unknown schedule"):
        build_schedule("linearish")
