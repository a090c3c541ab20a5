"""One contract test run over every registered method (as diffusers does for schedulers).

A new method gets these checks by registering itself; TINY only makes the networks small.
"""

import pytest
import torch

from diffrep.methods import METHODS, build_method

SHAPE = (1, 8, 8)
B = 4
# Constructor arguments that make each method tiny; a method missing here runs with defaults.
TINY = {
    "vae": {"latent_dim": 3, "width": 8},
    "vdm": {"unet": {"base_channels": 8, "channel_mults": (1, 2)}, "sample_steps": 4},
    "ddpm": {"T": 50, "unet": {"base_channels": 8, "channel_mults": (1, 2)}, "sample_steps": 4},
    "dae": {"code_dim": 3, "width": 8},
    "drl": {
        "code_dim": 3,
        "width": 8,
        "unet": {"base_channels": 8, "channel_mults": (1, 2)},
        "sample_steps": 4,
    },
    "vae_vdm": {
        "latent_dim": 3,
        "encoder_width": 8,
        "unet": {"base_channels": 8, "channel_mults": (1, 2)},
        "sample_steps": 4,
    },
    "svd": {"rank": 3},
    "latent_prior": {"base_args": {"code_dim": 3, "width": 8}, "code_dim": 3},
}


@pytest.fixture(scope="module", autouse=True)
def _frozen_base(tmp_path_factory):
    """pdae needs a pre-trained DPM (`base`): an untrained tiny ddpm run stands in for one."""
    from diffrep.checkpoint import save_checkpoint
    from diffrep.config import config_from_dict
    from diffrep.runs import write_run_info

    run = tmp_path_factory.mktemp("frozen-base")
    cfg = config_from_dict({"data": {"name": "digits"}, "method": {"name": "ddpm", **TINY["ddpm"]}})
    write_run_info(run, cfg, SHAPE)
    save_checkpoint(run / "checkpoint", _method("ddpm"), None, None, 0, {})
    TINY["pdae"] = {"base": f"run:{run}", "z_dim": 3, "encoder_width": 8, "sample_steps": 3,
                    "prior": "gaussian"}  # fmt: skip
    yield
    TINY.pop("pdae")


def _method(name):
    torch.manual_seed(0)
    m = build_method(name, SHAPE, **TINY.get(name, {}))
    if getattr(m, "closed_form", False):  # fitted, not trained: fit on a few images first
        g = torch.Generator().manual_seed(2)
        m.fit((2 * torch.randint(0, 256, (8, *SHAPE), generator=g).float() + 1) / 256 - 1)
    return m


def _batch():
    g = torch.Generator().manual_seed(1)
    k = torch.randint(0, 256, (B, *SHAPE), generator=g)
    return {"x0": (2 * k.float() + 1) / 256 - 1, "y": torch.arange(B)}


@pytest.mark.parametrize("name", METHODS.names())
def test_loss_is_per_example_finite_and_trains(name):
    m = _method(name)
    terms = m.loss(_batch())
    assert "loss" in terms
    for key, v in terms.items():
        assert v.shape == (B,), f"{name}: term {key} has shape {tuple(v.shape)}, want ({B},)"
        assert torch.isfinite(v).all(), f"{name}: term {key} not finite"
    if getattr(m, "closed_form", False):
        return  # no parameters: `diffrep train` calls fit(x0) instead of taking steps
    terms["loss"].mean().backward()
    grads = [p.grad for p in m.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads), f"{name}: no gradient"


@pytest.mark.parametrize("name", METHODS.names())
def test_optional_capabilities_have_the_right_shapes(name):
    m = _method(name).eval()
    x0 = _batch()["x0"]
    assert m.can("encode") or m.can("sample"), f"{name} neither encodes nor samples"
    if m.can("encode"):
        z = m.encode(x0)
        assert z.dim() == 2 and z.shape[0] == B and torch.isfinite(z).all()
        torch.testing.assert_close(m.encode(x0), z)  # deterministic in eval mode
    if m.can("reconstruct"):
        assert m.reconstruct(x0).shape == x0.shape
    if m.can("sample"):
        g = torch.Generator().manual_seed(0)
        x = m.sample(3, generator=g)
        assert x.shape == (3, *SHAPE) and torch.isfinite(x).all()
    if m.can("elbo"):
        terms = m.elbo(x0)
        assert terms["total"].shape == (B,) and torch.isfinite(terms["total"]).all()
        # A bound on -log P of 8-bit data cannot be below 0 nats.
        assert (terms["total"] > 0).all()
    if m.can("posterior"):
        mean, logvar = m.posterior(x0)
        assert mean.shape == logvar.shape and mean.shape[0] == B


@pytest.mark.parametrize("name", METHODS.names())
def test_state_dict_round_trip_reproduces_outputs(name):
    m1, m2 = _method(name).eval(), build_method(name, SHAPE, **TINY.get(name, {})).eval()
    if hasattr(m2, "prepare_load"):  # buffers sized by the fit (checkpoint loading does this)
        m2.prepare_load(m1.state_dict())
    m2.load_state_dict(m1.state_dict())
    x0 = _batch()["x0"]
    if m1.can("encode"):
        torch.testing.assert_close(m1.encode(x0), m2.encode(x0))
    if m1.can("sample"):
        a = m1.sample(2, generator=torch.Generator().manual_seed(3))
        b = m2.sample(2, generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(a, b)


def test_unknown_method_names_the_choices():
    from diffrep.errors import UserError

    with pytest.raises(UserError, match="vae"):
        build_method("nope", SHAPE)
