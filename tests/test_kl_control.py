"""KL control (issue 10 item 5): warm-up schedule, free bits on closed-form Gaussian KLs, and the
VAE wiring (the ELBO unaffected, refusals as UserError)."""

from __future__ import annotations

import json

import pytest
import torch

from diffrep.errors import UserError
from diffrep.methods import build_method
from diffrep.methods.kl_control import KLControl
from diffrep.priors import build_prior


def test_warmup_ramps_beta_linearly_from_zero():
    c = KLControl(beta=2.0, warmup_steps=4)
    got = []
    for step in (0, 1, 2, 3, 4, 10):
        c.on_step(step)
        got.append(c.beta_now)
    assert got == [0.0, 0.5, 1.0, 1.5, 2.0, 2.0]
    kl = torch.tensor([3.0, 5.0])
    c.on_step(1)
    assert torch.equal(c.weight(kl), torch.tensor([1.5, 2.5]))  # a total KL [B]: beta_t * kl
    assert KLControl(beta=0.5).beta_now == 0.5  # no warm-up: beta from the start


def _gaussian_kl(mean, logvar):
    return build_prior("gaussian", mean.shape[1]).kl_per_dim(mean, logvar)  # [B, Z]


def test_gaussian_kl_per_dim_is_the_closed_form_and_sums_to_kl():
    prior = build_prior("gaussian", 3)
    mean = torch.tensor([[0.0, 1.0, 2.0]])
    logvar = torch.tensor([[0.0, 0.0, 1.0]])
    # 0.5 (m^2 + e^lv - 1 - lv): 0, 0.5, 0.5 (4 + e - 2)
    want = torch.tensor([[0.0, 0.5, 0.5 * (2.0 + torch.e)]])
    assert torch.allclose(prior.kl_per_dim(mean, logvar), want)
    assert torch.equal(prior.kl_per_dim(mean, logvar).sum(-1), prior.kl(mean, logvar))


def test_free_bits_floor_every_dimensions_training_term():
    torch.manual_seed(0)
    B, Z, lam = 64, 6, 0.4
    # dimensions from collapsed (KL ~ 0) to informative (KL ~ 2 nats)
    scale = torch.tensor([0.0, 0.1, 0.5, 0.8, 1.5, 2.0])
    mean = (torch.randn(B, Z) * scale).requires_grad_(True)
    logvar = torch.zeros(B, Z)
    kl = _gaussian_kl(mean, logvar)  # [B, Z]
    kl_j = kl.detach().mean(0)  # the batch KL of each dimension
    c = KLControl(beta=1.0, free_bits=lam)
    floored = c.floored(kl)
    per_dim = floored.mean(0)
    assert (per_dim >= lam - 1e-7).all()  # every dimension's training term is >= its floor
    assert torch.allclose(per_dim, torch.clamp(kl_j, min=lam))  # = max(KL_j, lambda)
    assert (kl_j < lam).sum() >= 2 and (kl_j >= lam).sum() >= 2  # both cases are exercised
    term = c.weight(kl)  # [B]
    assert term.shape == (B,)
    assert term.mean().item() == pytest.approx(torch.clamp(kl_j, min=lam).sum().item(), rel=1e-6)
    term.sum().backward()
    # dimensions under the floor get no gradient; those above get the KL's (d/dm 0.5 m^2 = m)
    under = kl_j < lam
    assert torch.equal(mean.grad[:, under], torch.zeros(B, int(under.sum())))
    assert torch.allclose(mean.grad[:, ~under], mean.detach()[:, ~under])


