"""PDAE (seed 002): the sign of the mean shift, the frozen DPM, the guidance evaluations."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from diffrep.diffusion import editing
from diffrep.diffusion.denoiser import guided
from diffrep.diffusion.process import _bc, alpha_sigma
from diffrep.diffusion.schedules import build_schedule
from diffrep.errors import UserError
from diffrep.eval import guidance as G
from diffrep.methods.pdae import shift_coefficient
from diffrep.nets.gradient_estimator import GradientEstimator
from diffrep.nets.unet import UNet

T = 1000
SHAPE = (1, 2, 2)  # D = 4 "pixels"
M, S2 = 1.0, 0.05  # class means +-M, within-class variance S2


def mixture(schedule):
    """A 2-class Gaussian mixture p(x0) = 1/2 N(+M, S2 I) + 1/2 N(-M, S2 I), in closed form:
    (eps_theta(x_t, t): the ideal unconditional denoiser, grad(x_t, t, y) = grad log p(y | x_t))."""

    def terms(x_t, t):
        a, s = (_bc(v, x_t) for v in alpha_sigma(schedule(t.double())))
        v = a**2 * S2 + s**2
        means = torch.stack([a * M, -a * M])  # class 0: +M, class 1: -M
        scores = -(x_t[None] - means) / v  # [2, B, ...] score of x_t given each class
        logp = -((x_t[None] - means) ** 2).flatten(2).sum(2) / (2 * v.flatten())  # [2, B]
        w = torch.softmax(logp, dim=0)  # p(y | x_t)
        score = (w.reshape(2, -1, *[1] * (x_t.dim() - 1)) * scores).sum(0)
        return s, scores, score

    def eps_theta(x_t, t, cond=None):
        s, _, score = terms(x_t, t)
        return -s * score

    def grad(x_t, t, y):
        _, scores, score = terms(x_t, t)
        first = (y == 0).reshape(-1, *[1] * (x_t.dim() - 1))
        return torch.where(first, scores[0], scores[1]) - score

    return eps_theta, grad


def guided_method(schedule, sign: float):
    eps_theta, grad = mixture(schedule)
    shift = guided(eps_theta, grad, lambda t: sign * shift_coefficient(schedule, t, 1.0 / T))
    return SimpleNamespace(
        schedule=schedule,
        reverse_step=1.0 / T,
        data_shape=SHAPE,
        encode=lambda x0: (x0.flatten(1).mean(1) < 0).long(),  # the class of x0: y = z
        denoiser=lambda x_t, t, cond=None: (
            eps_theta(x_t, t) if cond is None else shift(x_t, t, cond)
        ),
    )


def draw_x0(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.randint(0, 2, (n,), generator=g)
    x0 = (1 - 2 * y.float()).reshape(-1, 1, 1, 1) * M + math.sqrt(S2) * torch.randn(
        n, *SHAPE, generator=g
    )
    return x0, y


def test_shift_coefficient_is_the_slides_coefficient_and_tends_to_sigma():
    """k_t = sqrt(alpha_t) sqrt(1 - abar_t) / beta_t * Sigma_t in DDPM notation; -> sigma_t."""
    schedule = build_schedule("ddpm-linear", T=T)
    i = torch.tensor([2, 10, 100, 500, 1000])
    betas = schedule.betas.double()
    abar = torch.cumprod(1 - betas, 0)
    b, ab, ab_prev = betas[i - 1], abar[i - 1], abar[i - 2]
    Sigma = (1 - ab_prev) / (1 - ab) * b
    slides = torch.sqrt(1 - b) * torch.sqrt(1 - ab) / b * Sigma
    k = shift_coefficient(schedule, i.double() / T, 1.0 / T)
    torch.testing.assert_close(k, slides, rtol=1e-9, atol=0)
    sigma = alpha_sigma(schedule(i.double() / T))[1]
    assert torch.all((k / sigma - 1).abs()[2:] < 0.02)  # the continuous limit, away from t = 0


def test_derived_sign_closes_the_posterior_mean_gap_and_the_other_opens_it():
    """With the true grad log p(y | x_t) of a 2-class mixture, eps_theta - k_t g lowers the gap
    to q(x_s | x_t, x0)'s mean in every t bin; eps_theta + k_t g raises it."""
    schedule = build_schedule("ddpm-linear", T=T)
    g = torch.Generator().manual_seed(0)
    x0, _ = draw_x0(4000, g)
    for t in (0.2, 0.4, 0.6, 0.8, 1.0):
        tt = torch.full((len(x0),), t, dtype=torch.float64)
        eps = torch.randn(x0.shape, generator=g)
        alone, minus = G.posterior_mean_gap(guided_method(schedule, +1.0), x0, tt, eps)
        _, plus = G.posterior_mean_gap(guided_method(schedule, -1.0), x0, tt, eps)
        a, m, p = alone.mean().item(), minus.mean().item(), plus.mean().item()
        print(f"t={t}: alone {a:.3e}, derived sign {m:.3e}, other sign {p:.3e}")
        assert m < 0.9 * a and p > 1.1 * a


