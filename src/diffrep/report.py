"""`diffrep report RUN_DIR` (one self-contained HTML page) and `diffrep compare RUN ...` (a table).

The page embeds every picture as a base64 PNG data URI, has no scripts and no external resources,
so it opens offline and can be mailed around. Its sections:

    header      method, dataset, capabilities, version (run.json, eval.json)
    metrics     eval.json flattened to dotted keys (probe.linear_acc, fid.domain, ...)
    figures     every PNG in RUN_DIR/figures, grouped by the "section" of its sidecar JSON
    training    curves of every numeric column of metrics.jsonl against step
    config      config.yaml as text (collapsed)

Extension hook: the report contains no per-method code. An evaluation that wants a figure on
the page calls `diffrep.eval.plots.save_figure(run_dir, name, png, title, section, caption,
order)` (or `ctx.figure(...)` inside a registered `diffrep.eval.suite.EVALS` family); its numbers
appear in the metrics table because they are in eval.json.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from pathlib import Path

from diffrep import atomic, jsonutil, metric_info
from diffrep.errors import UserError
from diffrep.registry import Registry

#: Metrics shown first, in this order within their group (`diffrep.metric_info`), in the report
#: and in `compare`; `compare --headline` shows only these. No hashes or counts here, except the
#: training steps, which every comparison shows (last, under bookkeeping).
HEADLINE = (
    "bpd",
    "nll_iw_nats",
    "nll_iw_bpd",
    "fid.domain",
    "kid.domain",
    "fid.inception",
    "kid.inception",
    "probe.linear_acc",
    "probe.knn_acc",
    "probe.few_label_acc.10",
    "probe.few_label_acc.100",
    "probe.few_label_acc.1000",
    "latent.active_units",
    "latent.mi",
    # The rate against the model's own prior (the ELBO's KL term), and beside it the KL to
    # N(0, I) (a collapse diagnostic, large for learned priors: flagged in the tables).
    "elbo_terms.kl",
    "latent.kl_total",
    "recon.mse",
    "recon.psnr",
    "recon.ssim",
    "train_steps",
)
#: eval.json keys that are bookkeeping or per-dimension lists, not table rows.
_SKIP = ("eval_config", "seconds", "figures", "capabilities", "errors", "method", "dataset")


def flatten(d: dict) -> dict[str, object]:
    """eval.json as table rows: {"a": {"b": 1}} -> {"a.b": 1}, without the bookkeeping keys
    (_SKIP) and lists (per-dimension detail lives in figures); see `diffrep.jsonutil.flatten`."""
    return jsonutil.flatten({k: v for k, v in d.items() if k not in _SKIP})


def ordered_keys(keys) -> list[str]:
    """Keys by group (`metric_info.GROUPS`, bookkeeping last); HEADLINE order, then sorted."""
    keys = set(keys)
    first = [k for k in HEADLINE if k in keys] + sorted(keys - set(HEADLINE))
    return [k for _, ks in metric_info.grouped(first) for k in ks]


_KL_MARK = "†"


def _kl_caveat(key: str, prior: str) -> bool:
    """latent.kl_total of a VAE whose prior is not N(0, I): not the model's own KL."""
    return key == "latent.kl_total" and prior != "gaussian"


def _kl_note(priors) -> str:
    learned = sorted({p for p in priors if p != "gaussian"})
    return (
        f"{_KL_MARK} latent.kl_total is the KL of q(z|x) to N(0, I), not to the model's own "
        f"({', '.join(learned)}) prior: for a learned prior only a collapse diagnostic (large "
        "when the prior is far from N(0, I)); the model's own rate is elbo_terms.kl."
    )


def format_value(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3e}"
    return str(v)


# --------------------------------------------------------------------------- reading a run


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is corrupt ({e}); re-run `diffrep eval` to rewrite it") from None


def read_metrics(path: Path) -> list[dict]:
    """Rows of metrics.jsonl (a torn last line from a crash is skipped)."""
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and "step" in row:
                rows.append(row)
    return rows


