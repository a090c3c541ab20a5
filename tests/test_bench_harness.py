"""The benchmark harness (benchmarks/harness.py): slopes, tables, records and the HTML page."""

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import harness as H  # noqa: E402


def test_loglog_slope_recovers_exponents():
    xs = [1.0, 2.0, 4.0, 8.0, 16.0]
    assert H.loglog_slope(xs, [3 * x**1.5 for x in xs]) == pytest.approx(1.5)
    assert H.loglog_slope(xs, [0.2 for _ in xs]) == pytest.approx(0.0)


def test_interleaved_times_each_function_in_alternation():
    calls = []
    sec = H.interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                        torch.device("cpu"), reps=3, warmup=1)  # fmt: skip
    assert calls == ["a", "b"] + ["a", "b"] * 3 and set(sec) == {"a", "b"}
    assert all(v >= 0 for v in sec.values())


def test_interleaved_inner_calls_are_timed_one_by_one():
    """inner={"b": 3}: b runs 3 times at each turn and its median is over every call, so one
    slow call in each turn (a neighbour's burst) does not move it."""
    import time

    calls = []

    def b():
        calls.append("b")
        if calls[-2:] == ["a", "b"]:  # the first b of each turn is slow
            time.sleep(0.05)

    sec = H.interleaved({"a": lambda: calls.append("a"), "b": b}, torch.device("cpu"),
                        reps=2, warmup=0, inner={"b": 3})  # fmt: skip
    assert calls == ["a", "b", "b", "b"] * 2
    assert sec["b"] < 0.01  # a mean of each turn's calls would be about 0.017


def test_inside_times_the_inner_calls_apart_from_the_outer_one(monkeypatch):
    """A fake clock: each outer step takes 1 s, each inner call 10 s. Every 4th of 10 steps
    runs inner, and the outer time excludes those calls exactly."""
    clock = [0.0]
    monkeypatch.setattr(H.time, "perf_counter", lambda: clock[0])
    calls = []

    def outer(progress):
        for k in range(10):
            clock[0] += 1.0
            calls.append("step")
            progress(k + 1, 10)

    def inner():
        clock[0] += 10.0
        calls.append("inner")

    sec, inner_sec = H.inside(outer, inner, every=4, device=torch.device("cpu"))
    assert sec == 10.0 and inner_sec == [10.0, 10.0]
    assert calls == ["step"] * 4 + ["inner"] + ["step"] * 4 + ["inner"] + ["step"] * 2


def test_record_table_json_and_page(tmp_path):
    rec = H.record("toy", "a vs b", torch.device("cpu"))
    rec["rows"] = [{"impl": "a", "seconds": 1.25}, {"impl": "b", "seconds": 2.5, "extra": 3}]
    rec["ratios"]["b / a"] = 2.0
    rec["targets"]["b / a"] = ">= 1.3"
    rec["plots"].append({"title": "t", "x": [1, 2], "y": {"s": [1.0, 2.0]}, "loglog": True})
    text = H.table(rec["rows"])
    assert text.splitlines()[0].split() == ["impl", "seconds", "extra"]
    path = H.write_record(rec, tmp_path)
    back = json.loads(path.read_text())
    assert back["ratios"] == {"b / a": 2.0} and back["machine"]["threads"] >= 1
    H.render_html([back], tmp_path / "bench.html")
    page = (tmp_path / "bench.html").read_text()
    assert "b / a" in page and "target &gt;= 1.3" in page and "data:image/png;base64" in page


def test_summary_reads_each_ratio_against_its_target():
    assert H.target_met(1.41, ">= 1.3 (diffrep / diffusers images/s)") is True
    assert H.target_met(0.98, ">= 1 (at least as fast)") is False
    assert H.target_met(2e-12, "<= 1e-3") is True and H.target_met(0.06, "<= 0.05") is False
    assert H.target_met(3.0, None) is None and H.target_met(3.0, "-") is None
    a = H.record("a", "x vs y", torch.device("cpu"))
    a["ratios"] |= {"speed": 1.41, "overhead": 0.06, "exponent": 0.88}
    a["targets"] |= {"speed": ">= 1.3", "overhead": "<= 0.05"}
    lines = H.summary_markdown([a]).splitlines()
    assert lines[0].startswith(a["machine"]["cpu"]) and "torch thread" in lines[0]
    assert lines[4:] == ["| a | speed | 1.41 | >= 1.3 | yes |",
                         "| a | overhead | 0.06 | <= 0.05 | NO |",
                         "| a | exponent | 0.88 | - |  |"]  # fmt: skip


