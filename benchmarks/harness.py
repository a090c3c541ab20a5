"""The benchmark harness: one JSON schema, side-by-side timing, tables and one HTML page.

Every benchmark is a module with `run(quick: bool, device: torch.device) -> dict` returning a
record in one schema:

    {"name": "train_step",
     "compared": "diffrep UNet vs diffusers UNet2DModel, matched parameters",
     "rows": [{...}, ...],            # one dict per measured configuration (the table)
     "ratios": {"<what>": value},     # the headline ratios (a > b means a is faster / larger)
     "targets": {"<what>": ">= 1.3"}, # the acceptance figure each ratio is read against
     "plots": [{"title", "x", "y": {series: [...]}, "xlabel", "ylabel",
                "loglog" | "logx" | "logy", "hlines": {label: y}, "kind": "line" | "bar"}],
     "notes": ["..."],
     "machine": {...}, "time_s": ...}

Speed is only ever reported as a ratio measured in the same process, interleaved: the machines
are shared and absolute times move by 25% between runs, but A and B alternating within a few
seconds see the same neighbours (`interleaved`).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch


def machine_info(device: torch.device) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "threads": torch.get_num_threads(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "pid": os.getpid(),  # bench.py runs each benchmark in its own process
        # glibc's thresholds as bench.py / diffrep.allocator set them (None: glibc's defaults)
        "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
    }
    try:
        info["load_avg_1min"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    return info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(
    fns: dict[str, Callable[[], None]],
    device: torch.device,
    *,
    reps: int = 5,
    warmup: int = 1,
    inner: dict[str, int] | None = None,
) -> dict[str, float]:
    """Median seconds per call of each fn, timed in alternation (A B A B ...) after warm-up.

    inner[name] = k calls fn k times in a row at each turn, each call timed on its own: a fn
    far cheaper than the others gets k times the samples for its median at little cost, so a
    burst of load from a neighbour on one short call does not decide a ratio.
    """
    inner = inner or {}
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            for _ in range(inner.get(name, 1)):
                sync(device)
                t0 = time.perf_counter()
                fn()
                sync(device)
                times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def inside(
    outer: Callable[[Callable[[int, int], None]], object],
    inner: Callable[[], object],
    every: int,
    device: torch.device,
) -> tuple[float, list[float]]:
    """Two things timed in turn inside one long call: outer(progress) calls progress(done,
    total) after each of its steps (diffrep's samplers do), and every `every` steps that
    callback runs inner() and times it apart. Returns (outer's seconds less the inner calls',
    each inner call's seconds). Both sides see the same minutes of the machine, where whole
    calls in turn let a neighbour's load land on the long one only."""
    inner_sec: list[float] = []

    def progress(done: int, total: int) -> None:
        if done % every == 0:
            sync(device)
            t0 = time.perf_counter()
            inner()
            sync(device)
            inner_sec.append(time.perf_counter() - t0)

    sync(device)
    t0 = time.perf_counter()
    outer(progress)
    sync(device)
    return time.perf_counter() - t0 - sum(inner_sec), inner_sec


def loglog_slope(x: list[float], y: list[float]) -> float:
    """Least-squares exponent b of y ~ a x^b."""
    lx, ly = [math.log(v) for v in x], [math.log(v) for v in y]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    num = sum((a - mx) * (b - my) for a, b in zip(lx, ly))
    den = sum((a - mx) ** 2 for a in lx)
    return num / den if den else float("nan")


def matmul_gflops(device: torch.device, n: int = 1024, reps: int = 5) -> float:
    """The machine's measured fp32 matmul rate (GFLOP/s), the yardstick for model FLOPs."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    sec = interleaved({"mm": lambda: a @ b}, device, reps=reps, warmup=2)["mm"]
    return 2 * n**3 / sec / 1e9


def peak_rss_mb() -> float:
    """This process's peak resident memory (MB; Linux ru_maxrss is in KB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    """This process's resident memory now (MB), from /proc (0 where there is none)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def record(name: str, compared: str, device: torch.device, **fields) -> dict:
    rec = {"name": name, "compared": compared, "rows": [], "ratios": {}, "targets": {}}
    rec.update(plots=[], notes=[], machine=machine_info(device))
    rec.update(fields)
    return rec


def _fmt(v) -> str:
    if isinstance(v, float):
        if v != v:
            return "nan"
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def table(rows: list[dict]) -> str:
    """A plain-text table of the rows (union of their keys, in first-seen order)."""
    if not rows:
        return "(no rows)"
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    cells = [[_fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    line = lambda vals: "  ".join(v.rjust(w) for v, w in zip(vals, widths))  # noqa: E731
    return "\n".join([line(cols), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def target_met(value: float, target: str | None) -> bool | None:
    """Whether a ratio meets a target written ">= 1.3 ..." or "<= 0.05 ..." (None: no target)."""
    m = re.match(r"\s*(>=|<=)\s*([-+0-9.eE]+)", target or "")
    if not m:
        return None
    bound = float(m.group(2))
    return value >= bound if m.group(1) == ">=" else value <= bound


def machine_line(records: list[dict]) -> str:
    m = records[0]["machine"]
    gflops = next((r["machine"]["matmul_gflops_fp32"] for r in records
                   if "matmul_gflops_fp32" in r["machine"]), None)  # fmt: skip
    return (
        f"{m['cpu']}, {m['cores']} cores, {m['threads']} torch thread(s), torch {m['torch']}, "
        f"device {m['device']}{' (' + m['gpu'] + ')' if m.get('gpu') else ''}"
        + (f", fp32 matmul {gflops:.0f} GFLOP/s" if gflops else "")
        + (", quick pass" if records[0].get("quick") else "")
    )


def summary_rows(records: list[dict]) -> list[dict]:
    """Every headline ratio of every record, with its target and whether it is met."""
    rows = []
    for rec in records:
        for k, v in rec["ratios"].items():
            target = rec["targets"].get(k)
            met = {True: "yes", False: "NO"}.get(target_met(v, target), "")
            rows.append({"benchmark": rec["name"], "ratio": k, "value": _fmt(v),
                         "target": target or "-", "met": met})  # fmt: skip
    return rows


def summary_markdown(records: list[dict]) -> str:
    """The pass in one markdown table (what the README's Performance section shows)."""
    rows = summary_rows(records)
    out = [machine_line(records) + ".", "", "| benchmark | ratio | value | target | met |",
           "|---|---|---|---|---|"]  # fmt: skip
    out += [f"| {r['benchmark']} | {r['ratio']} | {r['value']} | {r['target']} | {r['met']} |"
            for r in rows]  # fmt: skip
    return "\n".join(out) + "\n"


def print_record(rec: dict) -> None:
    print(f"\n== {rec['name']}: {rec['compared']}")
    print(table(rec["rows"]))
    for k, v in rec["ratios"].items():
        target = rec["targets"].get(k)
        print(f"  {k}: {_fmt(v)}" + (f"   (target {target})" if target else ""))
    for n in rec["notes"]:
        print(f"  note: {n}")


def write_record(rec: dict, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{rec['name']}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(rec, indent=1, default=float))
    os.replace(tmp, path)
    return path


def plot_figure(p: dict):
    """The matplotlib Figure of one record plot (schema in the module docstring)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import ScalarFormatter

    fig = Figure(figsize=(5.0, 3.4), dpi=100, layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    if p.get("kind") == "bar":  # x: category labels, one bar per series in each
        width = 0.8 / len(p["y"])
        for i, (series, ys) in enumerate(p["y"].items()):
            at = [j + (i - (len(p["y"]) - 1) / 2) * width for j in range(len(ys))]
            ax.bar(at, ys, width, label=series)
        ax.set_xticks(range(len(p["x"])), p["x"])
    else:
        for series, ys in p["y"].items():
            xs = p["x"][series] if isinstance(p["x"], dict) else p["x"]
            ax.plot(xs, ys, marker="o", label=series)
    for label, y in p.get("hlines", {}).items():  # e.g. a target the values are read against
        ax.axhline(y, linestyle="--", linewidth=1, color="grey", label=label)
    if p.get("logx"):  # x in powers of 2 (batch sizes), labelled as plain numbers
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(ScalarFormatter())
    if p.get("loglog"):
        ax.set_xscale("log")
    if p.get("loglog") or p.get("logy"):
        ax.set_yscale("log")
    ax.set_title(p["title"], fontsize=10)
    ax.set_xlabel(p.get("xlabel", ""), fontsize=10)
    ax.set_ylabel(p.get("ylabel", ""), fontsize=10)
    ax.tick_params(labelsize=9)
    ax.legend(fontsize=9)
    return fig


def _plot_png(p: dict) -> bytes:
    buf = io.BytesIO()
    plot_figure(p).savefig(buf, format="png")
    return buf.getvalue()


def _html_table(rows: list[dict]) -> str:
    if not rows:
        return ""
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    out = ["<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cols)]
    for r in rows:
        out.append("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c, '')))}</td>" for c in cols))
    return "\n".join(out) + "</table>"


def render_html(records: list[dict], path: Path) -> None:
    """One self-contained page: per benchmark its machine, ratios, table and plots."""
    parts = [
        "<!doctype html><meta charset=utf-8><title>diffrep benchmarks</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}"
        "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;"
        "padding:2px 6px;text-align:right}img{margin:4px}</style>",
        "<h1>diffrep benchmarks</h1>",
    ]
    if records:
        parts.append(
            f"<p>{html.escape(machine_line(records))}. "
            "Speeds are ratios measured side by side in one run.</p>"
        )
        parts.append(_html_table(summary_rows(records)))
    for rec in records:
        parts.append(f"<h2>{html.escape(rec['name'])}</h2><p>{html.escape(rec['compared'])}</p>")
        if rec["ratios"]:
            parts.append("<ul>")
            for k, v in rec["ratios"].items():
                t = rec["targets"].get(k)
                parts.append(
                    f"<li><b>{html.escape(k)}</b>: {_fmt(v)}"
                    + (f" (target {html.escape(t)})" if t else "")
                    + "</li>"
                )
            parts.append("</ul>")
        for rows in (rec["rows"], rec.get("options") or []):
            parts.append(_html_table(rows))
        for p in rec["plots"]:
            b64 = base64.b64encode(_plot_png(p)).decode()
            parts.append(f'<img alt="{html.escape(p["title"])}" src="data:image/png;base64,{b64}">')
        for n in rec["notes"]:
            parts.append(f"<p><i>{html.escape(n)}</i></p>")
    path.write_text("\n".join(parts))


def cli(run, doc: str, device: torch.device | None = None) -> None:
    """The command line of one benchmark module: `--quick`, `--out`; print and write its record."""
    import argparse

    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default="bench")
    args = p.parse_args()
    dev = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rec = run(args.quick, dev)
    print_record(rec)
    if rec.get("options"):
        print(table(rec["options"]))
    write_record(rec, Path(args.out))