def training_series(rows: list[dict]) -> dict[str, tuple[list[float], list[float]]]:
    """{column: (steps, values)} for every numeric column (nested ones as dotted names)."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    for row in rows:
        step = row["step"]
        for k, v in flatten({k: v for k, v in row.items() if k != "step"}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                s = series.setdefault(k, ([], []))
                s[0].append(step)
                s[1].append(v)
    return series


# --------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2rem auto;
max-width:1100px;padding:0 1rem;color:#222;line-height:1.4}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;
margin-top:2rem}.meta{color:#666}pre{background:#f6f6f6;padding:.8rem;overflow:auto;
font-size:.85rem}table{border-collapse:collapse;font-size:.9rem}td,th{padding:.2rem .8rem;
border-bottom:1px solid #eee;text-align:left}td.num{text-align:right;font-variant-numeric:
tabular-nums}figure{display:inline-block;margin:.5rem 1rem 1rem 0;vertical-align:top}
figure img{max-width:100%;min-width:360px;border:1px solid #eee;image-rendering:pixelated}
figcaption{font-size:.85rem;color:#555;max-width:520px}.err{color:#a00}
th.group{background:#f4f4f4;padding-top:.5rem;text-transform:capitalize}td.meta{font-size:.8rem}
"""


def _page_head(title: str) -> str:
    """Doctype, inline CSS and the <h1>: every page diffrep writes starts the same way."""
    t = html.escape(title)
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{t}</title>"
        f"<style>{_CSS}</style></head><body><h1>{t}</h1>"
    )


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _figure(png: bytes, title: str, caption: str = "") -> str:
    cap = html.escape(title) + (f" &mdash; {html.escape(caption)}" if caption else "")
    return f"<figure>{_img(png, title)}<figcaption>{cap}</figcaption></figure>"