def test_full_guidance_sets_the_class_and_no_guidance_is_chance():
    """The critical-stage experiment on the mixture with the true gradient: guided over the whole
    range the samples take the source's class; unguided they are a coin flip."""
    schedule = build_schedule("ddpm-linear", T=T)
    method = guided_method(schedule, +1.0)
    g = torch.Generator().manual_seed(1)
    x0, y = draw_x0(400, g)
    z = method.encode(x0)
    full = G.mixed_samples(method, z, 1.0, 0.0, steps=50)
    none = G.mixed_samples(method, z, 0.0, 0.0, steps=50)
    late = G.mixed_samples(method, z, 0.04, 0.0, steps=50)  # the class is settled by then
    agree = [float((method.encode(x) == y).float().mean()) for x in (full, none, late)]
    print("agreement full / none / late:", agree)
    assert agree[0] > 0.97 and abs(agree[1] - 0.5) < 0.1 and abs(agree[2] - 0.5) < 0.1


def test_stage_pairs_and_shortest_stage():
    pairs = G.stage_pairs(4)
    assert pairs[0] == (0.0, 0.0) and len(pairs) == 1 + 10 and (1.0, 0.0) in pairs
    assert all(a > b for a, b in pairs[1:])


def test_gradient_estimator_starts_at_zero_and_keeps_the_backbone_out():
    unet = UNet(1, base_channels=8, channel_mults=(1, 2), image_size=(8, 8))
    est = GradientEstimator(unet, z_dim=3)
    x, t, z = torch.randn(2, 1, 8, 8), torch.rand(2), torch.randn(2, 3)
    assert torch.equal(est(x, t, z, unet), torch.zeros_like(x))
    names = {n for n, _ in est.named_parameters()}
    assert not any(n.startswith(("down", "time_embed", "mid")) for n in names)
    # z shapes the features from the start (only the output layer is zero): first-order signal
    torch.nn.init.normal_(est.conv_out.weight, std=0.2)
    out = est(x, t, z, unet)
    assert out.shape == x.shape and not torch.equal(out, est(x, t, z + 1, unet))
    torch.testing.assert_close(unet(x, t), unet.forward(x, t))


# --------------------------------------------------------------------------- the method


def _train(tmp_path, name, method: dict, steps: int):
    """Train a tiny run on the 8x8 digits as `diffrep train` does; (run dir, trained method)."""
    from diffrep.config import config_from_dict
    from diffrep.frozen import dependencies
    from diffrep.methods import build_method
    from diffrep.runs import write_run_info
    from diffrep.train import train

    cfg = config_from_dict(
        {
            "data": {"name": "digits"},
            "method": method,
            "train": {"steps": steps, "batch_size": 16, "ckpt_every": 0, "log_every": 1,
                      "device": "cpu", "tensorboard": False, "lr": 1e-2},
        }
    )  # fmt: skip
    out = tmp_path / name
    data = cfg.data.load(cfg.data.train_split)
    torch.manual_seed(0)
    m = build_method(cfg.method_name, data.shape, **cfg.method_args)
    write_run_info(out, cfg, data.shape, dependencies=dependencies(m))
    train(m, data, out, cfg.train, progress=False)
    return out, m


@pytest.fixture(scope="module")
def ddpm_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pdae")
    unet = {"base_channels": 8, "channel_mults": [1, 2]}
    return _train(tmp, "ddpm", {"name": "ddpm", "unet": unet, "sample_steps": 5}, steps=3)[0]


