"""The diffusion evaluation families (schedule, ddim_steps, memorisation) on digits.

The memorisation acceptance check: the ideal denoiser (seed 003) driven by DDIM returns copies of
training images and the check flags them; a briefly trained DDPM, sampled by the same sampler on
the same schedule, copies far less.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from diffrep.diffusion import samplers as S
from diffrep.diffusion.ideal import IdealDenoiser
from diffrep.eval import EvalConfig, evaluate
from diffrep.eval.diffusion import method_schedule, takes_sampler_and_steps
from diffrep.methods import build_method
from diffrep.methods.base import Method

SHAPE = (1, 8, 8)
N_SAMPLES = 200
SAMPLE_KW = {"sampler": "ddim", "steps": 25}


@pytest.fixture(scope="module")
def digits():
    from diffrep.data import load_dataset

    return load_dataset("digits", "train"), load_dataset("digits", "test")  # 1438 / 359 images


@pytest.fixture(scope="module")
def ddpm(digits):
    """A tiny DDPM trained for 200 steps on digits train (a few seconds on one thread)."""
    from diffrep.data import make_batch

    train, _ = digits
    torch.manual_seed(0)
    m = build_method("ddpm", SHAPE, unet={"base_channels": 16, "channel_mults": (1,)}, T=1000)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    rng = torch.Generator().manual_seed(1)
    for _ in range(200):
        idx = torch.randint(0, len(train), (64,), generator=rng).numpy()
        loss = m.loss(make_batch(train.images[idx], train.labels[idx]))["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval()


class IdealSampler(Method):
    """Samples of the ideal denoiser over `train_x0` (seed 003) with a given sampler/schedule."""

    def __init__(self, train_x0: torch.Tensor, schedule):
        super().__init__(tuple(train_x0.shape[1:]))
        self.ideal = IdealDenoiser(train_x0, schedule)

    def loss(self, batch):
        raise NotImplementedError

    def sample(self, n, generator=None, *, sampler="ddim", steps=25, **kw):
        shape = (n, *self.data_shape)
        x = S.sample(self.ideal, self.ideal.schedule, shape, sampler=sampler, steps=steps,
                     generator=generator, progress=False, **kw)  # fmt: skip
        return x.clamp(-1, 1)


def _memo(method, digits, tmp_path=None):
    cfg = EvalConfig(metrics=("memorisation",), n_samples=N_SAMPLES, sample_kwargs=SAMPLE_KW)
    return evaluate(method, *digits, cfg, run_dir=tmp_path)


@pytest.mark.slow
def test_ideal_denoiser_copies_training_images_and_a_trained_ddpm_does_not(digits, ddpm, tmp_path):
    from diffrep.data import to_model_input

    train, _ = digits
    ideal = IdealSampler(to_model_input(train.images), ddpm.schedule)  # same schedule, sampler
    r_ideal = _memo(ideal, digits, tmp_path / "ideal")["memorisation"]
    r_ddpm = _memo(ddpm, digits, tmp_path / "ddpm")["memorisation"]
    torch.manual_seed(0)
    net = {"base_channels": 16, "channel_mults": (1,)}
    untrained = build_method("ddpm", SHAPE, unet=net, T=1000).eval()
    r_untrained = _memo(untrained, digits)["memorisation"]
    msg = f"ideal {r_ideal}\nddpm {r_ddpm}\nuntrained ddpm {r_untrained}"
    print(msg)
    # The ideal denoiser lands on training images (8-bit rounding: distance exactly 0), and on
    # many different ones: every training image is an attractor.
    assert r_ideal["copy_fraction"] >= 0.95, msg
    assert r_ideal["median_sample_to_train"] < 0.05 * r_ideal["median_test_to_train"], msg
    assert r_ideal["num_distinct_nearest"] >= 0.5 * N_SAMPLES, msg
    # the trained DDPM copies (almost) nothing: a gap of at least 0.8 in the copy fraction
    assert r_ddpm["copy_fraction"] <= 0.15, msg
    assert r_ideal["copy_fraction"] - r_ddpm["copy_fraction"] >= 0.8, msg
    # ... and not because it draws noise: it learned to move samples towards the data
    assert r_ddpm["median_ratio"] < 0.7 * r_untrained["median_ratio"], msg
    # the check is calibrated on test images: the copy threshold is their 5 % quantile
    assert 0.03 <= r_ddpm["test_copy_fraction"] <= 0.07, msg
    for name in ("memorisation_pairs", "memorisation_hist"):
        assert (tmp_path / "ideal" / "figures" / f"{name}.png").is_file()


def _tiny_cfg(tmp_path, **kw) -> EvalConfig:
    options = {
        "metrics": ("schedule", "ddim_steps", "memorisation"),
        "n_samples": 150,  # >= the FID network's 128 feature dims: a non-singular covariance
        "ddim_steps": (2, 10),
        "fidnet_cache": str(tmp_path / "fidnet"),
        "fidnet_epochs": 1,
        "sample_kwargs": {"steps": 10},
    }
    return EvalConfig(**{**options, **kw})


def _figure_meta(run_dir, name):
    assert (run_dir / "figures" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    return json.loads((run_dir / "figures" / f"{name}.json").read_text())


@pytest.mark.slow
def test_families_on_a_trained_ddpm_and_an_untrained_vdm(digits, ddpm, tmp_path):
    res = evaluate(ddpm, *digits, _tiny_cfg(tmp_path), run_dir=tmp_path / "ddpm")
    print(res["schedule"], res["ddim_steps"], res["memorisation"]["copy_fraction"])
    assert "errors" not in res, res.get("errors")
    # DDPM linear betas: gamma(0) = -inf (written as null), gamma(1/T) = log(beta_1 / (1 - beta_1))
    s = res["schedule"]
    assert s["gamma_0"] is None and s["learnable"] is False and s["kind"] == "ddpm-linear"
    assert s["gamma_first_step"] == pytest.approx(math.log(1e-4 / (1 - 1e-4)), abs=1e-9)
    assert s["gamma_1"] == pytest.approx(float(ddpm.schedule(1.0)), abs=1e-12)
    fids = res["ddim_steps"]
    assert set(fids) == {"2", "10"} and all(v > 0 for v in fids.values())
    assert fids["10"] < fids["2"], fids  # two DDIM steps from noise give blobs
    assert res["ddim_steps_info"]["n_samples"] == 150
    assert 0 <= res["memorisation"]["copy_fraction"] <= 1
    assert _figure_meta(tmp_path / "ddpm", "schedule")["section"] == "Diffusion"
    assert _figure_meta(tmp_path / "ddpm", "ddim_steps")["section"] == "Diffusion"
    _figure_meta(tmp_path / "ddpm", "ddim_steps_samples")
    assert _figure_meta(tmp_path / "ddpm", "memorisation_hist")["section"] == "Memorisation"
    assert {"schedule", "ddim_steps", "memorisation_pairs"} <= set(res["figures"])

    torch.manual_seed(0)
    vdm = build_method("vdm", SHAPE, unet={"base_channels": 8, "channel_mults": (1,)}).eval()
    res = evaluate(vdm, *digits, _tiny_cfg(tmp_path, n_samples=130), run_dir=tmp_path / "vdm")
    assert "errors" not in res, res.get("errors")
    s = res["schedule"]  # VDM's learned line starts at its initial endpoints
    assert s["learnable"] is True and s["kind"] == "learned-linear"
    assert s["gamma_0"] == pytest.approx(-13.3) and s["gamma_1"] == pytest.approx(5.0)
    assert set(res["ddim_steps"]) == {"2", "10"}
    assert "Learned" in _figure_meta(tmp_path / "vdm", "schedule")["caption"]


def test_families_skip_what_a_method_lacks(digits, tmp_path):
    torch.manual_seed(0)
    vae = build_method("vae", SHAPE, latent_dim=4, width=8).eval()
    assert method_schedule(vae) is None and not takes_sampler_and_steps(vae)
    cfg = EvalConfig(metrics=("schedule", "ddim_steps", "memorisation"), n_samples=50)
    res = evaluate(vae, *digits, cfg, run_dir=tmp_path)
    assert "schedule" not in res and "ddim_steps" not in res and "errors" not in res
    assert res["memorisation"]["num_samples"] == 50  # a VAE samples: the check applies
    assert not (tmp_path / "figures" / "schedule.png").exists()
    assert set(res["figures"]) == {"samples", "memorisation_pairs", "memorisation_hist"}


def test_bad_ddim_steps_is_reported_as_a_user_error(digits, tmp_path):
    torch.manual_seed(0)
    m = build_method("ddpm", SHAPE, unet={"base_channels": 8, "channel_mults": (1,)}, T=50).eval()
    cfg = EvalConfig(metrics=("ddim_steps",), ddim_steps=(0, 5), fidnet_path=str(tmp_path / "x"))
    res = evaluate(m, *digits, cfg)
    assert "ddim_steps" in res["errors"]["ddim_steps"] and "fix" in res["errors"]["ddim_steps"]
