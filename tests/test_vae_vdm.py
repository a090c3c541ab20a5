"""vae_vdm (seed 000): the bound, the KL controls, conditioning on a t range, and the collapse
diagnostics and code grids on a tiny untrained model (whose random decoder does use its code)."""

import numpy as np
import pytest
import torch

from diffrep.data import ImageData
from diffrep.errors import UserError
from diffrep.eval import EvalConfig
from diffrep.eval.collapse import shuffle_test
from diffrep.eval.suite import evaluate
from diffrep.methods import build_method

SHAPE = (1, 8, 8)
UNET = {"base_channels": 8, "channel_mults": (1, 2)}


def tiny(**kw):
    """A tiny vae_vdm whose U-Net is perturbed away from its zero-initialised output and
    conditioning layers (at init it ignores x_t, t and w alike)."""
    torch.manual_seed(0)
    args = dict(latent_dim=3, encoder_width=8, unet=UNET, sample_steps=4, gamma_min=-6.0)
    m = build_method("vae_vdm", SHAPE, **{**args, **kw})
    with torch.no_grad():
        for p in m.diffusion.net.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return m


def images(n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(0, 256, (n, *SHAPE), generator=g)
    return (2 * k.float() + 1) / 256 - 1


def test_loss_at_beta_1_is_the_negative_elbo_and_its_terms_add_up():
    m, x0 = tiny(), images()
    torch.manual_seed(5)
    loss = m.loss({"x0": x0})
    torch.manual_seed(5)
    terms = m.elbo(x0)
    torch.testing.assert_close(loss["loss"].detach(), terms["total"])
    parts = terms["recon"] + terms["prior"] + terms["diffusion"] + terms["kl"]
    torch.testing.assert_close(terms["total"], parts)
    mean, logvar = m.posterior(x0)  # the Gaussian prior's analytic KL
    kl = 0.5 * (mean**2 + logvar.exp() - 1 - logvar).sum(-1)
    torch.testing.assert_close(terms["kl"], kl.detach())
    assert m.bound_is_valid and not tiny(beta=0.0).bound_is_valid


def test_with_a_view_the_bound_encodes_a_view_as_training_does():
    m, x0 = tiny(view={"shift": 1, "rotate": 10, "scale": 0.1}), images()
    torch.manual_seed(5)
    loss = m.train().loss({"x0": x0})["loss"].detach()
    torch.manual_seed(5)
    bound = m.eval().elbo(x0)["total"]
    torch.testing.assert_close(bound, loss)  # the same view, w, t and eps: the same value
    torch.manual_seed(5)
    mean_x = m.posterior(x0)[0]
    torch.testing.assert_close(m.encode(x0), mean_x)  # the representation: x itself
    crisp = m._terms(x0, x_enc=None)[0]["kl"].detach()  # q(w | x): another value
    assert float((crisp - m.elbo(x0)["kl"]).abs().max()) > 1e-4


def test_beta_scales_only_the_training_kl():
    x0 = images()
    out = {}
    for beta in (1.0, 1e4):
        m = tiny(beta=beta)
        torch.manual_seed(5)
        out[beta] = m.loss({"x0": x0})
    diff = out[1e4]["loss"] - out[1.0]["loss"]
    torch.testing.assert_close(diff, (1e4 - 1) * out[1.0]["kl"], rtol=1e-4, atol=1e-3)


def test_free_bits_floor_every_dimension_and_warm_up_ramps_beta():
    m, x0 = tiny(free_bits=2.0, kl_warmup_steps=10), images()
    kl_dims = m.prior.kl_per_dim(*m.posterior(x0))  # [B, Z]: an untrained encoder, KL << 2
    assert (kl_dims.mean(0) < 2.0).all()
    m.on_step(10, 100)
    terms = m.loss({"x0": x0})
    # every dimension is charged its floor, and the floor sends no gradient to the encoder
    torch.testing.assert_close(terms["kl_train"], torch.full((8,), 3 * 2.0))
    params = list(m.encoder.parameters())
    grads = torch.autograd.grad(terms["kl_train"].sum(), params, allow_unused=True)
    assert all(gr is None or float(gr.abs().max()) == 0.0 for gr in grads)
    m.on_step(0, 100)
    assert float(m.loss({"x0": x0})["kl_train"].detach().abs().max()) == 0.0  # beta_0 = 0
    m.on_step(5, 100)
    torch.testing.assert_close(m.loss({"x0": x0})["kl_train"], torch.full((8,), 3.0))
    # the ELBO charges the true KL whatever the training term
    assert torch.allclose(m.elbo(x0)["kl"], kl_dims.sum(-1).detach(), atol=1e-6)
    with pytest.raises(UserError, match="free_bits"):
        tiny(free_bits=0.5, prior="flow")


def test_aux_term_is_drl_eq2_on_the_same_code_and_leaves_the_schedule_alone():
    from diffrep.diffusion import objectives as O
    from diffrep.diffusion.denoiser import bind

    x0 = images()
    plain, aux = tiny(), tiny(aux_weight=3.0)
    torch.manual_seed(5)
    base = plain.loss({"x0": x0})
    torch.manual_seed(5)
    terms = aux.loss({"x0": x0})
    assert "aux" not in base and float(terms["aux"].detach().min()) > 0
    # the bound's terms are drawn first, so they match; the loss adds aux_weight * aux
    torch.testing.assert_close(terms["diffusion"], base["diffusion"])
    torch.testing.assert_close(terms["loss"], base["loss"] + 3.0 * terms["aux"])
    # aux = sigmoid(gamma(t)) ||eps - eps_hat(x_t, t, w)||^2 (seed 001 eq. 2) with the same w
    torch.manual_seed(5)
    _, _, _, w = aux._terms(x0)  # the posterior mean (aux_code "mean")
    ref = O.denoising_loss(bind(aux.diffusion.denoiser, w), aux.schedule, x0,
                           weighting="high-noise")  # fmt: skip
    torch.testing.assert_close(terms["aux"], ref["loss"])
    g_t = aux.schedule(ref["t"]).detach()
    torch.testing.assert_close(ref["loss"], torch.sigmoid(g_t).float() * ref["mse"])
    # its gradient trains the encoder and the U-Net, not the noise schedule
    enc, sched = list(aux.encoder.parameters()), list(aux.schedule.parameters())
    grads = torch.autograd.grad(terms["aux"].sum(), enc + sched, allow_unused=True)
    assert any(gr is not None and float(gr.abs().max()) > 0 for gr in grads[: len(enc)])
    assert all(gr is None for gr in grads[len(enc) :])
    elbos = []
    for m in (plain, aux):  # training-only: the bound is the same function of the weights
        torch.manual_seed(7)
        elbos.append(m.elbo(x0, torch.Generator().manual_seed(0))["total"])
    torch.testing.assert_close(*elbos)
    # aux_code "sample": the bound's own w instead of the posterior mean
    sampled = tiny(aux_weight=3.0, aux_code="sample")
    torch.manual_seed(5)
    terms = sampled.loss({"x0": x0})
    torch.manual_seed(5)
    _, _, w, mean = sampled._terms(x0)
    assert float((w - mean).detach().abs().max()) > 0.1
    ref = O.denoising_loss(bind(sampled.diffusion.denoiser, w), sampled.schedule, x0,
                           weighting="high-noise")  # fmt: skip
    torch.testing.assert_close(terms["aux"], ref["loss"])
    # aux_unet: the term goes through its own denoiser; the decoder gets no gradient from it
    own = tiny(aux_weight=3.0, aux_unet=UNET)
    with torch.no_grad():  # away from its zero-initialised conditioning, as tiny() does
        for p in own.aux_diffusion.parameters():
            p.add_(0.2 * torch.randn_like(p))
    aux_terms = own.loss({"x0": x0})["aux"].sum()
    dec, enc, sep = (list(p.parameters()) for p in (own.diffusion, own.encoder, own.aux_diffusion))
    grads = torch.autograd.grad(aux_terms, dec + enc + sep, allow_unused=True)
    assert all(gr is None for gr in grads[: len(dec)])
    for part in (grads[len(dec) : len(dec) + len(enc)], grads[len(dec) + len(enc) :]):
        assert any(gr is not None and float(gr.abs().max()) > 0 for gr in part)  # enc, own
    with pytest.raises(UserError, match="aux_weight"):
        tiny(aux_weight=-1.0)
    with pytest.raises(UserError, match="aux_weight"):
        tiny(aux_unet=UNET)  # a U-Net for a term that is off
    with pytest.raises(UserError, match="aux_code"):
        tiny(aux_weight=1.0, aux_code="mode")


def test_encoder_lr_scale_makes_an_encoder_group_and_every_parameter_is_in_one_group():
    from diffrep.train import param_groups

    assert [g["name"] for g in param_groups(tiny())] == ["all"]
    m = tiny(encoder_lr_scale=0.2)
    groups = {g["name"]: g for g in param_groups(m)}
    assert groups["encoder"]["lr_scale"] == 0.2
    ids = [id(p) for g in groups.values() for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in m.parameters()) and len(set(ids)) == len(ids)
    assert {id(p) for p in groups["encoder"]["params"]} == {id(p) for p in m.encoder.parameters()}
    with pytest.raises(UserError, match="encoder_lr_scale"):
        tiny(encoder_lr_scale=0.0)


def test_shuffle_test_sees_the_code_only_where_the_decoder_gets_it():
    x0 = images(32)
    g = torch.Generator().manual_seed(0)
    full = shuffle_test(tiny().eval(), x0, bins=4, batch_size=32, generator=g)
    assert min(full["t_bins"]["increase_mse"]) != 0  # a random decoder does use its code
    ranged = tiny(cond_t_range=(0.5, 1.0)).eval()
    res = shuffle_test(ranged, x0, bins=4, batch_size=32, generator=g)
    inc = res["t_bins"]["increase_mse"]
    assert inc[0] == 0.0 and inc[1] == 0.0  # t < 0.5: the null code, whatever w is
    assert inc[2] != 0.0 and inc[3] != 0.0
    with pytest.raises(UserError, match="cond_t_range"):
        tiny(cond_t_range=(0.7, 0.2))


def test_elbo_is_at_least_the_importance_weighted_estimate():
    # With the diffusion's (t, eps) fixed by a seed, L_VDM(x | w) is a function of w alone and
    # E_q[L_VDM + log q - log p] >= -log E_q[exp(-L_VDM) p / q] (Jensen); E[IW_k] <= ELBO.
    m, x0 = tiny(latent_dim=2).eval(), images(4)
    torch.manual_seed(0)
    gaps = []
    for s in range(4):
        runs = [m.elbo(x0, torch.Generator().manual_seed(s))["total"] for _ in range(64)]
        elbo = torch.stack(runs).double().mean(0)  # [B]
        gaps.append(elbo - m.nll_iw(x0, k=64, seed=s))
    gap = torch.stack(gaps)  # [seeds, B]
    assert (gap > 0).all(), gap
    assert float(gap.mean()) > 1.0  # a decoder that uses w: the IW estimate is clearly tighter


def test_collapse_and_code_sample_families_on_a_tiny_run(tmp_path):
    g = np.random.default_rng(0)
    data = ImageData("tiny", g.integers(0, 256, (40, *SHAPE), dtype=np.uint8),
                     labels=np.arange(40) % 4, num_classes=4)  # fmt: skip
    cfg = EvalConfig(metrics=("collapse", "code_samples"), sample_kwargs={"steps": 3},
                     mi_examples=40)  # fmt: skip
    ev = evaluate(tiny(), data, data, cfg, run_dir=tmp_path)
    col, cs = ev["collapse"], ev["code_samples"]
    assert col["latent_dim"] == 3 and col["shuffle_examples"] == 40
    assert col["kl_per_dim_mean"] > 0 and col["mi"] <= col["mi_max"]
    assert cs["recon_mse"] > 0 and cs["regen_mse"] >= 0
    for name in ("shuffle_test", "code_reconstructions", "code_regeneration",
                 "code_interpolation", "code_prior_samples"):  # fmt: skip
        assert (tmp_path / "figures" / f"{name}.png").is_file(), name
    # a method without a code-conditioned decoder is skipped
    vdm = build_method("vdm", SHAPE, unet=UNET, sample_steps=3)
    assert "collapse" not in evaluate(vdm, data, data, cfg)


def test_sample_takes_the_decoders_sampler_and_steps():
    from diffrep.eval.diffusion import takes_sampler_and_steps

    m = tiny().eval()
    assert takes_sampler_and_steps(m)  # `diffrep sample --sampler/--steps` and ddim_steps apply
    a, b = (m.sample(2, torch.Generator().manual_seed(0), sampler="ddim", steps=2) for _ in "ab")
    assert a.shape == (2, *SHAPE)
    torch.testing.assert_close(a, b)  # w from the generator, then deterministic DDIM
