"""Seed 004 Table 1: the priors layout of `compare` and the benchmark's checkpoint selection."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from diffrep.cli import main
from diffrep.errors import UserError
from diffrep.report import table1, table1_cells, write_table1_report

REPO = Path(__file__).resolve().parents[1]


def _fake_run(root: Path, name: str, args: dict, fid: float, nll: float, bound=False, png=True):
    """A run directory as train + eval leave it: run.json, eval.json, figures/samples.png."""
    d = root / name
    (d / "figures").mkdir(parents=True)
    info = {"method": "vae", "method_args": args, "data_shape": [1, 28, 28], "dataset": "mnist"}
    (d / "run.json").write_text(json.dumps(info))
    ev = {
        "fid": {"domain": fid, "feature_net_sha256": "abc"},
        "nll_iw_nats": nll,
        "nll_iw_k": 16,
        "nll_iw_latent_chain": bound,
    }
    (d / "eval.json").write_text(json.dumps(ev))
    if png:
        from diffrep.eval.plots import image_grid

        grid = image_grid(torch.full((4, 1, 8, 8), 40 * len(name) % 256, dtype=torch.uint8).numpy())
        (d / "figures" / "samples.png").write_bytes(grid)
    return d


@pytest.fixture()
def runs(tmp_path):
    # given out of order, with one (flow, 32) cell missing and one run without a samples grid
    return [
        _fake_run(tmp_path, "d8", {"latent_dim": 8, "prior": "diffusion"}, 30.0, 90.0, True),
        _fake_run(tmp_path, "g32", {"latent_dim": 32}, 25.0, 85.0),  # prior defaults: gaussian
        _fake_run(tmp_path, "g8", {"latent_dim": 8, "prior": "gaussian"}, 40.0, 95.5),
        _fake_run(tmp_path, "f8", {"latent_dim": 8, "prior": "flow"}, 35.0, 92.0, png=False),
        _fake_run(tmp_path, "d32", {"latent_dim": 32, "prior": "diffusion"}, 20.0, 80.25, True),
    ]


def test_table1_rows_are_priors_and_columns_latent_sizes(runs):
    priors, latents, cells = table1_cells(runs)
    assert priors == ["gaussian", "flow", "diffusion"] and latents == [8, 32]
    assert cells[("gaussian", 32)]["fid"] == 25.0 and cells[("diffusion", 8)]["nll_chain"]
    lines = table1(runs).splitlines()
    assert lines[0] == "| prior | Z = 8 | Z = 32 |"
    assert lines[2] == "| gaussian | 40 / 95.5 | 25 / 85 |"
    assert lines[3] == "| flow | 35 / 92 | - |"
    assert lines[4] == "| diffusion | 30 / 90* | 20 / 80.25* |"
    assert "k = 16" in lines[6] and "upper bound" in lines[6] and "* the diffusion" in lines[6]
    assert all(c["nll_is_bound"] for c in cells.values()) and "NOT" not in lines[6]


def test_table1_marks_plugin_nlls_of_old_eval_files_as_not_bounds(tmp_path):
    d = _fake_run(tmp_path, "d8", {"latent_dim": 8, "prior": "diffusion"}, 30.0, 90.0)
    ev = json.loads((d / "eval.json").read_text())
    del ev["nll_iw_latent_chain"]
    ev["nll_iw_nats_is_bound"] = True  # what diffrep wrote before the joint chain weighting
    (d / "eval.json").write_text(json.dumps(ev))
    text = table1([d])
    assert "| diffusion | 30 / 90! |" in text and "NOT a bound" in text


def test_table1_refuses_runs_without_a_place(runs, tmp_path):
    other = _fake_run(tmp_path, "vdm", {"width": 16}, 1.0, 1.0)
    with pytest.raises(UserError, match="latent_dim"):
        table1([*runs, other])
    twin = _fake_run(tmp_path, "g8b", {"latent_dim": 8}, 1.0, 1.0)
    with pytest.raises(UserError, match="prior=gaussian, latent_dim=8"):
        table1([*runs, twin])


def test_cli_priors_layout_and_page_with_grids_side_by_side(runs, tmp_path, capsys):
    page = tmp_path / "t1.html"
    args = ["compare", "--layout", "priors", *map(str, runs), "--html", str(page)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| gaussian | 40 / 95.5 | 25 / 85 |" in out
    text = page.read_text()
    assert text.count('<img src="data:image/png;base64,') == 4  # f8 has no grid
    # the samples table has the table's rows and columns: flow's row holds no image
    flow_row = text.split("<tr><td>flow</td>")[-1].split("</tr>")[0]
    assert "<img" not in flow_row
    assert main(["compare", *map(str, runs)]) == 0  # the default layout is unchanged
    assert "| metric |" in capsys.readouterr().out
    assert main(["compare", "--layout", "priors", "--format", "json", str(runs[0])]) == 2
    assert write_table1_report(runs, tmp_path / "p.html").is_file()


def _benchmark():
    spec = importlib.util.spec_from_file_location(
        "priors_table1", REPO / "benchmarks/priors_table1.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_benchmark_config_is_the_paper_protocol():
    bench = _benchmark()
    args = bench.parse_args(["--T", "100", "--validations", "4"])
    cfg = bench.run_config("diffusion", 32, 400, args)
    assert cfg.method_args["prior_args"] == {"T": 100, "hidden": 128, "depth": 2}
    assert cfg.method_args["latent_dim"] == 32 and cfg.method_name == "vae"
    assert cfg.train.lr == 5e-4 and cfg.train.lr_schedule == "constant" and cfg.train.ema == 0
    assert cfg.train.steps == 400 and cfg.train.eval_every == 100
    assert bench.run_config("flow", 8, 400, args).method_args["prior_args"] == {}
    # the budget is steps (the same on a busy or an idle machine); minutes only when asked
    default = bench.parse_args([])
    assert default.steps == 500 and default.minutes is None
    assert bench.main(["--steps", "0"]) == 2 and bench.main(["--minutes", "-1"]) == 2


def test_benchmark_keeps_the_best_validation_weights(tmp_path):
    """The checkpoint holds the weights of the lowest validation -ELBO, not the last ones."""
    import dataclasses

    from diffrep.checkpoint import checkpoint_step
    from diffrep.data import load_dataset, to_model_input
    from diffrep.report import read_metrics
    from diffrep.runs import load_run

    bench = _benchmark()
    data = load_dataset("digits", "train[:200]")
    cfg = bench.run_config("gaussian", 4, 12, bench.parse_args(["--validations", "6"]))
    # lr 0.05 makes the validation curve noisy, so the best step is usually not the last
    train_cfg = dataclasses.replace(cfg.train, lr=0.05, batch_size=16, device="cpu")
    cfg = dataclasses.replace(cfg, train=train_cfg, method={**cfg.method, "width": 8})
    x_val = to_model_input(torch.from_numpy(load_dataset("digits", "test[:64]").images))
    method, best, summary = bench.train_and_select(cfg, data, x_val, tmp_path / "run")
    vals = {
        r["step"]: r["eval"]["val_neg_elbo"]
        for r in read_metrics(tmp_path / "run/metrics.jsonl")
        if "eval" in r
    }
    assert sorted(vals) == [2, 4, 6, 8, 10, 12] and summary["step"] == 12
    step = min(vals, key=vals.get)
    assert best["step"] == step and best["val"] == pytest.approx(vals[step])
    assert checkpoint_step(tmp_path / "run/checkpoint") == step
    loaded, _ = load_run(tmp_path / "run")
    torch.manual_seed(1234)
    again = loaded.elbo(x_val[:250])["total"].mean().item()
    assert again == pytest.approx(vals[step], rel=1e-5)
