"""Faults and bad input at the command line (issue 16): every command, as a new user meets it.

Numbered sections follow the issue's failures (each test failed before its fix); the others
keep what already worked (bad configs, bad data roots, damaged and malicious checkpoints,
missing Inception weights, --help/--version without torch, the same seed -> the same eval.json).
Method-generic faults (checkpoints, NaN losses, exact resume across signals, sizes of 0) are
parametrised over the METHODS registry in test_reliability_methods.py.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from diffrep.cli import EXIT_INTERRUPTED, main

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "vae-digits.yaml")
TINY = [
    "--set", "method.latent_dim=4", "--set", "method.width=8", "--set", "train.batch_size=16",
    "--set", "train.steps=12", "--set", "train.log_every=4", "--set", "train.warmup=2",
]  # fmt: skip
EVAL = ["--set", "eval.metrics=[likelihood]", "--set", "eval.iw_samples=2",
        "--set", "eval.iw_max_examples=20", "--set", "eval.max_eval=60"]  # fmt: skip
ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False
ENV = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}


def _error(capsys, argv, code: int = 2) -> str:
    """Run the CLI, expect exit `code` and exactly one message line without a traceback."""
    capsys.readouterr()
    assert main(argv) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("rel") / "vae"
    assert main(["train", CONFIG, "--out", str(out), *TINY]) == 0
    return out


@pytest.fixture
def run(trained, tmp_path):
    """A private copy of the trained run (tests damage it)."""
    dst = tmp_path / "run"
    shutil.copytree(trained, dst)
    return dst


def _snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _wait_for(path: Path, what, timeout: float = 120.0) -> None:
    t0 = time.monotonic()
    while not (path.is_file() and what(path.read_text())):
        assert time.monotonic() - t0 < timeout, f"{path} never showed progress"
        time.sleep(0.05)


# ------------------------------------------------------------------ 1. a busy machine

SPY = textwrap.dedent(
    """
    import os, sys
    os.environ.pop("OMP_WAIT_POLICY", None)
    seen = []
    class Spy:  # records OMP_WAIT_POLICY at the moment torch is first imported
        def find_spec(self, name, path=None, target=None):
            if name == "torch" and not seen:
                seen.append(os.environ.get("OMP_WAIT_POLICY"))
    sys.meta_path.insert(0, Spy())
    from diffrep.cli import main
    code = main(["train", "missing.yaml"])
    print(seen, code)
    """
)


def test_passive_openmp_waiting_is_set_before_torch_loads():
    env = {k: v for k, v in ENV.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run(
        [sys.executable, "-c", SPY], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.stdout.split() == ["['PASSIVE']", "2"], out.stderr


def test_the_users_wait_policy_wins_and_threads_default_to_the_measured_count(monkeypatch):
    from diffrep.cli import DEFAULT_THREADS

    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    before = torch.get_num_threads()
    try:
        assert main(["train", "missing.yaml", "--threads", "2"]) == 2
        assert torch.get_num_threads() == 2 and os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
        assert main(["train", "missing.yaml"]) == 2
        assert torch.get_num_threads() == DEFAULT_THREADS
    finally:
        torch.set_num_threads(before)


def test_help_and_version_do_not_load_torch():
    code = (
        "import sys\nfrom diffrep.cli import main\n"
        "for argv in (['--version'], ['--help'], ['train', '--help']):\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
        "assert 'torch' not in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "--threads" in out.stdout and "exit status" in out.stdout


def test_threads_must_be_positive(capsys):
    assert "--threads" in _error(capsys, ["train", CONFIG, "--threads", "0"])


# ------------------------------------------------------------------ 2. interruption


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM])  # SIGINT: the demo test below
def test_a_signal_stops_train_with_exit_130_and_resume_finishes(tmp_path, sig):
    out = tmp_path / "r"
    argv = [*TINY, "--set", "train.steps=3000", "--set", "train.log_every=5"]
    cmd = [sys.executable, "-m", "diffrep.cli", "train", CONFIG, "--out", str(out), *argv]
    proc = subprocess.Popen(cmd, env=ENV, stderr=subprocess.PIPE, text=True)
    _wait_for(out / "metrics.jsonl", lambda t: t.count("\n") >= 2)
    proc.send_signal(sig)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == EXIT_INTERRUPTED, err
    assert "interrupted at step" in err and "--resume" in err
    assert "done:" not in err and "next: diffrep eval" not in err
    from diffrep.checkpoint import checkpoint_step

    done = checkpoint_step(out / "checkpoint")
    assert 0 < done < 3000
    more = [*argv, "--set", f"train.steps={done + 10}", "--resume"]  # short, but resumed
    assert main(["train", CONFIG, "--out", str(out), *more]) == 0
    assert checkpoint_step(out / "checkpoint") == done + 10


DEMO = textwrap.dedent(
    """
    import sys
    from diffrep.config import config_from_dict

    PRIORS = ("gaussian", "diffusion")
    PRIOR_ARGS = {"diffusion": {"T": 25, "hidden": 16, "depth": 1, "emb_dim": 8}}

    def tiny_config(prior, steps, device):  # the demo's flow at test size
        return config_from_dict({
            "method": {"name": "vae", "latent_dim": 4, "width": 8, "prior": prior,
                       "prior_args": PRIOR_ARGS.get(prior, {})},
            "train": {"steps": steps, "log_every": 5, "ckpt_every": steps, "batch_size": 16},
            "eval": {"metrics": ["likelihood"], "iw_samples": 2, "iw_max_examples": 20,
                     "max_eval": 50},
        })

    if __name__ == "__main__":
        import diffrep.demo as demo
        from diffrep.cli import main

        demo.PRIORS, demo.PRIOR_ARGS, demo.demo_config = PRIORS, PRIOR_ARGS, tiny_config
        sys.exit(main(sys.argv[1:]))
    """
)


@pytest.mark.slow
def test_ctrl_c_stops_the_whole_demo_and_a_rerun_resumes_to_full_length(tmp_path, monkeypatch):
    from diffrep.checkpoint import checkpoint_step

    script = tmp_path / "tiny_demo.py"
    script.write_text(DEMO)
    out = tmp_path / "demo"
    cmd = [sys.executable, str(script), "demo", "--out", str(out), "--steps", "4000"]
    proc = subprocess.Popen(cmd, env=ENV, stderr=subprocess.PIPE, text=True)
    _wait_for(out / "gaussian" / "metrics.jsonl", lambda t: t.count("\n") >= 2)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == EXIT_INTERRUPTED, err
    first = out / "gaussian"
    done = checkpoint_step(first / "checkpoint")
    assert done < 4000
    assert not (first / "eval.json").exists()  # not evaluated as if it had finished
    assert not (out / "diffusion").exists()  # the whole demo stopped, not just one model

    # the rerun (in this process, same patches) asks for fewer steps to stay short, still more
    # than the interrupted model reached: it must resume that model to the full length
    ns: dict = {"__name__": "tiny_demo"}
    exec(DEMO, ns)
    for name, attr in (("PRIORS", "PRIORS"), ("PRIOR_ARGS", "PRIOR_ARGS"),
                       ("demo_config", "tiny_config")):  # fmt: skip
        monkeypatch.setattr(f"diffrep.demo.{name}", ns[attr])
    full = done + 20
    assert main(["demo", "--out", str(out), "--steps", str(full)]) == 0
    for prior in ("gaussian", "diffusion"):
        assert checkpoint_step(out / prior / "checkpoint") == full
        assert json.loads((out / prior / "eval.json").read_text())["bpd"] > 0
    assert (out / "report.html").is_file()


def test_demo_names_overwrite_for_a_blocked_run_and_overwrite_retrains(
    tmp_path, monkeypatch, capsys
):
    from diffrep.checkpoint import checkpoint_step

    ns: dict = {"__name__": "tiny_demo"}
    exec(DEMO, ns)
    for name, attr in (("PRIORS", "PRIORS"), ("PRIOR_ARGS", "PRIOR_ARGS"),
                       ("demo_config", "tiny_config")):  # fmt: skip
        monkeypatch.setattr(f"diffrep.demo.{name}", ns[attr])
    out = tmp_path / "demo"
    (out / "gaussian").mkdir(parents=True)
    (out / "gaussian" / "metrics.jsonl").write_text('{"step": 1}\n')  # a run without weights
    assert main(["demo", "--out", str(out), "--steps", "6"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "--overwrite" in err.splitlines()[-1]
    assert main(["demo", "--out", str(out), "--steps", "6", "--overwrite"]) == 0
    first = json.loads((out / "gaussian" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] != 1 and checkpoint_step(out / "gaussian" / "checkpoint") == 6
    # a finished demo is reused without --overwrite, retrained from scratch with it
    stamp = (out / "diffusion" / "eval.json").stat().st_mtime_ns
    assert main(["demo", "--out", str(out), "--steps", "6"]) == 0
    assert (out / "diffusion" / "eval.json").stat().st_mtime_ns == stamp
    assert main(["demo", "--out", str(out), "--steps", "6", "--overwrite"]) == 0
    assert (out / "diffusion" / "eval.json").stat().st_mtime_ns != stamp


# ------------------------------------------------------------------ 3. a refused --resume


def _npz_root(tmp_path: Path, channels: int) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / f"data{channels}.npz"
    np.savez(path, x=rng.integers(0, 256, (100, channels, 8, 8), dtype=np.uint8))
    return path


@pytest.mark.parametrize("change", ["latent", "dataset", "rgb"])
def test_a_refused_resume_writes_nothing_and_the_run_still_samples(run, tmp_path, capsys, change):
    npz = ["--set", "data.name=npz", "--set", "data.options.path={}"]
    sets = {
        "latent": ["--set", "method.latent_dim=5"],
        "dataset": [*npz[:3], npz[3].format(_npz_root(tmp_path, 1))],
        "rgb": [*npz[:3], npz[3].format(_npz_root(tmp_path, 3))],
    }[change]
    before = _snapshot(run)
    msg = _error(capsys, ["train", CONFIG, "--out", str(run), *TINY, *sets, "--resume"])
    assert "nothing was changed" in msg and "fix:" in msg
    assert _snapshot(run) == before
    assert main(["sample", str(run), "-n", "4", "--out", str(tmp_path / "s.png")]) == 0


def test_weights_without_a_manifest_are_never_replaced_without_overwrite(run, tmp_path, capsys):
    (run / "checkpoint" / "manifest.json").unlink()
    before = _snapshot(run)
    msg = _error(capsys, ["train", CONFIG, "--out", str(run), *TINY, "--resume"])
    assert "--overwrite" in msg and "drop --resume" not in msg
    msg = _error(capsys, ["train", CONFIG, "--out", str(run), *TINY])
    assert "holds weights" in msg and "--overwrite" in msg
    assert _snapshot(run) == before
    assert main(["train", CONFIG, "--out", str(run), *TINY, "--overwrite"]) == 0
    from diffrep.checkpoint import checkpoint_step

    assert checkpoint_step(run / "checkpoint") == 12


# ------------------------------------------------------------------ 4. output directories


def test_a_plain_directory_is_not_overwritten(tmp_path, capsys):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "config.yaml").write_text("my own notes\n")
    (d / "metrics.jsonl").write_text("{}\n")
    msg = _error(capsys, ["train", CONFIG, "--out", str(d), *TINY])
    assert "not a diffrep run directory" in msg
    assert (d / "config.yaml").read_text() == "my own notes\n"
    assert (d / "metrics.jsonl").read_text() == "{}\n"


def _blocked(tmp_path: Path) -> Path:
    """A path nobody can create: its parent is a regular file."""
    f = tmp_path / "a_file"
    f.write_text("x")
    return f / "sub"


@pytest.mark.parametrize(
    "argv",
    [
        ["train", CONFIG, "--out", "{B}"],
        ["demo", "--out", "{B}"],
        ["fit-prior", "{RUN}", "--prior", "gaussian", "--out", "{B}"],
        ["sample", "{RUN}", "--out", "{B}/x.png"],
        ["compare", "{RUN}", "--csv", "{B}/t.csv"],
        ["compare", "{RUN}", "--plot", "{B}/t.png"],
        ["compare", "{RUN}", "--html", "{B}/t.html"],
    ],
    ids=["train", "demo", "fit-prior", "sample", "csv", "plot", "html"],
)
def test_unwritable_outputs_exit_2_before_the_work(run, tmp_path, capsys, argv):
    blocked = _blocked(tmp_path)
    argv = [a.replace("{B}", str(blocked)).replace("{RUN}", str(run)) for a in argv]
    (run / "eval.json").write_text(json.dumps({"bpd": 1.0}))
    assert "a file, not a directory" in _error(capsys, argv)


@pytest.mark.skipif(ROOT, reason="root writes into read-only directories")
@pytest.mark.parametrize("cmd", ["eval", "report", "train"])
def test_read_only_run_directory_exits_2_before_the_work(run, capsys, cmd):
    argv = {
        "eval": ["eval", str(run), *EVAL],
        "report": ["report", str(run)],
        "train": ["train", CONFIG, "--out", str(run), *TINY, "--set", "train.steps=20", "--resume"],
    }[cmd]
    os.chmod(run, 0o555)
    try:
        assert "not writable" in _error(capsys, argv)
    finally:
        os.chmod(run, 0o755)


def test_sample_creates_missing_directories_and_refuses_other_formats(run, tmp_path, capsys):
    png = tmp_path / "missing" / "dir" / "x.png"
    assert main(["sample", str(run), "-n", "4", "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    msg = _error(capsys, ["sample", str(run), "-n", "4", "--out", str(tmp_path / "x.jpg")])
    assert "PNG" in msg and "*.png" in msg
    assert not (tmp_path / "x.jpg").exists()


# ------------------------------------------------------------------ 5. eval.json


def test_a_failed_eval_keeps_earlier_metrics(run, tmp_path, capsys):
    assert main(["eval", str(run), *EVAL]) == 0
    bpd = json.loads((run / "eval.json").read_text())["bpd"]
    bad = tmp_path / "inception.pt"
    bad.write_bytes(os.urandom(64))
    argv = ["eval", str(run), "--set", "eval.metrics=[inception]",
            "--set", f"eval.inception_weights={bad}"]  # fmt: skip
    assert "inception" in _error(capsys, argv)
    result = json.loads((run / "eval.json").read_text())
    assert result["bpd"] == bpd  # merged, not replaced
    assert "inception" in result["errors"]
    assert main(["eval", str(run), *EVAL]) == 0  # other families: the error stays on record
    assert "inception" in json.loads((run / "eval.json").read_text())["errors"]


def test_nan_weights_are_an_eval_error_not_a_null_bpd(run, capsys):
    from diffrep.checkpoint import checkpoint_step, save_checkpoint
    from diffrep.runs import load_run

    assert main(["eval", str(run), *EVAL]) == 0
    good = json.loads((run / "eval.json").read_text())
    method, _ = load_run(run)
    with torch.no_grad():
        for p in method.parameters():
            p.fill_(float("nan"))
    save_checkpoint(run / "checkpoint", method, None, None, checkpoint_step(run / "checkpoint"))
    msg = _error(capsys, ["eval", str(run), *EVAL])
    assert "likelihood" in msg and "non-finite" in msg
    assert json.loads((run / "eval.json").read_text())["bpd"] == good["bpd"]


def test_the_same_seed_gives_the_same_eval_json(run):
    argv = ["eval", str(run), *EVAL, "--set", "eval.metrics=[likelihood, latent, recon]"]
    assert main(argv) == 0
    first = json.loads((run / "eval.json").read_text())
    (run / "eval.json").unlink()
    assert main(argv) == 0
    second = json.loads((run / "eval.json").read_text())
    first.pop("seconds"), second.pop("seconds")
    assert first == second and first["bpd"] > 0


# ------------------------------------------------------------------ 6. messages, not tracebacks


def _cfg(tmp_path: Path, text: str | bytes) -> str:
    p = tmp_path / "c.yaml"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(p)


def test_config_and_option_mistakes_exit_2_naming_the_value(tmp_path, capsys):
    out = ["--out", str(tmp_path / "r")]
    msg = _error(capsys, ["train", _cfg(tmp_path, "method: vae\n"), *out])
    assert "'vae'" in msg and "name: vae" in msg
    msg = _error(capsys, ["train", _cfg(tmp_path, bytes(range(256)) * 4), *out])
    assert "not text" in msg or "not valid YAML" in msg
    for bad, name in (("method.latent_dim=0", "latent_dim=0"), ("method.width=0", "width=0"),
                      ("method.beta=-1", "beta=-1")):  # fmt: skip
        msg = _error(capsys, ["train", CONFIG, *out, *TINY, "--set", bad])
        assert name in msg and "fix:" in msg
    folder = tmp_path / "file.png"
    folder.write_bytes(b"x")
    msg = _error(capsys, ["train", CONFIG, *out, *TINY, "--set", "data.name=folder",
                          "--set", f"data.options.path={folder}"])  # fmt: skip
    assert "not a directory" in msg
    msg = _error(capsys, ["train", CONFIG, *out, *TINY, "--set", "train.batch_size=100000"])
    assert "batch_size" in msg and "1438" in msg


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_device_cuda_without_cuda(run, tmp_path, capsys):
    for argv in (["sample", str(run), "--out", str(tmp_path / "s.png")], ["eval", str(run)],
                 ["train", CONFIG, "--out", str(tmp_path / "r"), *TINY]):  # fmt: skip
        assert "CUDA is not available" in _error(capsys, [*argv, "--device", "cuda"])


def test_eval_sample_counts_too_small_for_fid_and_kid(run, capsys):
    for bad in ("eval.n_samples=1", "eval.kid_subset_size=1"):
        msg = _error(capsys, ["eval", str(run), *EVAL, "--set", bad])
        assert bad.split(".")[1].split("=")[0] in msg and ">= 2" in msg


def test_kid_warns_about_small_subsets():
    from diffrep.eval.fid import kid_from_features

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(20, 3)), rng.normal(size=(20, 3))
    with pytest.warns(UserWarning, match="KID from subsets of 20"):
        kid_from_features(a, b, subset_size=1000, subsets=2)


# ------------------------------------------------------------------ 7. silently wrong


def test_sampler_options_a_run_does_not_take_are_refused(run, tmp_path, capsys):
    argv = ["sample", str(run), "--out", str(tmp_path / "s.png"), "--sampler", "ddim"]
    msg = _error(capsys, [*argv, "--steps", "50"])
    assert "--sampler" in msg and "--steps" in msg and "'vae'" in msg
    assert not (tmp_path / "s.png").exists()


def test_integers_in_exponent_notation_are_accepted_like_floats(tmp_path):
    from diffrep.config import load_config

    cfg = load_config(_cfg(tmp_path, "train:\n  steps: 1e3\n  lr: 1e-3\n"), ["train.warmup=2e1"])
    assert cfg.train.steps == 1000 and cfg.train.warmup == 20 and cfg.train.lr == 1e-3
    with pytest.raises(Exception, match="expected an integer"):
        load_config(None, ["train.steps=1.5e3x"])


def test_data_info_with_a_missing_split_exits_2(mnist_dir, tmp_path, capsys):
    root = tmp_path / "root" / "mnist"
    root.mkdir(parents=True)
    for f in mnist_dir.glob("t10k-*"):
        shutil.copy(f, root / f.name)
    capsys.readouterr()
    assert main(["data", "info", "mnist", "--root", str(root.parent)]) == 2
    captured = capsys.readouterr()
    assert "test: 10000 images" in captured.out  # what is there is still described
    assert "train" in captured.err.splitlines()[-1] and "fix:" in captured.err


def test_fit_prior_options_take_a_section_like_train(run, capsys):
    msg = _error(capsys, ["fit-prior", str(run), "--prior", "diffusion", "--set", "T=200"])
    assert "prior.T=200" in msg


# ------------------------------------------------------------------ what already worked


def test_bad_data_roots_and_configs_exit_2(tmp_path, capsys):
    out = ["--out", str(tmp_path / "r")]
    msg = _error(capsys, ["train", CONFIG, *out, "--set", "data.name=mnist",
                          "--set", f"data.root={tmp_path / 'nowhere'}"])  # fmt: skip
    assert "not found" in msg and "fix:" in msg
    assert "unknown option" in _error(capsys, ["train", CONFIG, *out, "--set", "train.stepz=3"])
    assert "lr" in _error(capsys, ["train", CONFIG, *out, "--set", "train.lr=-1"])
    assert "unknown method" in _error(capsys, ["train", CONFIG, *out, "--set", "method.name=x"])


@pytest.mark.parametrize("damage", ["zero", "truncate", "random", "other-method"])
def test_damaged_checkpoints_are_refused_by_every_reader(run, tmp_path, capsys, damage):
    model = run / "checkpoint" / "model.safetensors"
    ema = run / "checkpoint" / "ema.safetensors"
    if damage == "zero":
        ema.write_bytes(b"")
    elif damage == "truncate":
        ema.write_bytes(ema.read_bytes()[:100])
    elif damage == "random":
        ema.write_bytes(os.urandom(ema.stat().st_size))
    else:  # a dae run's checkpoint under the vae's run.json
        other = tmp_path / "dae"
        dae = _cfg(tmp_path, "method: {name: dae, code_dim: 4, width: 8}\n"
                             "train: {steps: 2, warmup: 1}\n")  # fmt: skip
        assert main(["train", dae, "--out", str(other)]) == 0
        shutil.rmtree(run / "checkpoint")
        shutil.copytree(other / "checkpoint", run / "checkpoint")
    del model
    for argv in (["sample", str(run), "--out", str(tmp_path / "s.png")],
                 ["eval", str(run), *EVAL]):  # fmt: skip
        assert "fix:" in _error(capsys, argv)


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['DIFFREP_PWNED']}",))


def test_a_malicious_pickle_is_refused_and_never_runs(run, tmp_path, capsys, monkeypatch):
    import hashlib

    marker = tmp_path / "pwned"
    monkeypatch.setenv("DIFFREP_PWNED", str(marker))
    state = run / "checkpoint" / "state.pt"
    data = pickle.dumps(_Payload())
    buf = __import__("io").BytesIO()
    torch.save({"step": _Payload()}, buf, pickle_module=pickle)
    for blob in (data, buf.getvalue()):  # a raw pickle, and one inside torch's zip container
        state.write_bytes(blob)
        manifest = json.loads((run / "checkpoint" / "manifest.json").read_text())
        manifest["files"]["state.pt"] = {"bytes": len(blob),
                                         "sha256": hashlib.sha256(blob).hexdigest()}  # fmt: skip
        (run / "checkpoint" / "manifest.json").write_text(json.dumps(manifest))
        msg = _error(capsys, ["train", CONFIG, "--out", str(run), *TINY, "--set",
                              "train.steps=20", "--resume"])  # fmt: skip
        assert "state.pt" in msg
        assert not marker.exists()


def test_missing_inception_weights_name_the_fix(run, tmp_path, capsys):
    argv = ["eval", str(run), "--set", "eval.metrics=[inception]",
            "--set", f"eval.inception_weights={tmp_path / 'none.pt'}"]  # fmt: skip
    msg = _error(capsys, argv)
    assert "inception" in msg and ("install" in msg or "not found" in msg or "fix" in msg)


# ------------------------------------------------------------------ 10. CI runs the browser test


def _stub(bin_dir: Path, name: str, log: Path) -> None:
    p = bin_dir / name
    p.write_text(f'#!/bin/sh\necho "{name} $*" >> {log}\n')
    p.chmod(0o755)


@pytest.mark.parametrize("ci", [True, False])
def test_ci_installs_chromium_before_make_test(tmp_path, ci):
    repo = tmp_path / "repo"
    (repo / ".ci").mkdir(parents=True)
    shutil.copy(REPO / ".ci" / "run", repo / ".ci" / "run")
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    for name in ("apt-get", "make", "id"):
        _stub(bin_dir, name, log)
    (bin_dir / "id").write_text("#!/bin/sh\necho 0\n")  # root, whoever runs the test
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)}
    if ci:
        env["CI"] = "true"
    out = subprocess.run(["bash", str(repo / ".ci" / "run")], env=env, capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    calls = log.read_text().splitlines()
    if ci and not shutil.which("chromium", path="/usr/bin:/bin"):
        assert any("install" in c and "chromium" in c for c in calls)
        assert calls[-1] == "make test"  # after the install
    if not ci:
        assert calls == ["make test"]