def _trained_and_frozen(base: str, tmp_path, steps: int = 4, **kw):
    """Train pdae on `base`; check the DPM is bit-identical in memory and on reload, absent from
    the checkpoint, and that the encoder and G_psi did train. Returns the reloaded method."""
    from safetensors.torch import load_file

    from diffrep.frozen import load_frozen
    from diffrep.runs import load_run

    before = {k: v.clone() for k, v in load_frozen(base).state_dict().items()}
    args = {"name": "pdae", "base": base, "z_dim": 4, "encoder_width": 8, **kw}
    run, trained = _train(tmp_path, "pdae", args, steps)
    reloaded, _ = load_run(run)
    for model in (trained, reloaded):
        after = model.frozen.state_dict()
        assert after.keys() == before.keys() and len(after) > 0
        assert all(torch.equal(after[k], v) for k, v in before.items())
        assert not any(p.requires_grad for p in model.frozen.parameters())
    stored = load_file(str(run / "checkpoint" / "model.safetensors"))
    assert not any(k.startswith("frozen.") for k in stored), "the DPM is stored again"
    assert any(k.startswith("G.") for k in stored) and any(k.startswith("encoder.") for k in stored)
    w = stored["G.conv_out.weight"]
    assert w.abs().max() > 0  # G_psi left its zero initialisation
    return run, reloaded


def test_pdae_trains_on_a_frozen_ddpm_run(tmp_path, ddpm_run):
    pdae, model = _trained_and_frozen(f"run:{ddpm_run}", tmp_path, sample_steps=4)
    assert not hasattr(model, "backbone")  # G_psi reuses the frozen U-Net's down path
    # the encoder and G trained: the code now changes the prediction
    x0 = torch.rand(3, 1, 8, 8) * 2 - 1
    t = torch.full((3,), 0.5)
    x_t = torch.randn_like(x0)
    with torch.no_grad():
        z = model.encode(x0)
        assert not torch.equal(model.denoiser(x_t, t), model.denoiser(x_t, t, z))
        # one down path for eps_theta and G is the slides' eps_theta - k_t G, computed apart
        apart = guided(model.frozen.denoiser, model.gradient, model.shift_scale)(x_t, t, z)
        torch.testing.assert_close(model.denoiser(x_t, t, z), apart, rtol=0, atol=1e-6)
        assert model.reconstruct(x0).shape == x0.shape
        assert model.reconstruct(x0, use_z=False).shape == x0.shape
        s = model.sample(2, torch.Generator().manual_seed(0), z=model.encode(x0[:2]))
        assert s.shape == (2, 1, 8, 8) and s.abs().max() <= 1
        path = editing.interpolate(model, x0[:2], x0[1:], n=3)
        assert path.shape == (2, 3, 1, 8, 8)
        # its ends are the reconstructions (x_T and z of each image, decoded)
        torch.testing.assert_close(path[:, 0], model.reconstruct(x0[:2]), atol=1e-5, rtol=0)
        torch.testing.assert_close(path[:, -1], model.reconstruct(x0[1:]), atol=1e-5, rtol=0)
        d = torch.ones(4) / 2
        assert editing.manipulate(model, x0[:2], d, [0.0, 1.0]).shape == (2, 2, 1, 8, 8)
        # manipulation by 0 is the reconstruction from the same x_T
        torch.testing.assert_close(editing.manipulate(model, x0[:1], d, [0.0])[:, 0],
                                   model.reconstruct(x0[:1]), atol=1e-5, rtol=0)  # fmt: skip
    # `diffrep fit-prior` fits a latent DPM to the codes; sample() then draws z from it
    from diffrep.runs import fit_prior_run, load_run

    with pytest.raises(UserError, match="latent prior"):
        model.sample(2)
    out = fit_prior_run(pdae, tmp_path / "pdae-prior", "diffusion", {"T": 50}, steps=5,
                        log=lambda *a: None)  # fmt: skip
    sampler, _ = load_run(out)
    assert sampler.prior is not None
    s = sampler.sample(3, torch.Generator().manual_seed(0), steps=3)
    assert s.shape == (3, 1, 8, 8) and torch.isfinite(s).all()


def test_true_gradient_over_alpha_is_order_one_where_the_noise_is_high():
    """Why g_scale "alpha": grad log p(y | x_t) of the mixture shrinks with alpha_t (0.08 -> 0.007
    from t = 0.7 to 0.99), while grad / alpha_t, the network's target, stays at M = 1."""
    schedule = build_schedule("ddpm-linear", T=T)
    _, grad = mixture(schedule)
    g = torch.Generator().manual_seed(0)
    x0, y = draw_x0(4000, g)
    rms = {}
    for tv in (0.7, 0.9, 0.99):
        t = torch.full((len(x0),), tv, dtype=torch.float64)
        eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
        a, s = (_bc(v, x0) for v in alpha_sigma(schedule(t)))
        true = grad(a * x0.double() + s * eps, t, y)
        rms[tv] = (float(true.pow(2).mean().sqrt()), float(a.flatten()[0]))
    assert rms[0.7][0] > 10 * rms[0.99][0]
    for r, alpha in rms.values():
        assert 0.95 < r / alpha < 1.05


