"""Reports: one self-contained HTML page per run, and the comparison table across runs."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from diffrep.errors import UserError
from diffrep.eval.plots import save_figure
from diffrep.eval.suite import evaluate, write_eval
from diffrep.report import compare, render_report, write_report


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory as `diffrep train` + `diffrep eval` leave it (linear-Gaussian fake)."""
    from test_eval_metrics import LinearGaussian, model_data, small_cfg

    d = tmp_path_factory.mktemp("run")
    (d / "config.yaml").write_text("data:\n  name: linear-gaussian\nmethod:\n  name: fake\n")
    (d / "run.json").write_text(json.dumps({"method": "fake", "dataset": "linear-gaussian"}))
    rows = [
        {"step": s, "loss": 10.0 / (1 + s), "lr": 1e-3, "eval": {"bpd": 5 - s / 100}}
        for s in range(0, 200, 10)
    ]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 2')
    cfg = small_cfg(fidnet_cache=str(d / "cache"))
    res = evaluate(LinearGaussian(), model_data(1500, 0), model_data(600, 1), cfg, run_dir=d)
    write_eval(d, res)
    return d


def test_report_is_self_contained_and_shows_every_figure(run_dir):
    # a figure added by some other evaluation shows up without touching the report code
    png = (run_dir / "figures" / "samples.png").read_bytes()
    save_figure(run_dir, "extra_plot", png, "An extra plot", section="Method specific")
    text = render_report(run_dir)
    n_figures = len(list((run_dir / "figures").glob("*.png")))
    imgs = re.findall(r'<img src="data:image/png;base64,', text)
    assert len(imgs) == n_figures + 1  # + training curves
    assert "Method specific" in text and "An extra plot" in text
    assert "probe.linear_acc" in text and "fid.domain" in text and "latent.mi" in text
    assert not re.search(r'(src|href)="(http|//|file:)', text)  # nothing external
    assert "<script" not in text


