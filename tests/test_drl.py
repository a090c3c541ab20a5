"""DRL / VDRL / E(x0, t) (seed 001): the loss is eq. 2 in eps form, the ELBO weighting gives the
conditional VDM bound's diffusion term, VDRL adds exactly the analytic KL, a constant code is
worth nothing to the denoiser, and E(x0, t) sees each example's own t."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from diffrep.diffusion import objectives as O
from diffrep.diffusion.weighting import sample_t
from diffrep.errors import UserError
from diffrep.eval.collapse import shuffle_test
from diffrep.methods import build_method

SHAPE = (1, 8, 8)
TINY = dict(code_dim=3, width=8, unet={"base_channels": 8, "channel_mults": (1, 2)}, sample_steps=4)


def _drl(**kw):
    torch.manual_seed(0)
    return build_method("drl", SHAPE, **{**TINY, **kw})


def _x0(B=6, seed=1):
    k = torch.randint(0, 256, (B, *SHAPE), generator=torch.Generator().manual_seed(seed))
    return (2 * k.float() + 1) / 256 - 1


def _wake(m: nn.Module) -> nn.Module:
    """Zero-initialised layers (U-Net output, FiLM) hide the code at init: give them weights."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            if (p == 0).all() and p.dim() > 1:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return m


def test_elbo_weighting_gives_the_conditional_bounds_diffusion_term():
    m = _wake(_drl(weighting="elbo")).eval()
    x0 = _x0()
    g = torch.Generator().manual_seed(5)
    state = g.get_state()
    code = m.encode(x0)
    ref = O.vdm_elbo(m.diffusion.denoiser, m.diffusion.schedule, x0, cond=code,
                     t_sampling="uniform", generator=g)  # fmt: skip
    # replay the same draws: vdm_elbo draws z_0's noise first, then t and eps as the loss does
    g2 = torch.Generator()
    g2.set_state(state)
    torch.randn(x0.shape, generator=g2)
    with torch.no_grad():
        terms = m.loss({"x0": x0}, generator=g2)
    torch.testing.assert_close(terms["diffusion"], ref["diffusion"], rtol=1e-5, atol=1e-4)
    assert ref["diffusion"].abs().min() > 1.0  # a real number, not 0 = 0
    # and lambda is gamma'(t) / 2 of the fixed line: (5 + 13.3) / 2 times the eps error
    torch.testing.assert_close(terms["diffusion"], 0.5 * 18.3 * terms["mse"], rtol=1e-5, atol=0)


def test_weightings_from_the_registry_multiply_the_same_eps_error():
    x0 = _x0()
    out = {}
    for w in ("simple", "high-noise", "low-noise"):
        m = _wake(_drl(weighting=w)).eval()
        with torch.no_grad():
            out[w] = m.loss({"x0": x0}, generator=torch.Generator().manual_seed(2))
    gamma = _drl().diffusion.schedule(out["simple"]["t"])
    torch.testing.assert_close(out["simple"]["diffusion"], out["simple"]["mse"])
    for w, lam in (("high-noise", torch.sigmoid(gamma)), ("low-noise", torch.sigmoid(-gamma))):
        torch.testing.assert_close(out[w]["mse"], out["simple"]["mse"])  # same t, eps, weights
        torch.testing.assert_close(out[w]["diffusion"], lam.float() * out["simple"]["mse"])


class _Constant(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.value = nn.Parameter(torch.randn(dim))

    def forward(self, x, cond=None, t=None):
        return self.value.expand(x.shape[0], -1)


@torch.no_grad()
def test_shuffle_test_sees_the_code_and_a_constant_encoder_is_worth_nothing():
    x0 = _x0(8)
    t = torch.full((8,), 0.6, dtype=torch.float64)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
    perm = torch.roll(torch.arange(8), 1)
    x_t = x0 * 0.5 + eps * 0.5

    def change(m) -> tuple[float, float]:
        """(increase of the eps error when codes are shuffled, relative; how far eps_hat moved)"""
        code = m.encode(x0)
        own = m.diffusion.per_t_loss(x0, t, cond=code, eps=eps)
        shuffled = m.diffusion.per_t_loss(x0, t, cond=code[perm], eps=eps)
        a, b = (m.diffusion.denoiser(x_t, t.float(), c) for c in (code, code[perm]))
        return float(((shuffled - own) / own.mean()).mean()), float((a - b).norm() / a.norm())

    m = _wake(_drl()).eval()
    assert change(m)[1] > 1e-3  # a real encoder's code moves eps_hat
    g = torch.Generator().manual_seed(0)
    real = shuffle_test(m, x0, bins=4, generator=g)  # the collapse family's shuffle test
    assert max(abs(v) for v in real["t_bins"]["increase_mse"]) > 1e-4
    m.encoder = _Constant(3)
    increase, moved = change(m)
    assert abs(increase) < 1e-6 and moved < 1e-6
    const = shuffle_test(m, x0, bins=4, generator=torch.Generator().manual_seed(0))
    assert abs(const["shuffle_nats"]) < 1e-6 and abs(const["shuffle_mse"]) < 1e-6
    # E(x0, t) goes through the same test, its code asked at each example's t
    td = _wake(_drl(time_dependent=True)).eval()
    assert abs(shuffle_test(td, x0, bins=2, generator=g)["shuffle_mse"]) > 0


def test_variational_adds_exactly_the_analytic_kl():
    m = _wake(_drl(variational=True, beta=0.7))
    x0 = _x0()
    terms = m.loss({"x0": x0})
    mean, logvar = m.posterior(x0)
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).sum(1)
    torch.testing.assert_close(terms["kl"], kl)
    torch.testing.assert_close(terms["loss"], terms["diffusion"] + 0.7 * kl)
    assert kl.min() > 0.01
    w = _wake(_drl(variational=True, beta=0.7, kl_warmup_steps=10))  # the shared KL control
    w.on_step(5, 100)
    terms = w.loss({"x0": x0})
    torch.testing.assert_close(terms["loss"] - terms["diffusion"], 0.35 * terms["kl"])
    m.eval()
    torch.manual_seed(4)
    e = m.elbo(x0)  # a bound on -log p(x): the conditional VDM bound + KL (weight 1)
    torch.testing.assert_close(e["total"], e["recon"] + e["prior"] + e["diffusion"] + e["kl"])
    assert m.bound_is_valid and not _drl().bound_is_valid
    torch.testing.assert_close(m.encode(x0), mean)  # the code is the posterior mean