def render_report(run_dir: str | Path) -> str:
    """The HTML text of the report of `run_dir`."""
    from diffrep.eval import plots

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(
            f"run directory {str(run_dir)!r} does not exist; pass a `diffrep train` --out"
        )
    info = _read_json(run_dir / "run.json") or {}
    ev = _read_json(run_dir / "eval.json")
    esc = html.escape
    title = f"diffrep report: {run_dir.name}"
    parts = [_page_head(title)]
    meta = [
        f"method <b>{esc(str(info.get('method', ev.get('method', '?') if ev else '?')))}</b>",
        f"dataset <b>{esc(str(info.get('dataset', ev.get('dataset', '?') if ev else '?')))}</b>",
    ]
    if info.get("version"):
        meta.append(f"diffrep {esc(str(info['version']))}")
    if ev and ev.get("capabilities"):
        meta.append("can " + esc(", ".join(ev["capabilities"])))
    parts.append(f"<p class='meta'>{' &middot; '.join(meta)}</p>")

    parts.append("<h2>Metrics</h2>")
    if ev is None:
        parts.append(f"<p>not evaluated yet: run <code>diffrep eval {esc(str(run_dir))}</code></p>")
    else:
        if ev.get("bound_is_valid") is False:
            parts.append(
                "<p class='err'>The training objective is not a bound: bpd is not a likelihood.</p>"
            )
        for fam, msg in (ev.get("errors") or {}).items():
            parts.append(f"<p class='err'>{esc(fam)}: {esc(msg)}</p>")
        flat = flatten(ev)
        steps = _train_steps(run_dir)
        if steps is not None:
            flat["train_steps"] = steps
        prior = str((info.get("method_args") or {}).get("prior", "gaussian"))
        rows = []
        for group, keys in metric_info.grouped(ordered_keys(flat)):
            rows.append(f"<tr><th colspan='3' class='group'>{esc(group)}</th></tr>")
            for k in keys:
                v = format_value(flat[k]) + (_KL_MARK if _kl_caveat(k, prior) else "")
                rows.append(
                    f"<tr><td>{esc(k)}</td><td class='num'>{esc(v)}</td>"
                    f"<td class='meta'>{esc(metric_info.describe(k))}</td></tr>"
                )
        head = "<tr><th>metric</th><th>value</th><th>better, unit</th></tr>"
        parts.append(f"<table>{head}{''.join(rows)}</table>")
        if any(_kl_caveat(k, prior) for k in flat):
            parts.append(f"<p class='meta'>{esc(_kl_note([prior]))}</p>")

    sections: dict[str, list[str]] = {}
    for f in plots.list_figures(run_dir):
        sections.setdefault(f["section"], []).append(
            _figure(f["path"].read_bytes(), f["title"], f.get("caption", ""))
        )
    for section, figs in sections.items():
        parts.append(f"<h2>{esc(section)}</h2>" + "".join(figs))

    series = training_series(read_metrics(run_dir / "metrics.jsonl"))
    parts.append("<h2>Training</h2>")
    if series:
        parts.append(_figure(plots.curves(series), "Training curves", "metrics.jsonl"))
    else:
        parts.append("<p>no metrics.jsonl rows</p>")

    cfg = run_dir / "config.yaml"
    parts.append("<h2>Config</h2>")
    if cfg.is_file():  # collapsed: the resolved config is long, and read less often than metrics
        summary = "resolved config (config.yaml)"
        parts.append(
            f"<details><summary>{summary}</summary><pre>{esc(cfg.read_text())}</pre></details>"
        )
    else:
        parts.append("<p>no config.yaml</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write RUN_DIR/report.html (or `out`); returns its path."""
    path = Path(out) if out is not None else Path(run_dir) / "report.html"
    atomic.write_text(path, render_report(run_dir))
    return path


# --------------------------------------------------------------------------- compare


def split_run_dirs(paths) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(run directories, [(skipped path, why)]): a shell glob such as `runs/demo/*` also names
    files (the demo's report.html) and folders that are not runs; those are left out, with a
    reason, instead of failing the comparison. A run directory is one with a run.json."""
    runs, skipped = [], []
    for p in map(Path, paths):
        if not p.is_dir():
            skipped.append((p, "not a directory" if p.exists() else "does not exist"))
        elif not (p / "run.json").is_file():
            skipped.append((p, "not a run directory (no run.json)"))
        else:
            runs.append(p)
    return runs, skipped


def _train_steps(run_dir: Path) -> int | None:
    """Training steps behind the evaluated weights: the checkpoint's step, else metrics.jsonl's."""
    try:
        return int(json.loads((run_dir / "checkpoint" / "manifest.json").read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        rows = read_metrics(run_dir / "metrics.jsonl")
        return int(rows[-1]["step"]) if rows else None


def _load_evals(run_dirs) -> list[tuple[str, dict, dict]]:
    runs = []
    names = [Path(r).name or str(r) for r in run_dirs]
    for r, name in zip(run_dirs, names):
        ev = _read_json(Path(r) / "eval.json")
        if ev is None:
            raise UserError(f"{r} has no eval.json; run `diffrep eval {r}` first")
        info = _read_json(Path(r) / "run.json") or {}
        label = name if names.count(name) == 1 else str(r)
        runs.append((label, info, ev))
    return runs


def compare_table(run_dirs) -> tuple[list[str], list[dict]]:
    """(columns, rows): one row per run with method, dataset and every flattened metric."""
    runs = _load_evals(run_dirs)
    flats = [flatten(ev) for _, _, ev in runs]
    keys = ordered_keys(set().union(*flats))
    keys = [k for k in keys if not k.endswith("sha256")]
    rows = []
    for r, (label, info, ev), flat in zip(run_dirs, runs, flats):
        row = {
            "run": label,
            "method": info.get("method", ev.get("method")),
            "dataset": info.get("dataset", ev.get("dataset")),
            "prior": (info.get("method_args") or {}).get("prior", "gaussian"),
        }
        row.update({k: flat.get(k) for k in keys})
        row["train_steps"] = _train_steps(Path(r))
        rows.append(row)
    keys = ordered_keys([*keys, "train_steps"])
    return ["run", "method", "dataset", *keys], rows


def _fid_note(run_dirs) -> str:
    shas = {ev.get("fid", {}).get("feature_net_sha256") for _, _, ev in _load_evals(run_dirs)}
    shas.discard(None)
    if len(shas) > 1:
        return (
            "\nnote: the runs used different FID feature networks; their domain FID/KID "
            "are not comparable (retrain none, or pass one eval.fidnet_path to all)"
        )
    return ""


def compare(
    run_dirs,
    fmt: str = "markdown",
    csv_path: str | Path | None = None,
    plot_path: str | Path | None = None,
    headline_only: bool = False,
) -> str:
    """The comparison table as markdown or JSON text; optionally also CSV and a bar-chart PNG.

    headline_only: keep only the HEADLINE metrics in the text (CSV and JSON keep everything).
    """
    if fmt not in ("markdown", "json"):
        raise UserError(f"--format {fmt!r}: choose markdown or json")
    cols, rows = compare_table(run_dirs)
    if csv_path is not None:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols)
        w.writeheader()
        w.writerows([{k: ("" if r.get(k) is None else r.get(k)) for k in cols} for r in rows])
        atomic.write_text(csv_path, buf.getvalue())
    if plot_path is not None:
        from diffrep.eval.plots import grouped_bars

        atomic.write_bytes(plot_path, grouped_bars(_bar_table(cols, rows), "diffrep compare"))
    if fmt == "json":
        return json.dumps(rows, indent=2)
    if headline_only:
        cols = [c for c in cols if c in ("run", "method") or c in HEADLINE]
    return markdown_table(cols, rows) + _notes(cols, rows, run_dirs)


def _notes(cols: list[str], rows: list[dict], run_dirs) -> str:
    """Footnotes of a comparison table: the KL caveat, differing FID networks."""
    text = ""
    if "latent.kl_total" in cols and any(_kl_caveat("latent.kl_total", r["prior"]) for r in rows):
        text += "\n" + _kl_note(r["prior"] for r in rows)
    return text + _fid_note(run_dirs)


def _bar_table(cols: list[str], rows: list[dict]) -> dict[str, dict[str, float]]:
    """{panel title: {run: value}} of the headline metrics that tell the runs apart: no
    bookkeeping, no panel where every run has the same value (it would say nothing)."""
    table = {}
    for k in HEADLINE:
        if k not in cols or metric_info.info(k).group == "bookkeeping":
            continue
        vals = {r["run"]: float(r[k]) for r in rows if isinstance(r.get(k), (int, float))}
        if len(set(vals.values())) < 2 and len(rows) > 1:
            continue
        mi = metric_info.info(k)
        title = f"{k} {mi.arrow}".strip() + (f" ({mi.unit})" if mi.unit else "")
        table[title] = vals
    return table


def _metric_rows(cols: list[str], rows: list[dict]) -> list[tuple[str, list]]:
    """Transpose: one (metric, [value per run]) per metric that at least one run has."""
    return [
        (k, [r.get(k) for r in rows])
        for k in cols[1:]
        if k not in ("method", "dataset", "prior") and any(r.get(k) is not None for r in rows)
    ]


def _cell(k: str, v, row: dict) -> str:
    return format_value(v) + (_KL_MARK if _kl_caveat(k, row.get("prior", "gaussian")) else "")


def markdown_table(cols: list[str], rows: list[dict]) -> str:
    """Metrics as rows (grouped, with which way is better and the unit) and runs as columns:
    stays readable with many metrics and few runs."""
    runs = [str(r["run"]) for r in rows]
    head = "| metric | better, unit | " + " | ".join(runs) + " |\n"
    head += "|---|---|" + "|".join("---" for _ in runs) + "|\n"
    metric_rows = dict(_metric_rows(cols, rows))
    body = ""
    if "method" in cols:
        body += "| method | | " + " | ".join(fmt_cell(r["method"]) for r in rows) + " |\n"
    for group, keys in metric_info.grouped(metric_rows):
        body += f"| **{group}** | |" + "|".join(" " for _ in runs) + "|\n"
        for k in keys:
            cells = " | ".join(fmt_cell(_cell(k, v, r)) for v, r in zip(metric_rows[k], rows))
            body += f"| {k} | {metric_info.describe(k)} | {cells} |\n"
    return head + body


def render_comparison(
    run_dirs, title: str = "diffrep comparison", figures: tuple[str, ...] = ("samples",)
) -> str:
    """HTML: the comparison table, a bar chart of the headline metrics, then for each name in
    `figures` (a figure of RUN_DIR/figures, e.g. "samples", "tsne") every run's picture."""
    from diffrep.eval import plots

    esc = html.escape
    cols, rows = compare_table(run_dirs)
    parts = [_page_head(title)]
    links = " &middot; ".join(
        f"<a href='{esc(Path(d).name)}/report.html'>{esc(str(r['run']))}</a>"
        for d, r in zip(run_dirs, rows)
    )
    parts.append(f"<p class='meta'>per-run reports: {links}</p><h2>Metrics</h2>")
    th = "".join(f"<th>{esc(str(r['run']))}</th>" for r in rows)
    metric_rows = dict(_metric_rows(cols, rows))
    trs = []
    for group, keys in metric_info.grouped(metric_rows):
        trs.append(f"<tr><th colspan='{len(rows) + 2}' class='group'>{esc(group)}</th></tr>")
        for k in keys:
            tds = "".join(
                f"<td class='num'>{esc(_cell(k, v, r))}</td>" for v, r in zip(metric_rows[k], rows)
            )
            trs.append(
                f"<tr><td>{esc(k)}</td><td class='meta'>{esc(metric_info.describe(k))}</td>"
                f"{tds}</tr>"
            )
    head = f"<tr><th>metric</th><th>better, unit</th>{th}</tr>"
    parts.append(f"<table>{head}{''.join(trs)}</table>")
    for note in _notes(cols, rows, run_dirs).strip().splitlines():
        parts.append(f"<p class='meta'>{esc(note)}</p>")
    table = _bar_table(cols, rows)
    if table:
        caption = "panels where the runs differ; ↓ lower is better, ↑ higher is better"
        parts.append(_figure(plots.grouped_bars(table, ""), "Headline metrics", caption))
    for name in figures:
        found = {f["name"]: f for d in run_dirs for f in plots.list_figures(d) if f["name"] == name}
        heading = found[name]["title"] if name in found else name.replace("_", " ").capitalize()
        parts.append(f"<h2>{esc(heading)}</h2>")
        for d, r in zip(run_dirs, rows):
            png = Path(d) / plots.FIGURES_DIR / f"{name}.png"
            if png.is_file():
                parts.append(_figure(png.read_bytes(), str(r["run"])))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_comparison_report(
    run_dirs, out: str | Path, title: str = "diffrep comparison", figures=("samples",)
) -> Path:
    """Write one HTML page comparing evaluated runs (see `render_comparison`)."""
    atomic.write_text(Path(out), render_comparison(run_dirs, title, tuple(figures)))
    return Path(out)


def fmt_cell(v) -> str:
    return format_value(v).replace("|", "\\|")


# --------------------------------------------------------------------------- Table 1 layout

#: Row order of `table1`: seed 004's priors first, any other prior after them, sorted.
PRIOR_ORDER = ("gaussian", "flow", "diffusion")


def table1_cells(run_dirs) -> tuple[list[str], list[int], dict[tuple[str, int], dict]]:
    """(priors, latent sizes, {(prior, latent_dim): cell}) of evaluated VAE runs (seed 004 Table 1).

    Runs are grouped by run.json's method_args `prior` (default "gaussian", the VAE's) and
    `latent_dim`; a cell holds the run's label and directory, its domain FID, IW-NLL in nats,
    whether that NLL is an upper bound (every IW-NLL since the diffusion prior's chain is weighted
    jointly; an eval.json written before that, with the prior's bound plugged in, is not) and
    whether the prior's latent chain was weighted (looser at the same k).
    """
    cells: dict[tuple[str, int], dict] = {}
    for d, (label, info, ev) in zip(run_dirs, _load_evals(run_dirs)):
        args = info.get("method_args") or {}
        if "latent_dim" not in args:
            raise UserError(
                f"{d}: run.json has no method_args.latent_dim, so it has no place in the priors "
                "layout; fix: compare VAE runs (method vae with latent_dim set), or drop --layout"
            )
        key = (str(args.get("prior", "gaussian")), int(args["latent_dim"]))
        if key in cells:
            raise UserError(
                f"{d} and {cells[key]['dir']} are both prior={key[0]}, latent_dim={key[1]}; "
                "fix: pass one run per (prior, latent size)"
            )
        legacy_plugin = "nll_iw_latent_chain" not in ev and bool(ev.get("nll_iw_nats_is_bound"))
        cells[key] = {
            "run": label,
            "dir": str(d),
            "fid": (ev.get("fid") or {}).get("domain"),
            "nll": ev.get("nll_iw_nats"),
            "nll_k": ev.get("nll_iw_k"),
            "nll_is_bound": not legacy_plugin,
            "nll_chain": bool(ev.get("nll_iw_latent_chain", False)),
            "steps": _train_steps(Path(d)),
        }
    found = {p for p, _ in cells}
    priors = [p for p in PRIOR_ORDER if p in found] + sorted(found - set(PRIOR_ORDER))
    latents = sorted({z for _, z in cells})
    return priors, latents, cells


def _table1_cell(cell: dict | None) -> str:
    if cell is None:
        return "-"
    mark = "" if not cell["nll"] else ("*" if cell["nll_chain"] else "")
    mark += "" if cell["nll_is_bound"] or not cell["nll"] else "!"
    return f"{format_value(cell['fid'])} / {format_value(cell['nll'])}{mark}"


def _table1_caption(cells: dict) -> str:
    ks = sorted({c["nll_k"] for c in cells.values() if c["nll_k"]})
    k = f", k = {'/'.join(map(str, ks))}" if ks else ""
    text = (
        f"cells: domain FID / importance-weighted NLL in nats{k} (lower is better for both); "
        "every NLL without ! is an upper bound on -log p(x) (in expectation)"
    )
    if any(c["nll_chain"] for c in cells.values()):
        text += (
            "; * the diffusion prior's latent chain is importance-weighted jointly with z: "
            "a valid bound, looser than an exact prior density's at the same k"
        )
    if not all(c["nll_is_bound"] for c in cells.values()):
        text += (
            "; ! NOT a bound: evaluated with the prior's bound plugged into the IW estimate "
            "(biased low); re-run `diffrep eval`"
        )
    steps = sorted({c["steps"] for c in cells.values() if c["steps"] is not None})
    if steps:
        text += f"; training steps per run: {'/'.join(map(str, steps))}"
    return text


def table1(run_dirs) -> str:
    """Markdown laid out as seed 004's Table 1: rows priors, columns latent sizes, cells FID / NLL.

    `diffrep compare --layout priors RUN ...` prints it; see `table1_cells` for the grouping.
    """
    priors, latents, cells = table1_cells(run_dirs)
    head = "| prior | " + " | ".join(f"Z = {z}" for z in latents) + " |\n"
    head += "|---|" + "|".join("---" for _ in latents) + "|\n"
    body = "".join(
        f"| {p} | "
        + " | ".join(fmt_cell(_table1_cell(cells.get((p, z)))) for z in latents)
        + " |\n"
        for p in priors
    )
    return head + body + "\n" + _table1_caption(cells) + _fid_note(run_dirs)


def render_table1(run_dirs, title: str = "diffrep: priors x latent sizes (seed 004 Table 1)"):
    """HTML: the Table 1 layout, then every run's sample grid in the same rows and columns."""
    from diffrep.eval import plots

    esc = html.escape
    priors, latents, cells = table1_cells(run_dirs)
    parts = [_page_head(title)]
    th = "".join(f"<th>Z = {z}</th>" for z in latents)
    rows = "".join(
        f"<tr><td>{esc(p)}</td>"
        + "".join(f"<td class='num'>{esc(_table1_cell(cells.get((p, z))))}</td>" for z in latents)
        + "</tr>"
        for p in priors
    )
    parts.append(f"<h2>Table</h2><table><tr><th>prior</th>{th}</tr>{rows}</table>")
    parts.append(f"<p class='meta'>{esc(_table1_caption(cells))}</p>")
    note = _fid_note(run_dirs).strip()
    if note:
        parts.append(f"<p class='err'>{esc(note)}</p>")
    parts.append(f"<h2>Samples</h2><table><tr><th>prior</th>{th}</tr>")
    for p in priors:
        tds = []
        for z in latents:
            cell = cells.get((p, z))
            png = Path(cell["dir"]) / plots.FIGURES_DIR / "samples.png" if cell else None
            img = _img(png.read_bytes(), f"{p}, Z = {z}") if png and png.is_file() else "-"
            tds.append(f"<td>{img}</td>")
        parts.append(f"<tr><td>{esc(p)}</td>{''.join(tds)}</tr>")
    parts.append("</table></body></html>")
    return "\n".join(parts)


def write_table1_report(run_dirs, out: str | Path, title: str | None = None) -> Path:
    """Write the Table 1 page (`render_table1`) to `out`; returns its path."""
    kw = {"title": title} if title else {}
    atomic.write_text(Path(out), render_table1(run_dirs, **kw))
    return Path(out)


# --------------------------------------------------------------------------- compare layouts

#: `diffrep compare --layout NAME`: how a set of evaluated runs is laid out. A layout is a class
#: with `text(run_dirs, fmt, csv_path, plot_path, headline_only) -> str` (what compare prints)
#: and `html(run_dirs) -> str` (the --html page); its docstring's first line is the CLI help.
LAYOUTS: Registry = Registry("compare layout")


@LAYOUTS.register("runs")
class RunsLayout:
    """one column per run, one row per metric (default)"""

    def text(self, run_dirs, fmt="markdown", csv_path=None, plot_path=None, headline_only=False):
        return compare(run_dirs, fmt, csv_path, plot_path, headline_only=headline_only)

    def html(self, run_dirs) -> str:
        return render_comparison(run_dirs)


@LAYOUTS.register("priors")
class PriorsLayout:
    """seed 004's Table 1 for VAE runs: rows priors, columns latent sizes, cells FID / NLL"""

    def text(self, run_dirs, fmt="markdown", csv_path=None, plot_path=None, headline_only=False):
        if fmt != "markdown" or csv_path or plot_path:
            raise UserError("--layout priors prints markdown only; fix: drop --format/--csv/--plot")
        return table1(run_dirs)

    def html(self, run_dirs) -> str:
        return render_table1(run_dirs)


# --------------------------------------------------------------------------- free-form pages


def write_page(out: str | Path, title: str, sections: list[tuple[str, list]]) -> Path:
    """One self-contained page of text blocks and figures (benchmarks' result pages).

    sections: [(heading, items)]; an item is a str (shown preformatted, e.g. a table as it was
    printed) or a (png_bytes, title, caption) figure.
    """
    parts = [_page_head(title)]
    for heading, items in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        for item in items:
            is_text = isinstance(item, str)
            parts.append(f"<pre>{html.escape(item)}</pre>" if is_text else _figure(*item))
    parts.append("</body></html>")
    atomic.write_text(Path(out), "\n".join(parts))
    return Path(out)