def test_g_scale_alpha_multiplies_the_network_output_by_alpha_t(ddpm_run):
    from diffrep.methods import build_method

    kw = dict(base=f"run:{ddpm_run}", z_dim=4, encoder_width=8)
    torch.manual_seed(0)
    m = build_method("pdae", (1, 8, 8), g_scale="alpha", **kw)
    torch.nn.init.normal_(m.G.conv_out.weight, std=0.1)  # a nonzero G
    x_t, t, z = torch.randn(3, 1, 8, 8), torch.tensor([0.1, 0.5, 0.95]), torch.randn(3, 4)
    with torch.no_grad():
        raw = m.G(x_t, t, z, m.frozen.net)
        alpha = alpha_sigma(m.schedule(t.double()))[0]
        torch.testing.assert_close(m.gradient(x_t, t, z), _bc(alpha, raw) * raw)
        # the fused path (one down path for eps_theta and G) applies the same alpha_t
        apart = guided(m.frozen.denoiser, m.gradient, m.shift_scale)(x_t, t, z)
        torch.testing.assert_close(m.denoiser(x_t, t, z), apart, rtol=0, atol=1e-6)
        m.g_scale = "none"
        torch.testing.assert_close(m.gradient(x_t, t, z), raw)
    with pytest.raises(UserError, match="g_scale"):
        build_method("pdae", (1, 8, 8), g_scale="sigma", **kw)


def test_untrained_pdae_is_the_frozen_dpm(ddpm_run):
    """G_psi starts at 0: the gap curve with z equals the DPM's own, bin by bin."""
    from diffrep.methods import build_method

    torch.manual_seed(0)
    m = build_method("pdae", (1, 8, 8), base=f"run:{ddpm_run}", z_dim=4, encoder_width=8)
    images = np.random.default_rng(0).integers(0, 256, (20, 1, 8, 8), dtype=np.uint8)
    curve = G.gap_curve(m, images, bins=4, generator=torch.Generator().manual_seed(0))
    assert curve["alone"] == curve["with_z"] and all(v > 0 for v in curve["alone"])
    assert not curve["with_z_lower_in_every_bin"]


def test_pdae_on_a_diffusers_folder(tmp_path):
    """A tiny UNet2DModel pipeline folder: pdae trains on it, the DPM's weights do not move."""
    diffusers = pytest.importorskip("diffusers")
    net = diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
        layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
    )  # fmt: skip
    net.save_pretrained(tmp_path / "dpm" / "unet")
    diffusers.DDPMScheduler(num_train_timesteps=1000).save_pretrained(
        tmp_path / "dpm" / "scheduler"
    )
    base = f"diffusers:{tmp_path / 'dpm'}"
    _, model = _trained_and_frozen(base, tmp_path, 3, backbone={"base_channels": 8})
    assert hasattr(model, "backbone")  # no diffrep U-Net to reuse: G has its own down path


def test_guidance_families_through_evaluate(tmp_path, ddpm_run):
    """`diffrep eval` families: posterior_gap and critical_stage write numbers and figures."""
    from diffrep.data import load_dataset
    from diffrep.eval import EvalConfig, evaluate
    from diffrep.methods import build_method

    torch.manual_seed(0)
    m = build_method("pdae", (1, 8, 8), base=f"run:{ddpm_run}", z_dim=4, encoder_width=8)
    cfg = EvalConfig(
        metrics=("posterior_gap", "critical_stage"), max_eval=40, gap_bins=3, stage_grid=2,
        stage_steps=3, stage_examples=12, fidnet_epochs=1, fidnet_cache=str(tmp_path / "c"),
    )  # fmt: skip
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    res = evaluate(m, train, test, cfg, run_dir=tmp_path)
    assert "errors" not in res, res.get("errors")
    gap, stage = res["posterior_gap"], res["critical_stage"]
    assert len(gap["t"]) == 3 and gap["alone"] == gap["with_z"]  # G starts at 0
    assert len(stage["cells"]) == 1 + 3 and stage["n"] == 12
    assert 0 <= stage["full_range"] <= 1 and 0.5 < stage["classifier_test_acc"] <= 1
    # an untrained G guides nothing: every stage agrees exactly as often as no guidance
    assert all(c["agreement"] == stage["unguided"] for c in stage["cells"])
    assert (tmp_path / "figures" / "posterior_gap.png").is_file()
    assert (tmp_path / "figures" / "critical_stage.png").is_file()