def test_vdrl_bound_with_a_view_encodes_a_view_as_training_did():
    from diffrep.diffusion import objectives as O

    view = {"shift": 1, "rotate": 10}
    m = _wake(_drl(variational=True, view=view)).eval()
    x0 = _x0()
    torch.manual_seed(5)
    e = m.elbo(x0)
    torch.manual_seed(5)  # replay: the view, then the code, then the bound's own draws
    x_view = m.view(x0)
    z, kl = m._code(x_view)
    ref = O.vdm_elbo(m.denoiser_for(x_view, z), m.diffusion.schedule, x0)
    torch.testing.assert_close(e["total"], ref["total"] + kl.sum(1))
    assert not torch.equal(x_view, x0)
    torch.manual_seed(5)
    z0, kl0 = m._code(x0)  # x itself: another (valid) q, another value
    assert not torch.allclose(kl.sum(1), kl0.sum(1))


def test_time_dependent_encoder_sees_each_examples_t():
    m = _wake(_drl(time_dependent=True, encode_t=0.3)).eval()
    assert m.encode_takes_t and not _drl().encode_takes_t
    x0 = _x0()
    torch.testing.assert_close(m.encode(x0), m.encode(x0, t=0.3))
    assert (m.encode(x0, t=0.1) - m.encode(x0, t=0.9)).abs().mean() > 1e-4
    g = torch.Generator().manual_seed(7)
    state = g.get_state()
    with torch.no_grad():
        terms = m.loss({"x0": x0}, generator=g)
    g.set_state(state)  # the loss draws t, then eps
    t = sample_t(len(x0), kind="uniform", generator=g)
    eps = torch.randn(x0.shape, generator=g)
    torch.testing.assert_close(terms["t"], t)
    code_t = m.encoder(x0, t=t.float())  # [B, Z]: one code per example's noise level
    ref = m.diffusion.per_t_loss(x0, t, cond=code_t, eps=eps)
    torch.testing.assert_close(terms["mse"], ref)
    fixed = m.diffusion.per_t_loss(x0, t, cond=m.encode(x0, t=0.3), eps=eps)
    assert (fixed - ref).abs().max() > 1e-4  # not the code of one fixed t


def test_generation_reconstruction_inversion_and_options():
    x0 = _x0(4)
    m = _wake(_drl()).eval()
    assert not m.can("sample") and not m.can("posterior") and m.can("reconstruct")
    with pytest.raises(UserError, match="variational=True"):
        m.sample(2)
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    r1, r2 = m.reconstruct(x0, generator=g(0)), m.reconstruct(x0, generator=g(1))
    assert r1.shape == x0.shape and r1.abs().max() <= 1 and (r1 - r2).abs().max() > 0
    x_T = m.invert(x0)
    torch.testing.assert_close(m.reconstruct(x0, x_T=x_T), m.reconstruct(x0, x_T=x_T))
    codes = m.encode(x0)
    assert m.sample(4, cond=codes, x_T=x_T, sampler="ddim").shape == x0.shape
    v = _wake(_drl(variational=True)).eval()
    assert v.can("sample") and v.sample(3, generator=g(0)).shape == (3, *SHAPE)
    with pytest.raises(UserError, match="choose one"):
        _drl(variational=True, time_dependent=True)
    with pytest.raises(UserError, match="weighting"):
        _drl(weighting="no-such-weighting")


def test_a_view_codes_a_translated_x0_in_training_and_x0_itself_in_eval():
    from diffrep.data.views import random_translate

    m = _wake(_drl(view={"shift": 2}))
    x0 = _x0()
    g = torch.Generator().manual_seed(11)
    state = g.get_state()
    with torch.no_grad():
        terms = m.train().loss({"x0": x0}, generator=g)
    g.set_state(state)  # the view is drawn first, then t and eps as for an unshifted drl
    view = random_translate(x0, 2, g)
    t = sample_t(len(x0), kind="uniform", generator=g)
    eps = torch.randn(x0.shape, generator=g)
    # the denoiser restores x0 (the target) given the code of the view
    ref = m.diffusion.per_t_loss(x0, t, cond=m.encoder(view), eps=eps)
    torch.testing.assert_close(terms["mse"], ref)
    own = m.diffusion.per_t_loss(x0, t, cond=m.encoder(x0), eps=eps)
    assert (own - ref).abs().max() > 1e-4  # not the code of x0 itself
    # eval: no view; the loss is that of a drl without view_shift and the same weights
    plain = _wake(_drl()).eval()
    plain.load_state_dict(m.state_dict())
    with torch.no_grad():
        a = m.eval().loss({"x0": x0}, generator=torch.Generator().manual_seed(3))
        b = plain.loss({"x0": x0}, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a["loss"], b["loss"], rtol=0, atol=0)
    with pytest.raises(UserError, match="shift >= 0"):
        _drl(view={"shift": -1})
    with pytest.raises(UserError, match="unknown option"):
        _drl(view={"shfit": 1})
