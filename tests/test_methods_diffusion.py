"""vdm, ddpm and dae on tiny shapes: the method contract, their options, and that they learn."""

import math

import pytest
import torch

from diffrep.config import config_from_dict
from diffrep.errors import UserError
from diffrep.methods import build_method

SHAPE = (1, 8, 8)
B = 4
NET = {"unet": {"base_channels": 8, "channel_mults": (1, 2)}}
TINY = {
    "vdm": {**NET, "sample_steps": 8},
    "ddpm": {**NET, "T": 50, "sample_steps": 8},
    "dae": {"width": 8, "code_dim": 3},
}


def _batch(n=B, seed=1):
    k = torch.randint(0, 256, (n, *SHAPE), generator=torch.Generator().manual_seed(seed))
    return {"x0": (2 * k.float() + 1) / 256 - 1, "y": torch.zeros(n, dtype=torch.long)}


def _method(name, **kw):
    torch.manual_seed(0)
    return build_method(name, SHAPE, **{**TINY[name], **kw})


@pytest.mark.parametrize(
    "name,kw",
    [
        ("vdm", {}),
        ("vdm", {"schedule": "learned-net", "schedule_grad": "variance", "T": 10}),
        ("vdm", {"schedule": "vdm-linear", "t_sampling": "antithetic"}),
        ("ddpm", {}),
        ("ddpm", {"schedule": "cosine", "weighting": "vlb"}),
        ("ddpm", {"weighting": "min-snr"}),
        ("dae", {}),
        ("dae", {"predict": "eps"}),
    ],
)
def test_loss_is_finite_per_example_and_backpropagates(name, kw):
    m = _method(name, **kw)
    terms = m.loss(_batch())
    for key, v in terms.items():
        assert v.shape == (B,) and torch.isfinite(v).all(), key
    terms["loss"].mean().backward()
    if m.can("elbo"):  # also under torch.no_grad, with every option
        assert torch.isfinite(m.eval().elbo(_batch()["x0"])["total"]).all()
    nets = [p for n, p in m.named_parameters() if not n.startswith("schedule")]
    assert sum(p.grad.abs().sum() for p in nets if p.grad is not None) > 0
    if name == "vdm" and kw.get("schedule", "learned-linear").startswith("learned"):
        assert any(p.grad is not None for p in m.schedule.parameters())


@pytest.mark.parametrize("name", ["vdm", "ddpm"])
@pytest.mark.parametrize("sampler,kw", [("ancestral", {}), ("ddim", {"eta": 0.5}), ("ode", {})])
def test_samples_have_the_data_shape_and_follow_the_generator(name, sampler, kw):
    m = _method(name).eval()
    calls = []
    x = m.sample(
        3, generator=torch.Generator().manual_seed(0), sampler=sampler, steps=4,
        progress=lambda k, n: calls.append(k), **kw,
    )  # fmt: skip
    assert x.shape == (3, *SHAPE) and torch.isfinite(x).all() and x.abs().max() <= 1
    assert calls == [1, 2, 3, 4]
    y = m.sample(3, generator=torch.Generator().manual_seed(0), sampler=sampler, steps=4, **kw)
    torch.testing.assert_close(x, y)
    with pytest.raises(UserError, match="sampler"):
        m.sample(2, sampler="langevin")


