"""Run diffrep's benchmarks and render one page: `make bench` / `make bench-quick`.

Each benchmark (train_step, sampling, eval_speed, trainer_overhead, scaling, threads, allocator)
prints its table and writes OUT/NAME.json in one schema (see harness.py); then OUT/bench.html
shows them all with a plot per benchmark, and OUT/summary.md (printed at the end) holds every
headline ratio with its target in one markdown table: the README's Performance section. The GPU
is used when torch sees one, the CPU otherwise. Each benchmark runs in its own process, so one
cannot slow the next (allocator and thread-pool state).

    python benchmarks/bench.py --quick            # a few minutes on 2 CPU cores
    python benchmarks/bench.py                    # the full run (about 30 minutes on 2 CPU cores)
    python benchmarks/bench.py --only sampling eval_speed
    python benchmarks/bench.py --render           # page and summary again from bench/*.json

The settings are the `diffrep` CLI's, so the figures are what a user gets out of the box. Freed
memory is kept for the next tensor (`diffrep.allocator`; the allocator benchmark measures it
against glibc's default). Passive OpenMP waiting is set before torch loads (a shared machine's
busy cores otherwise make spinning threads slow everything down). --threads sets torch's
intra-op threads: 1 by default, the CLI's default (see the threads benchmark for why); --threads
2 (or 0, torch's default) measures with both cores. With passive waiting, a second thread makes
small ops slower (every parallel region wakes a sleeping thread): the latent prior's 128 x 16
steps take about 3x longer at 2 threads than at 1.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

sys.path.insert(0, str(Path(__file__).resolve().parent))

from diffrep.allocator import keep_freed_memory  # noqa: E402

keep_freed_memory()  # as the CLI does; it also exports the setting to the benchmarks' processes

BENCHMARKS = (
    "train_step", "sampling", "eval_speed", "trainer_overhead", "scaling", "threads", "allocator"
)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a few-minute pass")
    p.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS))
    p.add_argument("--out", default="bench", help="directory for the JSON records and bench.html")
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: the CLI's default; 0: torch's)"
    )
    p.add_argument(
        "--render", action="store_true",
        help="run nothing: rebuild bench.html and summary.md from the records in --out",
    )  # fmt: skip
    args = p.parse_args(argv)
    if args.render:
        return _render(Path(args.out))
    if len(args.only) > 1:
        return _each_in_own_process(args)

    import torch

    import harness as H

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}", flush=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(args.out)
    records = []
    for name in args.only:
        t0 = time.perf_counter()
        rec = importlib.import_module(f"bench_{name}").run(args.quick, device)
        rec["time_s"] = round(time.perf_counter() - t0, 1)
        rec["quick"] = args.quick
        H.print_record(rec)
        for extra in ("options",):
            if rec.get(extra):
                print(H.table(rec[extra]))
        print(f"  ({rec['time_s']} s) -> {H.write_record(rec, out)}", flush=True)
        records.append(rec)
    if os.environ.get("_DIFFREP_BENCH_CHILD"):
        return 0  # the parent renders the page
    _finish(records, out)
    return 0


def _finish(records: list[dict], out: Path) -> None:
    """bench.html and summary.md (the README's table) from the records; print the summary."""
    import harness as H

    if not records:
        return
    H.render_html(records, out / "bench.html")
    text = H.summary_markdown(records)
    (out / "summary.md").write_text(text)
    print(f"\n{text}\nwrote {out / 'bench.html'} and {out / 'summary.md'}")


def _render(out: Path) -> int:
    records = []
    for f in (out / f"{name}.json" for name in BENCHMARKS):
        try:
            records += [json.loads(f.read_text())] if f.exists() else []
        except (OSError, ValueError) as e:
            fix = f"rerun it: `python benchmarks/bench.py --only {f.stem} --out {out}`"
            print(f"error: cannot read the record {f} ({e}); fix: {fix}", file=sys.stderr)
            return 2
    if not records:
        print(f"error: no benchmark records (NAME.json) in {out}; fix: run "
              f"`python benchmarks/bench.py --out {out}` first", file=sys.stderr)  # fmt: skip
        return 2
    _finish(records, out)
    return 0


def _each_in_own_process(args) -> int:
    """Every benchmark in a fresh process, then one page.

    In one process the benchmarks disturb each other: after the sampling benchmark's large
    batches the trainer-overhead loops ran 1.4x slower (allocator and thread-pool state), and not
    equally for both loops (22% "overhead" against 1% measured alone).
    """
    out = Path(args.out)
    env = {**os.environ, "_DIFFREP_BENCH_CHILD": "1"}
    flags = ["--out", str(out), "--threads", str(args.threads)] + ["--quick"] * args.quick
    records, failed = [], []
    for name in args.only:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--only", name, *flags]
        if subprocess.run(cmd, env=env).returncode != 0:
            failed.append(name)
            continue
        records.append(json.loads((out / f"{name}.json").read_text()))
    _finish(records, out)
    if failed:
        print(f"FAILED: {' '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C: the finished benchmarks' records are kept
        if not os.environ.get("_DIFFREP_BENCH_CHILD"):
            msg = "the finished benchmarks' records are in --out; `bench.py --render` pages them"
            print(f"\ninterrupted: {msg}", file=sys.stderr)
        sys.exit(130)