def test_free_bits_need_a_per_dimension_kl():
    with pytest.raises(ValueError, match="per dimension"):
        KLControl(free_bits=0.1).weight(torch.ones(3))


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"beta": -1.0}, "method.beta=-1.0 must be a number >= 0"),
        ({"beta": float("nan")}, "method.beta"),
        ({"kl_warmup_steps": -5}, "kl_warmup_steps=-5"),
        ({"free_bits": -0.1}, "free_bits=-0.1"),
        ({"free_bits": 0.5, "prior": "diffusion"}, "free_bits=0.5 needs the KL per latent"),
    ],
)
def test_vae_refuses_bad_kl_options(kw, match):
    with pytest.raises(UserError, match=match):
        build_method("vae", (1, 8, 8), latent_dim=4, width=8, **kw)


def _vae(**kw):
    torch.manual_seed(0)
    return build_method("vae", (1, 8, 8), latent_dim=4, width=8, **kw)


def test_vae_training_term_warms_up_and_floors_while_the_elbo_is_unchanged():
    x0 = torch.rand(8, 1, 8, 8) * 2 - 1
    plain, shaped = _vae(), _vae(kl_warmup_steps=10, free_bits=50.0, beta=2.0)
    torch.manual_seed(1)
    e_plain = plain.elbo(x0)
    torch.manual_seed(1)
    e_shaped = shaped.elbo(x0)
    for k in e_plain:  # same weights, same noise: the ELBO ignores beta, warm-up and free bits
        assert torch.equal(e_plain[k], e_shaped[k]), k
    assert torch.allclose(e_shaped["total"], e_shaped["recon"] + e_shaped["kl"])

    shaped.on_step(0, 100)  # beta_t = 0: the loss is the reconstruction alone
    torch.manual_seed(1)
    t = shaped.loss({"x0": x0})
    assert torch.equal(t["loss"], t["recon"]) and torch.equal(t["kl_train"], torch.zeros(8))
    shaped.on_step(5, 100)  # beta_t = 1; a 50-nat floor is above every dimension's KL
    torch.manual_seed(1)
    t = shaped.loss({"x0": x0})
    assert (t["kl"] < 4 * 50.0).all()
    assert torch.allclose(t["kl_train"], torch.full((8,), 4 * 50.0))
    assert torch.allclose(t["loss"], t["recon"] + 200.0)
    torch.manual_seed(1)
    p = plain.loss({"x0": x0})  # defaults: recon + KL, no extra term
    assert "kl_train" not in p and torch.equal(p["loss"], p["recon"] + p["kl"])


def test_the_trainer_drives_the_warmup(tmp_path):
    from diffrep.data import load_dataset
    from diffrep.train import TrainConfig, train

    data = load_dataset("digits", "train").subset(slice(0, 64))
    m = _vae(kl_warmup_steps=4)
    cfg = TrainConfig(steps=3, batch_size=8, log_every=1, warmup=0, tensorboard=False)
    train(m, data, tmp_path / "r", cfg)
    rows = [
        json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
    ]
    ratios = [r["kl_train"] / r["kl"] for r in rows]
    assert ratios == pytest.approx([0.0, 0.25, 0.5], abs=1e-6)  # beta_t at steps 0, 1, 2


def test_fit_prior_on_a_free_bits_vae_gives_a_loadable_run(tmp_path):
    from diffrep.config import config_from_dict
    from diffrep.runs import fit_prior_run, load_run, read_run_info, train_from_config

    raw = {
        "data": {"name": "digits"},
        "method": {"name": "vae", "latent_dim": 2, "width": 8, "free_bits": 0.1},
        "train": {"steps": 2, "batch_size": 8, "warmup": 0, "tensorboard": False},
    }
    train_from_config(config_from_dict(raw), tmp_path / "a", log=lambda *a: None)
    out = fit_prior_run(
        tmp_path / "a", tmp_path / "b", "diffusion", {"T": 25}, steps=2, log=lambda *a: None
    )
    method, cfg = load_run(out)  # the diffusion prior has no per-dimension KL: free bits dropped
    assert cfg.method["prior"] == "diffusion" and "free_bits" not in cfg.method
    assert read_run_info(tmp_path / "a")["method_args"]["free_bits"] == 0.1