def test_elbo_terms_are_finite_nats_and_ddpm_exact_matches_sampled_on_average():
    x0 = _batch()["x0"]
    vdm = _method("vdm").eval()
    t = vdm.elbo(x0)
    assert set(t) == {"recon", "prior", "diffusion", "total"}
    for v in t.values():
        assert v.shape == (B,) and torch.isfinite(v).all()
    # An untrained VDM (eps_hat = 0 from the zero-initialised output layer) has the bound
    # recon + prior + 1/2 (gamma_1 - gamma_0) D E||eps||^2 / D ... = 1/2 * 18.3 * 64 nats.
    assert abs(t["diffusion"].mean().item() / (0.5 * 18.3 * 64) - 1) < 0.25
    assert vdm.bound_is_valid
    ddpm = _method("ddpm").eval()
    exact = ddpm.elbo(x0, exact=True)
    torch.manual_seed(0)
    draws = torch.stack([ddpm.elbo(x0)["total"] for _ in range(100)])  # [100, B]
    assert torch.isfinite(exact["total"]).all()
    se = draws.std(0) / math.sqrt(100)  # plus the exact sum's own noise (one eps per step)
    assert ((draws.mean(0) - exact["total"]).abs() < 4 * se + 0.05 * exact["total"]).all()
    # eps_hat = 0 (untrained): in DDPM notation, with SNR_i = abar_i / (1 - abar_i), each
    # L_{i-1} = (SNR_{i-1} / SNR_i - 1) ||eps||^2 / 2 and L_T = KL(N(sqrt(abar_T) x, 1 - abar_T))
    abar = torch.sigmoid(-ddpm.schedule.table(ddpm.T))[1:]  # x_1..x_T
    snr = abar / (1 - abar)
    c = 0.5 * (snr[:-1] / snr[1:] - 1)  # [T - 1]
    d = 64
    se = math.sqrt(2 * d * float((c**2).sum()))  # chi-square noise of the exact sum
    diff = exact["diffusion"].double() - d * float(c.sum())
    assert (diff.abs() < 4 * se).all(), (diff, se)
    x = x0.flatten(1).double()
    prior = 0.5 * (abar[-1] * x**2 + (1 - abar[-1]) - 1 - torch.log(1 - abar[-1])).sum(1)
    torch.testing.assert_close(exact["prior"].double(), prior, rtol=1e-5, atol=1e-6)


def test_dae_encodes_clean_images_and_learns_to_denoise():
    m = _method("dae", sigma=0.5)
    # structured images (random mixtures of two gradients): a 3-d code can describe them
    g = torch.Generator().manual_seed(2)
    ramp = torch.linspace(-0.8, 0.8, 8)
    w = torch.rand(32, 2, 1, 1, generator=g)
    x0 = w[:, :1] * ramp[None, :, None] + w[:, 1:] * ramp[None, None, :]  # [32, 1, 8, 8]
    z = m.eval().encode(x0)
    assert z.shape == (32, 3)
    assert m.reconstruct(x0).shape == x0.shape
    # samples by seed 003's iteration x' = (1 - eta) x + eta DAE(x); no likelihood
    assert m.can("sample") and not m.can("elbo") and not m.bound_is_valid
    m.train()
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    first = None
    for _ in range(40):
        loss = m.loss({"x0": x0})["loss"].mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_vdm_learned_endpoints_move_but_learned_net_endpoints_stay():
    x0 = _batch(16)["x0"]
    for schedule in ("learned-linear", "learned-net"):
        m = _method("vdm", schedule=schedule)
        opt = torch.optim.Adam(m.parameters(), lr=1e-2)
        for _ in range(3):
            loss = m.loss({"x0": x0})["loss"].mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        g0, g1 = m.schedule.endpoints()
        if schedule == "learned-net":
            assert g0.item() == -13.3 and g1.item() == 5.0
        else:
            assert g0.item() != -13.3


def test_methods_validate_their_config():
    cfg = config_from_dict({"method": {"name": "vdm", "T": 0, "schedule": "learned-net"}})
    assert cfg.method_args == {"T": 0, "schedule": "learned-net"}
    with pytest.raises(UserError, match="schedule"):
        config_from_dict({"method": {"name": "ddpm", "schedule": "vdm-linear"}})
    with pytest.raises(UserError, match="schedule_grad"):
        build_method("vdm", SHAPE, schedule_grad="variance", **NET)
    with pytest.raises(UserError, match="sigma"):
        build_method("dae", SHAPE, sigma=0.0)
    with pytest.raises(UserError, match="T"):
        build_method("ddpm", SHAPE, T=1, **NET)


def test_ddpm_invert_round_trip_shape():
    m = _method("ddpm").eval()
    x0 = _batch()["x0"]
    z = m.invert(x0, steps=5)
    assert z.shape == x0.shape and torch.isfinite(z).all()
    # a real round trip: DDIM inversion then DDIM sampling from that x_T returns x0, up to the
    # O(1/steps) mismatch of evaluating eps_hat at the other end of each step
    torch.manual_seed(5)
    with torch.no_grad():  # the untrained net's zero output layer would make this trivial
        for p in m.net.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
    err = {}
    for steps in (5, 50):
        back = m.sample(len(x0), sampler="ddim", steps=steps, x_T=m.invert(x0, steps=steps))
        err[steps] = (back - x0).abs().max().item()
    assert err[50] < 0.03 and err[50] < err[5] / 4, err  # 0.024 and 0.16 at this seed
