"""Quality benchmarks budget training steps by default (a shared machine makes a time budget
measure the neighbours); minutes only when asked, and a bad budget is one line and exit 2."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name, steps", [("priors_table1", 500), ("representations", 7500)])
def test_step_budget_by_default_and_bad_budgets_refused(name, steps):
    bench = _module(name)
    args = bench.parse_args([])
    assert args.steps == steps and args.minutes is None
    assert bench.parse_args(["--minutes", "2"]).minutes == 2.0
    assert bench.main(["--steps", "0"]) == 2 and bench.main(["--minutes", "0"]) == 2


def test_vdm_benchmark_refuses_a_bad_budget():
    cmd = [sys.executable, str(BENCH / "vdm_mnist.py"), "--steps", "-1"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--steps must be >= 1" in r.stdout
    assert "Traceback" not in r.stderr


def test_vdm_benchmark_names_an_unknown_option_in_one_line(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, str(BENCH / "vdm_mnist.py"), "--steps", "2", "--out", str(out),
           "--set", "method.bogus=1"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "unknown option 'bogus'" in r.stderr
    assert "Traceback" not in r.stderr and not out.exists()


def test_representations_names_unknown_rows_in_one_line(capsys, tmp_path):
    bench = _module("representations")
    if bench.load_data() is None:
        pytest.skip("MNIST is not in ../shared/data/mnist")
    with pytest.raises(SystemExit) as e:
        bench.main(["--rows", "nope", "--steps", "1", "--out", str(tmp_path)])
    assert e.value.code == 2 and "unknown rows ['nope']" in capsys.readouterr().err


def test_representations_view_option_reaches_the_drl_rows_and_a_bad_one_is_refused(capsys):
    bench = _module("representations")
    args = bench.parse_args(["--view", "shift=3,rotate=10"])
    assert bench.row_spec("drl", args)[1]["view"] == {"shift": 3, "rotate": 10.0}
    assert bench.row_spec("drl-time", args)[1]["view"] == {"shift": 3, "rotate": 10.0}
    assert "view" not in bench.row_spec("drl-no-view", args)[1]
    assert "view" not in bench.row_spec("vae", args)[1]
    assert "view" not in bench.row_spec("drl", bench.parse_args(["--view", "none"]))[1]
    with pytest.raises(SystemExit) as e:
        bench.parse_args(["--view", "shfit=2"])
    assert e.value.code == 2 and "unknown option(s) ['shfit']" in capsys.readouterr().err


def test_every_vae_vdm_collapse_run_is_a_valid_config_that_builds():
    from diffrep.methods import build_method

    bench = _module("vae_vdm_collapse")
    for name in bench.RUNS:
        cfg = bench.run_config(name, 400)
        assert cfg.train.steps == 400, name
        build_method(cfg.method_name, (1, 28, 28), **cfg.method_args)  # a bad argument raises
    aux = bench.run_config("drl-aux", 400).method_args
    assert aux["kl_warmup_steps"] == 0 and aux["aux_weight"] > 0 and aux["view"]
    assert aux["unet"]["cond_map"] and aux["unet"]["base_channels"] == 16  # on the config's
    assert bench.run_config("cond-map", 400).method_args["kl_warmup_steps"] == 100


def test_representations_vae_vdm_aux_row_is_drl_aux_at_this_tables_sizes():
    from diffrep.methods import build_method

    bench = _module("representations")
    args = bench.parse_args([])
    method, margs = bench.row_spec("vae_vdm-aux", args)
    assert method == "vae_vdm" and margs["latent_dim"] == args.code_dim
    assert margs["aux_weight"] > 0 and margs["aux_unet"] and margs["view"] == args.view
    assert margs["unet"] == bench.row_spec("vae_vdm", args)[1]["unet"]  # the table's U-Net
    assert "aux_weight" not in bench.row_spec("vae_vdm", args)[1]
    build_method(method, (1, 28, 28), **margs)  # a bad argument raises
    assert {"vae_vdm", "vae_vdm-aux"} <= set(bench.selected_rows(args))
