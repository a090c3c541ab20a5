"""The CLI with the diffusion methods: train from the shipped configs, eval gives BPD, sample takes
--sampler/--steps, and the report shows samples, the schedule and FID against DDIM steps."""

from __future__ import annotations

import json
import math

import pytest

from diffrep.cli import main

TINY = [
    "--set", "method.unet.base_channels=8", "--set", "method.unet.channel_mults=[1]",
    "--set", "method.sample_steps=5", "--set", "train.steps=20",
    "--set", "train.log_every=10", "--set", "train.warmup=5",
    "--set", "train.tensorboard=false",
]  # fmt: skip


def _error(capsys, argv) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-diffusion")
    out = {}
    for name in ("vdm", "ddpm"):
        out[name] = root / name
        assert main(["train", f"configs/{name}-digits.yaml", "--out", str(out[name]), *TINY]) == 0
    return out


def test_eval_gives_bpd_for_vdm_and_ddpm(runs, capsys):
    for name, run in runs.items():
        sets = ["--set", "eval.metrics=[likelihood, schedule]", "--set", "eval.max_eval=64"]
        assert main(["eval", str(run), *sets]) == 0
        res = json.loads((run / "eval.json").read_text())
        print(name, res["bpd"], res["elbo_terms"], res["schedule"])
        # 20 steps from initialisation: a valid bound, far from good, but finite and positive
        assert math.isfinite(res["bpd"]) and 0 < res["bpd"] < 20, res["bpd"]
        assert res["bound_is_valid"] is True
        assert set(res["elbo_terms"]) >= {"recon", "prior", "diffusion", "total"}
        assert math.isfinite(res["schedule"]["gamma_1"])
    vdm = json.loads((runs["vdm"] / "eval.json").read_text())["schedule"]
    assert vdm["learnable"] and vdm["gamma_0"] < -10  # learned endpoints, near their init


def test_sample_with_ddim_and_bad_sampler_names(runs, tmp_path, capsys):
    for name, run in runs.items():
        png = tmp_path / f"{name}.png"
        argv = ["sample", str(run), "-n", "4", "--sampler", "ddim", "--steps", "5"]
        assert main([*argv, "--out", str(png)]) == 0
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        msg = _error(capsys, ["sample", str(run), "--sampler", "dimm", "--out", str(png)])
        assert "'dimm'" in msg and "ddim" in msg  # names the mistake and the choices
        assert "steps" in _error(capsys, ["sample", str(run), "--steps", "-1", "--out", str(png)])


@pytest.mark.slow
def test_report_shows_samples_schedule_and_ddim_steps(runs, tmp_path):
    run = runs["vdm"]
    sets = [
        "eval.metrics=[likelihood, fid, schedule, ddim_steps, memorisation]",
        "eval.n_samples=130", "eval.ddim_steps=[2, 5]", "eval.max_eval=200",
        "eval.kid_subset_size=100", "eval.kid_subsets=2",
        f"eval.fidnet_cache={tmp_path}", "eval.fidnet_epochs=1",
    ]  # fmt: skip
    assert main(["eval", str(run), *[a for s in sets for a in ("--set", s)]]) == 0
    res = json.loads((run / "eval.json").read_text())
    assert set(res["ddim_steps"]) == {"2", "5"} and "memorisation" in res
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    for title in ("Samples", "Noise schedule", "Sample quality against DDIM steps",
                  "Nearest training images"):  # fmt: skip
        assert title in page, title
    assert "ddim_steps.5" in page  # the numbers are in the metrics table too
