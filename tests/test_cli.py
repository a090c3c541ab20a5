"""The command line: fast help, one-line errors with exit code 2, and a tiny end-to-end run."""

import json
import subprocess
import sys

import pytest
import torch

from diffrep.cli import main

TINY = [
    "--set", "method.latent_dim=4", "--set", "method.width=8",
    "--set", "train.steps=30", "--set", "train.log_every=10", "--set", "train.warmup=5",
]  # fmt: skip


def test_help_and_version_do_not_import_torch():
    code = (
        "import sys\n"
        "from diffrep.cli import main\n"
        "try:\n    main(['--version'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported on the --version path'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("diffrep ")


def _error(capsys, argv):
    capsys.readouterr()  # drop what earlier commands printed
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err  # one message, no noise
    return lines[0]


def test_user_mistakes_exit_2_with_one_message(tmp_path, capsys):
    msg = _error(capsys, ["train", str(tmp_path / "nope.yaml")])
    assert "not found" in msg
    cfg = tmp_path / "c.yaml"
    cfg.write_text("method:\n  name: vae\n  latent: 3\n")
    assert "latent_dim" in _error(capsys, ["train", str(cfg), "--out", str(tmp_path / "r")])
    assert "KEY=VALUE" in _error(capsys, ["train", str(cfg), "--set", "train.steps"])
    assert "not a diffrep run" in _error(capsys, ["eval", str(tmp_path)])
    assert "does not exist" in _error(capsys, ["sample", str(tmp_path / "missing")])
    assert "unknown dataset" in _error(capsys, ["data", "info", "mnsit"])
    cfg.write_text("method:\n  name: vae\n  beta: -1\n")
    assert "method.beta=-1" in _error(capsys, ["train", str(cfg), "--out", str(tmp_path / "r")])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "vae"
    assert main(["train", "configs/vae-digits.yaml", "--out", str(out), *TINY]) == 0
    return out


def test_train_writes_a_complete_run_and_refuses_to_overwrite(run_dir, capsys):
    for name in ("config.yaml", "run.json", "metrics.jsonl", "checkpoint/model.safetensors"):
        assert (run_dir / name).is_file(), name
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 30
    groups = json.loads((run_dir / "run.json").read_text())["param_groups"]
    assert [(g["name"], g["lr_scale"]) for g in groups] == [("all", 1.0)] and groups[0]["n_params"]
    msg = _error(capsys, ["train", "configs/vae-digits.yaml", "--out", str(run_dir), *TINY])
    assert "--resume" in msg


def test_resume_continues_to_more_steps(run_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    argv = ["train", "configs/vae-digits.yaml", "--out", str(copy), *TINY, "--resume"]
    assert main([*argv, "--set", "train.steps=40"]) == 0
    rows = [json.loads(line) for line in (copy / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 40


def test_the_printed_resume_command_resumes_a_run_made_with_overrides(run_dir, tmp_path):
    import shlex
    import shutil

    from diffrep.cli import resume_command

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    assert (
        resume_command("configs/vae-digits.yaml", copy, []).split()[2] == "configs/vae-digits.yaml"
    )
    argv = shlex.split(resume_command("configs/vae-digits.yaml", copy, TINY))[1:]
    assert argv[1] == str(copy / "config.yaml")  # the run's own settings, overrides included
    assert main([*argv, "--set", "train.steps=40"]) == 0
    rows = [json.loads(line) for line in (copy / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 40


def test_eval_sample_and_corrupt_checkpoint(run_dir, tmp_path, capsys):
    sets = ["--set", "eval.metrics=[likelihood, probe]", "--set", "eval.iw_samples=4",
            "--set", "eval.max_eval=100", "--set", "eval.few_label_sizes=[10]"]  # fmt: skip
    assert main(["eval", str(run_dir), *sets]) == 0
    result = json.loads((run_dir / "eval.json").read_text())
    assert 0 < result["bpd"] < 8.5  # the 8-bit data: a trained model beats ~8 bits/dim
    assert 0.1 <= result["probe"]["linear_acc"] <= 1.0

    png = tmp_path / "s.png"
    assert main(["sample", str(run_dir), "-n", "9", "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    (broken / "checkpoint" / "model.safetensors").write_bytes(b"garbage")
    (broken / "checkpoint" / "ema.safetensors").write_bytes(b"garbage")
    assert "checkpoint" in _error(capsys, ["sample", str(broken), "-n", "2", "--out", str(png)])


def test_sample_writes_beside_the_run_by_default(run_dir, tmp_path, monkeypatch, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert main(["sample", str(run), "-n", "4"]) == 0
    assert (run / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(cwd.iterdir()) == []  # nothing left where the command was typed
    assert str(run / "samples.png") in capsys.readouterr().err


def test_fit_prior_makes_a_two_stage_run_that_eval_and_sample_use(run_dir, tmp_path, capsys):
    from diffrep.runs import load_run

    out = tmp_path / "vae-flow"
    argv = ["fit-prior", str(run_dir), "--prior", "flow", "--steps", "60", "--out", str(out)]
    assert main([*argv, "--set", "prior.transforms=2"]) == 0
    src, _ = load_run(run_dir)
    two, cfg = load_run(out)
    assert cfg.method["prior"] == "flow" and cfg.method["prior_args"] == {"transforms": 2}
    assert type(two.prior).__name__ != type(src.prior).__name__
    for part in ("encoder", "decoder"):  # stage one is frozen: identical weights
        a, b = getattr(src, part).state_dict(), getattr(two, part).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), part
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 60 and rows[-1]["prior_fit_loss"] < rows[0]["prior_fit_loss"]
    sets = ["--set", "eval.metrics=[likelihood]", "--set", "eval.iw_samples=4",
            "--set", "eval.max_eval=100"]  # fmt: skip
    assert main(["eval", str(out), *sets]) == 0
    assert 0 < json.loads((out / "eval.json").read_text())["bpd"] < 8.5
    assert main(["sample", str(out), "-n", "4", "--out", str(tmp_path / "s.png")]) == 0

    assert "already holds" in _error(capsys, argv)
    bad = ["fit-prior", str(run_dir), "--out", str(tmp_path / "x")]
    assert "unknown prior 'flw'" in _error(capsys, [*bad, "--prior", "flw"])
    assert "unknown option 'tranforms'" in _error(
        capsys, [*bad, "--prior", "flow", "--set", "prior.tranforms=2"]
    )


def test_fit_prior_on_any_encoder_wraps_it_in_latent_prior(tmp_path, capsys):
    # a dae has codes but no latent prior: fit-prior makes a latent_prior run around its weights
    from diffrep.priors.fit import encode_all
    from diffrep.runs import load_run

    cfg = tmp_path / "dae.yaml"
    cfg.write_text("data: {name: digits}\nmethod: {name: dae, code_dim: 3, width: 8}\n")
    dae = tmp_path / "dae"
    steps = ["--set", "train.steps=10", "--set", "train.log_every=5", "--set", "train.warmup=2"]
    assert main(["train", str(cfg), "--out", str(dae), *steps]) == 0
    out = tmp_path / "dae-gauss"
    assert main(["fit-prior", str(dae), "--prior", "diffusion", "--set", "prior.T=25",
                 "--steps", "30", "--out", str(out)]) == 0  # fmt: skip
    base, _ = load_run(dae)
    two, cfg2 = load_run(out)
    assert cfg2.method_name == "latent_prior" and cfg2.method["base"] == "dae"
    assert cfg2.method["code_dim"] == 3 and cfg2.method["base_args"]["width"] == 8
    x0 = torch.rand(5, 1, 8, 8) * 2 - 1
    torch.testing.assert_close(two.encode(x0), base.encode(x0))  # the encoder is unchanged
    assert type(two.prior).__name__ == "DiffusionPrior" and not two.can("sample")
    codes = encode_all(two, x0)
    assert codes.shape == (5, 3) and torch.isfinite(two.prior.nll_terms(codes)["total"]).all()
    sets = ["--set", "eval.metrics=[probe]", "--set", "eval.max_eval=100",
            "--set", "eval.few_label_sizes=[10]", "--set", "eval.tsne_points=2"]  # fmt: skip
    assert main(["eval", str(out), *sets]) == 0
    assert 0.3 < json.loads((out / "eval.json").read_text())["probe"]["linear_acc"] <= 1.0


def test_data_list_and_info(capsys):
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("digits", "mnist", "shapes", "folder", "npz", "cifar10"):
        assert name in out
    assert main(["data", "info", "digits"]) == 0
    assert "8" in capsys.readouterr().out
