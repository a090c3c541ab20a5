"""Tables a reader can read: grouped metrics with directions and units, bookkeeping last, no
constant bar panels, training steps in every comparison, the KL caveat of learned priors."""

from __future__ import annotations

import json

from diffrep import metric_info
from diffrep.report import _bar_table, compare, compare_table, ordered_keys, render_report

EV = {
    "bpd": 3.7,
    "nll_iw_nats": 160.0,
    "nll_iw_k": 16,
    "bound_is_valid": True,
    "n_test": 359,
    "elbo_terms": {"recon": 150.0, "kl": 12.0, "total": 162.0},
    "probe": {"linear_acc": 0.93, "linear_C": 0.1, "feature_dim": 16},
    "latent": {"kl_total": 12.5, "active_units": 8, "mi": 5.8, "mi_max": 5.88, "latent_dim": 16},
    "recon": {"mse": 0.01, "psnr": 21.0, "ssim": 0.9},
    "fid": {"domain": 13.0, "feature_net_sha256": "ab" * 32, "n_samples": 2000},
    "kid": {"domain": 0.01, "domain_std": 0.001},
}


def _run(root, name, prior, steps, **changes):
    d = root / name
    (d / "checkpoint").mkdir(parents=True)
    info = {"method": "vae", "dataset": "digits", "method_args": {"prior": prior}}
    (d / "run.json").write_text(json.dumps(info))
    ev = json.loads(json.dumps(EV))
    for k, v in changes.items():
        ev[k] = v
    (d / "eval.json").write_text(json.dumps(ev))
    (d / "checkpoint" / "manifest.json").write_text(json.dumps({"step": steps, "files": {}}))
    return d


def test_metric_groups_directions_and_units():
    i = metric_info.info
    assert i("bpd") == metric_info.MetricInfo("likelihood", "lower", "bits/dim")
    assert i("probe.few_label_acc.100").better == "higher"
    assert i("probe.factors.scale.r2").better == "higher"
    assert i("fid.domain").better == "lower" and i("kid.domain_std").better == ""
    assert i("recon.psnr").unit == "dB" and i("recon.ssim").better == "higher"
    for k in ("fid.feature_net_sha256", "fid.n_samples", "nll_iw_k", "n_test", "bound_is_valid"):
        assert i(k).group == "bookkeeping", k
    keys = ordered_keys(
        ["n_test", "recon.mse", "latent.mi", "fid.domain", "probe.knn_acc", "bpd", "x.y"]
    )
    assert keys == [
        "bpd", "fid.domain", "probe.knn_acc", "latent.mi", "recon.mse", "x.y", "n_test"
    ]  # fmt: skip


def test_compare_headline_groups_and_drops_bookkeeping_but_keeps_steps(tmp_path):
    runs = [_run(tmp_path, "g", "gaussian", 1500), _run(tmp_path, "f", "flow", 900, bpd=3.6)]
    md = compare(runs, headline_only=True)
    print(md)
    lines = md.splitlines()
    assert lines[0] == "| metric | better, unit | g | f |"
    order = [ln.split(" | ")[0].strip("| *") for ln in lines[2:] if ln.startswith("| ")]
    groups = [g for g in order if g in metric_info.GROUPS]
    assert groups == ["likelihood", "samples", "representation", "latent health",
                      "reconstruction", "bookkeeping"]  # fmt: skip
    assert order[-1] == "train_steps" and "| train_steps | steps | 1500 | 900 |" in md
    assert "sha256" not in md and "n_samples" not in md and "nll_iw_k" not in md
    assert "| bpd | lower is better, bits/dim | 3.7 | 3.6 |" in md
    assert "| probe.linear_acc | higher is better, accuracy |" in md
    # the learned prior's KL to N(0, I) is marked and explained; the Gaussian's is not
    kl = next(ln for ln in lines if ln.startswith("| latent.kl_total |"))
    assert kl.endswith("| 12.5 | 12.5† |") and "KL to N(0, I)" in kl
    assert lines.index(kl) == 1 + lines.index(next(ln for ln in lines if "elbo_terms.kl" in ln))
    assert "† latent.kl_total is the KL of q(z|x) to N(0, I), not to the model's own (flow)" in md


def test_bar_panels_leave_out_constant_and_bookkeeping_metrics(tmp_path):
    runs = [_run(tmp_path, "a", "gaussian", 10), _run(tmp_path, "b", "gaussian", 20, bpd=4.0)]
    cols, rows = compare_table(runs)
    table = _bar_table(cols, rows)
    assert list(table) == ["bpd ↓ (bits/dim)"]  # everything else is equal in the two runs
    assert table["bpd ↓ (bits/dim)"] == {"a": 3.7, "b": 4.0}


def test_report_page_groups_metrics_with_bookkeeping_last(tmp_path):
    d = _run(tmp_path, "r", "diffusion", 1500)
    page = render_report(d)
    groups = [page.index(f"class='group'>{g}<") for g in ("likelihood", "bookkeeping")]
    assert groups[0] < page.index("<td>bpd</td>") < groups[1] < page.index("sha256")
    assert "lower is better, bits/dim" in page and "<td>train_steps</td>" in page
    assert "12.5†" in page and "not to the model&#x27;s own (diffusion) prior" in page


def test_bar_chart_text_is_at_least_10_px(monkeypatch):
    """Tick labels and titles of the comparison's bar panels are drawn at >= 10 px."""
    from matplotlib.axes import Axes

    from diffrep.eval import plots

    seen = []
    real = Axes.set_xticks

    def spy(self, *a, **kw):
        seen.append(kw.get("fontsize"))
        return real(self, *a, **kw)

    monkeypatch.setattr(Axes, "set_xticks", spy)
    plots.grouped_bars({"bpd": {"a": 1.0, "b": 2.0}})
    dpi = 100
    assert seen and all(fs * dpi / 72 >= 10 for fs in seen)