def test_plots_draw_bars_a_log2_axis_and_target_lines():
    bars = H.plot_figure({"title": "t", "kind": "bar", "x": ["a", "b", "c"],
                          "y": {"ours": [1.0, 2.0, 3.0], "theirs": [2.0, 2.0, 2.0]},
                          "hlines": {"target": 0.05}}).axes[0]  # fmt: skip
    assert sorted(r.get_height() for r in bars.patches) == [1.0, 2.0, 2.0, 2.0, 2.0, 3.0]
    assert [t.get_text() for t in bars.get_xticklabels()] == ["a", "b", "c"]
    assert [list(ln.get_ydata()) for ln in bars.get_lines()] == [[0.05, 0.05]]
    spec = {"title": "t", "x": {"s": [64, 128, 256], "m": [256]},
            "y": {"s": [1.0, 2.0, 3.0], "m": [2.5]}, "logx": True}  # fmt: skip
    line = H.plot_figure(spec).axes[0]
    assert line.get_xscale() == "log" and line.get_yscale() == "linear"
    assert [list(ln.get_xdata()) for ln in line.get_lines()] == [[64, 128, 256], [256]]


def test_fused_optimizer_option_trains_like_the_default(tmp_path):
    """train.fused_optimizer: the fused AdamW kernel, same maths (weights agree to float error)."""
    from diffrep.data import load_dataset
    from diffrep.methods import build_method
    from diffrep.train import TrainConfig, train

    data = load_dataset("digits", "train[:256]")
    out = {}
    for fused in (False, True):
        torch.manual_seed(0)
        m = build_method("vae", data.shape, latent_dim=4, width=8)
        cfg = TrainConfig(steps=5, batch_size=32, warmup=0, ema=0, tensorboard=False,
                          fused_optimizer=fused, device="cpu")  # fmt: skip
        train(m, data, tmp_path / str(fused), cfg, progress=False)
        out[fused] = torch.cat([p.detach().flatten() for p in m.parameters()])
    assert not torch.equal(out[False], torch.zeros_like(out[False]))
    # Adam's update is ~lr * sign(g) for tiny gradients, so float noise can flip a few of
    # them: every weight within the 5 steps' reach of lr, nearly all within float error
    diff = (out[True] - out[False]).abs()
    assert diff.max() <= 5 * cfg.lr and (diff > 1e-5).float().mean() < 0.01


def test_bench_runs_each_benchmark_in_its_own_process_and_renders_one_page(tmp_path, capsys):
    """bench.py with several benchmarks: one child process each (so one cannot slow the next),
    then one page over all their records."""
    import bench

    out = tmp_path / "bench"
    assert bench.main(["--quick", "--only", "eval_speed", "scaling", "--out", str(out)]) == 0
    recs = [json.loads((out / f"{n}.json").read_text()) for n in ("eval_speed", "scaling")]
    pids = {r["machine"]["pid"] for r in recs}
    assert len(pids) == 2 and bench.os.getpid() not in pids
    page = (out / "bench.html").read_text()
    assert "eval_speed" in page and "scaling" in page
    assert all(r["plots"] for r in recs)  # a plot per benchmark
    assert page.count("data:image/png") == sum(len(r["plots"]) for r in recs)
    summary = (out / "summary.md").read_text()
    assert summary == H.summary_markdown(recs) and summary in capsys.readouterr().out
    assert "| eval_speed | relative FID difference, d=256 |" in summary
    # --render rebuilds both from the records alone, in the benchmarks' order
    (out / "summary.md").unlink()
    assert bench.main(["--render", "--out", str(out)]) == 0
    assert (out / "summary.md").read_text() == summary
    assert bench.main(["--render", "--out", str(tmp_path / "empty")]) == 2
    assert "no benchmark records" in capsys.readouterr().err
    (out / "scaling.json").write_text('{"name": "scal')  # cut short
    assert bench.main(["--render", "--out", str(out)]) == 2
    assert "--only scaling" in capsys.readouterr().err
