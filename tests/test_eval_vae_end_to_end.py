"""End to end: a briefly trained VAE on digits -> run_eval -> eval.json -> report."""

from __future__ import annotations

import json

import pytest
import torch

from diffrep.errors import UserError


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    from diffrep.config import config_from_dict
    from diffrep.runs import train_from_config

    torch.set_num_threads(min(2, torch.get_num_threads()))
    out = tmp_path_factory.mktemp("vae") / "run"
    cache = tmp_path_factory.mktemp("cache")
    cfg = config_from_dict(
        {
            "data": {"name": "digits"},
            "method": {"name": "vae", "latent_dim": 8, "width": 16},
            "train": {
                "steps": 300,
                "batch_size": 64,
                "warmup": 20,
                "log_every": 50,
                "ckpt_every": 0,
                "ema": 0.0,
                "device": "cpu",
                "tensorboard": False,
            },
            "eval": {
                "iw_samples": 16,
                "iw_max_examples": 200,
                "n_samples": 300,
                "tsne_points": 300,
                "few_label_draws": 2,
                "kid_subset_size": 150,
                "kid_subsets": 5,
                "fidnet_epochs": 3,
                "fidnet_cache": str(cache),
            },
        }
    )
    train_from_config(cfg, out, log=lambda *_: None)
    return out


@pytest.mark.slow
def test_vae_eval_json_and_report(vae_run):
    from diffrep.report import write_report
    from diffrep.runs import run_eval

    res = run_eval(vae_run)
    on_disk = json.loads((vae_run / "eval.json").read_text())
    assert on_disk["bpd"] == res["bpd"]
    print(
        {k: res[k] for k in ("bpd", "nll_iw_nats", "elbo_nats")},
        res["probe"]["linear_acc"],
        res["fid"]["domain"],
        res["recon"],
        res["latent"]["active_units"],
        res["latent"]["mi"],
    )
    # the IW bound is tighter than the ELBO (k = 16 vs 1), both in nats on the same data scale
    assert res["nll_iw_nats"] < res["elbo_nats"] + 1.0
    assert res["bound_is_valid"] is True and res["nll_iw_latent_chain"] is False
    # 300 steps already give a representation far above chance (10 classes)
    assert res["probe"]["linear_acc"] > 0.6 and res["probe"]["knn_acc"] > 0.6
    assert set(res["probe"]["few_label_acc"]) == {"10", "100", "1000"}
    assert 0 < res["latent"]["active_units"] <= 8 and res["latent"]["mi"] > 0.5
    assert len(res["latent"]["kl_per_dim"]) == 8
    assert res["fid"]["domain"] > 0 and len(res["fid"]["feature_net_sha256"]) == 64
    assert 0 < res["recon"]["ssim"] <= 1 and res["recon"]["psnr"] > 10
    page = write_report(vae_run).read_text()
    assert page.count("data:image/png;base64,") == len(res["figures"]) + 1


def test_inception_without_weights_fails_after_writing_the_rest(vae_run):
    from diffrep.eval import EvalConfig
    from diffrep.runs import run_eval

    cfg = EvalConfig(metrics=("recon", "inception"), max_eval=100, grid_images=8)
    with pytest.raises(UserError, match="inception_weights"):
        run_eval(vae_run, cfg=cfg)
    res = json.loads((vae_run / "eval.json").read_text())
    assert "recon" in res and "inception" in res["errors"]