def test_gradient_estimator_z_map_places_z_spatially():
    """z_map: z reaches G through a [C, h, w] map at the bottleneck, so two codes can move
    different pixels even when x_t carries nothing (FiLM alone shifts every pixel alike)."""
    unet = UNet(1, base_channels=8, channel_mults=(1, 2), image_size=(8, 8))
    film = GradientEstimator(unet, z_dim=3)
    mapped = GradientEstimator(unet, z_dim=3, image_shape=(1, 8, 8))
    assert mapped.z_map.out_features == 16 * 4 * 4 and film.z_map is None  # 16 ch at 4x4
    extra = {n for n, _ in mapped.named_parameters()} - {n for n, _ in film.named_parameters()}
    assert extra == {"z_map.weight", "z_map.bias"}
    x, t, z = torch.zeros(2, 1, 8, 8), torch.full((2,), 0.9), torch.randn(2, 3)
    assert torch.equal(mapped(x, t, z, unet), torch.zeros_like(x))  # still starts at G = 0
    assert not mapped.z_map.weight.any()  # and with the frozen features unperturbed
    torch.nn.init.normal_(mapped.conv_out.weight, std=0.2)  # as after some training
    torch.nn.init.normal_(mapped.z_map.weight, std=0.2)
    out = mapped(x, t, z, unet)
    # the map alone (FiLM's z path cut): z still changes G, differently at different pixels
    mapped.z_embed = _ZeroEmbed(mapped.z_embed)
    d = mapped(x, t, z, unet) - mapped(x, t, torch.zeros_like(z), unet)
    assert d.abs().max() > 1e-4 and d[0].std() > 0.1 * d[0].abs().mean()
    assert out.shape == x.shape


class _ZeroEmbed(torch.nn.Module):
    """z's FiLM embedding with z replaced by 0: only the z map still sees z."""

    def __init__(self, embed):
        super().__init__()
        self.embed = embed

    def forward(self, z):
        return self.embed(torch.zeros_like(z))


def test_a_run_from_before_the_z_map_says_which_option_loads_it(tmp_path, ddpm_run):
    """A checkpoint without G.z_map (trained with z_map: false, or before it existed) loaded
    with the default gets the one-line fix that names the option."""
    import yaml

    from diffrep.runs import load_run

    args = {"name": "pdae", "base": f"run:{ddpm_run}", "z_dim": 4, "encoder_width": 8}
    run, _ = _train(tmp_path, "pdae", {**args, "z_map": False}, steps=1)
    assert load_run(run)[0].G.z_map is None
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    del cfg["method"]["z_map"]  # as a config written before the option existed
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(UserError, match="set `z_map: false` under `method:`"):
        load_run(run)


def test_a_run_with_the_other_g_scale_says_which_option_loads_it(tmp_path, ddpm_run):
    """G's weights are for one output scale: a checkpoint trained with g_scale "alpha" loaded as
    "none" (the default), or the other way round, is refused with the fix, not misread."""
    import yaml

    from diffrep.methods.pdae import PDAE
    from diffrep.runs import load_run

    args = {"name": "pdae", "base": f"run:{ddpm_run}", "z_dim": 4, "encoder_width": 8}
    run, _ = _train(tmp_path, "pdae", {**args, "g_scale": "alpha"}, steps=1)
    assert load_run(run)[0].g_scale == "alpha"
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    del cfg["method"]["g_scale"]
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(UserError, match="set `g_scale: alpha` under `method:`"):
        load_run(run)
    # a "none" checkpoint (no marker) loaded as "alpha" misses the marker
    assert "set `g_scale: none`" in PDAE.load_hint(["g_scale_alpha"], [])


def test_pdae_benchmark_refuses_a_missing_ddpm_run_before_writing(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "pdae_mnist.py"
    out = tmp_path / "out"
    cmd = [sys.executable, str(script), "--ddpm-run", str(tmp_path / "nope"), "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "does not exist; fix:" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()  # nothing written for a run that cannot start


def test_pdae_encodes_a_view_in_training_and_x0_in_eval(ddpm_run):
    from diffrep.methods import build_method
    from test_views import check_view_contract

    m = build_method("pdae", (1, 8, 8), base=f"run:{ddpm_run}", z_dim=4, encoder_width=8,
                     view={"shift": 2})  # fmt: skip
    check_view_contract(m, torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(1)))
