"""threads: a shared CPU. Seconds for 20 steps of the demo's VAE, 1 vs 2 threads, idle vs busy.

Issue 16's measurement behind the CLI's defaults (passive OpenMP waiting, `--threads`): each cell
is a fresh process (OMP_WAIT_POLICY is read once, when torch loads libgomp) that trains the
demo's VAE (latent 16, width 16, Gaussian prior, batch 64 on the embedded 8x8 digits) for a few
warm-up steps and then times `--steps` optimizer steps; the median of `--repeats` runs is shown.
"busy" starts `--busy` competing processes that spin on the CPU (`while True: pass`) for the
duration of the cell, i.e. another job using every core.

    python benchmarks/bench_threads.py            # 20 steps, 3 repeats, os.cpu_count() spinners
    python benchmarks/bench.py --only threads     # the same, on the benchmark page

Cells are interleaved (every cell once, then again), so a change in the machine's load hits them
all. One row per (wait policy, threads): idle and busy seconds and busy/idle; the headline ratio
is busy/idle of the CLI's setting (passive, 1 thread): the acceptance asks for <= 2.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as H  # noqa: E402

WORKER = r"""
import json, sys, time
import torch
from diffrep.data import load_dataset, make_batch
from diffrep.methods import build_method

threads, steps = int(sys.argv[1]), int(sys.argv[2])
torch.set_num_threads(threads)
torch.manual_seed(0)
data = load_dataset("digits", "train")
method = build_method("vae", data.shape, latent_dim=16, width=16)
opt = torch.optim.AdamW(method.parameters(), lr=1e-3)
gen = torch.Generator().manual_seed(0)


def step():
    idx = torch.randint(len(data), (64,), generator=gen).numpy()
    loss = method.loss(make_batch(data.images[idx], None))["loss"].mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


for _ in range(3):  # warm-up: allocator, thread pool
    step()
t0 = time.perf_counter()
for _ in range(steps):
    step()
print(json.dumps({"seconds": time.perf_counter() - t0}))
"""


def run_cell(threads: int, steps: int, passive: bool, busy: int) -> float:
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    env.pop("OMP_NUM_THREADS", None)
    if passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
    try:
        time.sleep(0.5 if busy else 0.0)  # let the competitors get going
        out = subprocess.run(
            [sys.executable, "-c", WORKER, str(threads), str(steps)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        for p in spinners:
            p.kill()
            p.wait()
    return json.loads(out.stdout.strip().splitlines()[-1])["seconds"]


def run(quick: bool, device: torch.device, steps: int = 20, repeats: int = 0, busy: int = 0):
    rec = H.record(
        "threads",
        f"seconds for {steps} steps of the demo's VAE on an idle vs a busy CPU (busy: one spinning "
        "process per core), default vs passive OpenMP waiting, 1 vs 2 threads",
        device,
    )
    repeats = repeats or (1 if quick else 3)
    busy = busy or os.cpu_count() or 2
    cells = [(p, t, b) for p in (False, True) for t in (1, 2) for b in (0, busy)]
    times: dict = {c: [] for c in cells}
    for _ in range(repeats):  # interleaved, so a change in the machine's load hits all cells
        for c in cells:
            times[c].append(run_cell(c[1], steps, c[0], c[2]))
    for passive in (False, True):
        for threads in (1, 2):
            idle = statistics.median(times[(passive, threads, 0)])
            loaded = statistics.median(times[(passive, threads, busy)])
            rec["rows"].append({
                "omp_wait": "passive" if passive else "default", "threads": threads,
                "idle_s": idle, "busy_s": loaded, "busy_over_idle": loaded / idle,
            })  # fmt: skip
    rec["plots"].append({
        "title": f"{steps} training steps, idle vs {busy} spinning processes", "kind": "bar",
        "x": [f"{r['omp_wait']}, {r['threads']} thr" for r in rec["rows"]],
        "y": {"idle": [r["idle_s"] for r in rec["rows"]],
              "busy": [r["busy_s"] for r in rec["rows"]]},
        "ylabel": "seconds", "logy": True,  # (busy with default waiting: 10-100x idle)
    })  # fmt: skip
    cli = times[(True, 1, 0)], times[(True, 1, busy)]
    rec["ratios"]["busy / idle, passive 1 thread (the CLI default)"] = statistics.median(
        cli[1]
    ) / statistics.median(cli[0])
    rec["targets"]["busy / idle, passive 1 thread (the CLI default)"] = "<= 2"
    worst = statistics.median(times[(False, 2, busy)]) / statistics.median(times[(True, 1, busy)])
    rec["ratios"]["busy: default 2 threads / passive 1 thread"] = worst
    rec["notes"].append(
        f"{steps} steps, median of {repeats}, {busy} spinning processes for 'busy'; load average "
        "at the start is in machine: other jobs on a shared machine count as load too"
    )
    return rec


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--busy", type=int, default=os.cpu_count() or 2, help="competing spinners")
    ap.add_argument("--out", default="bench")
    args = ap.parse_args()
    r = run(False, torch.device("cpu"), args.steps, args.repeats, args.busy)
    H.print_record(r)
    print(json.dumps(r["rows"]))
    H.write_record(r, Path(args.out))