def test_report_without_eval_json(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"method": "vae", "dataset": "digits"}))
    assert "not evaluated yet" in render_report(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        render_report(tmp_path / "missing")


def test_compare_markdown_csv_json(run_dir, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    ev = json.loads((other / "eval.json").read_text())
    ev["bpd"] += 1.0
    (other / "eval.json").write_text(json.dumps(ev))
    md = compare([run_dir, other], csv_path=tmp_path / "t.csv", plot_path=tmp_path / "c.png")
    lines = md.strip().splitlines()
    assert lines[0] == f"| metric | better, unit | {run_dir.name} | other |"
    bpd_row = next(line for line in lines if line.startswith("| bpd |"))
    cells = [float(c) for c in bpd_row.strip("| ").split(" | ")[2:]]
    assert cells[1] == pytest.approx(cells[0] + 1.0, rel=1e-3)
    rows = list(csv.DictReader((tmp_path / "t.csv").open()))
    assert float(rows[1]["bpd"]) == pytest.approx(float(rows[0]["bpd"]) + 1.0)
    js = json.loads(compare([run_dir, other], fmt="json"))
    assert js[0]["probe.few_label_acc.10"] == ev["probe"]["few_label_acc"]["10"]
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(UserError, match="no eval.json"):
        compare([tmp_path])


def test_comparison_page_has_table_and_every_runs_samples(run_dir, tmp_path):
    from diffrep.report import write_comparison_report

    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    ev = json.loads((other / "eval.json").read_text())
    ev["bpd"] += 1.0  # a bar chart shows only metrics on which the runs differ
    (other / "eval.json").write_text(json.dumps(ev))
    page = write_comparison_report([run_dir, other], tmp_path / "cmp.html").read_text()
    assert "<td>bpd</td>" in page
    assert page.count("data:image/png;base64,") >= 3  # bar chart + two sample grids


def test_comparison_page_shows_the_named_figures_of_every_run(run_dir, tmp_path):
    from diffrep.report import write_comparison_report

    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    ev = json.loads((other / "eval.json").read_text())
    ev["bpd"] += 1.0  # a bar chart shows only metrics on which the runs differ
    (other / "eval.json").write_text(json.dumps(ev))
    figures = ("tsne", "samples")
    page = write_comparison_report([run_dir, other], tmp_path / "c.html", figures=figures)
    text = page.read_text()
    assert text.count("data:image/png;base64,") == 1 + 2 * len(figures)  # + the bar chart
    assert text.index("<h2>t-SNE of the representation</h2>") < text.index("<h2>Samples</h2>")


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Appended to a copy of the page (the report itself has no scripts): records console errors
# and images that failed to decode into the DOM, which --dump-dom prints.
PROBE = """<script>
var errs = [];
window.addEventListener('error', function (e) { errs.push(String(e.message)); }, true);
var orig = console.error; console.error = function () { errs.push([].join.call(arguments, ' '));
  orig.apply(console, arguments); };
window.addEventListener('load', function () {
  var imgs = document.images, bad = 0;
  for (var i = 0; i < imgs.length; i++) if (!imgs[i].complete || imgs[i].naturalWidth === 0) bad++;
  var d = document.createElement('div'); d.id = 'probe';
  d.textContent = JSON.stringify({images: imgs.length, broken: bad, errors: errs});
  document.body.appendChild(d);
});
</script>"""


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed")
def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    page = write_report(run_dir)
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    base = [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(
        [*base, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    m = re.search(r'<div id="probe">(.*?)</div>', dom.stdout)
    assert m, dom.stderr[-2000:]
    res = json.loads(m.group(1).replace("&quot;", '"'))
    n_figures = len(list((run_dir / "figures").glob("*.png")))
    assert res == {"images": n_figures + 1, "broken": 0, "errors": []}
    shot = tmp_path / "report.png"
    out = subprocess.run(
        [
            *base,
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1200,3000",
            f"--screenshot={shot}",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert not re.search(r"CONSOLE.*(error|Uncaught)", out.stderr, re.I), out.stderr[-2000:]
    assert shot.is_file() and shot.stat().st_size > 10_000
    keep = Path(__file__).parent.parent / ".pytest_cache"  # for a look by eye
    if keep.is_dir():
        shutil.copy(shot, keep / "report_screenshot.png")


def test_cli_compare_skips_paths_that_are_not_runs(run_dir, tmp_path, capsys):
    # `diffrep compare runs/demo/*`: the glob also names the demo's report.html and other files
    from diffrep.cli import main

    demo = tmp_path / "demo"
    shutil.copytree(run_dir, demo / "a")
    shutil.copytree(run_dir, demo / "b")
    (demo / "report.html").write_text("<html></html>")
    (demo / "notes").mkdir()
    paths = sorted(str(p) for p in demo.iterdir())
    assert main(["compare", *paths]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0] == "| metric | better, unit | a | b |"
    assert "skipped" in err and "report.html" in err and "notes" in err
    assert main(["compare", str(demo / "report.html")]) == 2
    assert "no run directories" in capsys.readouterr().err


def test_compare_layouts_are_registered():
    from diffrep.report import LAYOUTS

    assert LAYOUTS.names() == ["priors", "runs"]
    with pytest.raises(UserError, match="choose one of: priors, runs"):
        LAYOUTS.build("table9")


def test_write_page_holds_text_and_figures(run_dir, tmp_path):
    from diffrep.report import write_page

    png = (run_dir / "figures" / "samples.png").read_bytes()
    table = "| run | acc |\n|---|---|\n| a<b | 0.98 |"
    out = write_page(
        tmp_path / "page.html",
        "Bench & co",
        [("Table", [table]), ("Figures", [(png, "Samples", "two"), (png, "Again", "")])],
    )
    text = out.read_text()
    assert "Bench &amp; co" in text and "a&lt;b | 0.98" in text  # escaped, as printed
    assert len(re.findall(r'<img src="data:image/png;base64,', text)) == 2
    assert "<script" not in text and text.index("<h2>Table") < text.index("<h2>Figures")
