"""Threads on a shared CPU: seconds for 20 steps of the demo's VAE, 1 vs 2 threads, idle vs busy.

Issue 16's measurement behind the CLI's defaults (passive OpenMP waiting, `--threads`): each cell
is a fresh process (OMP_WAIT_POLICY is read once, when torch loads libgomp) that trains the
demo's VAE (latent 16, width 16, Gaussian prior, batch 64 on the embedded 8x8 digits) for a few
warm-up steps and then times `--steps` optimizer steps; the median of `--repeats` runs is shown.
"busy" starts `--busy` competing processes that spin on the CPU (`while True: pass`) for the
duration of the cell, i.e. another job using every core.

    python benchmarks/threads.py                  # 20 steps, 3 repeats, 2 busy processes
    python benchmarks/threads.py --steps 40 --repeats 5

Prints one table: rows are (wait policy, threads), columns idle / busy seconds and busy/idle.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--busy", type=int, default=os.cpu_count() or 2, help="competing spinners")
    args = ap.parse_args()

    print(f"{args.steps} VAE steps, median of {args.repeats}; busy = {args.busy} spinning procs")
    cells = [(p, t, b) for p in (False, True) for t in (1, 2) for b in (0, args.busy)]
    times: dict = {c: [] for c in cells}
    for _ in range(args.repeats):  # interleaved, so a change in the machine's load hits all cells
        for c in cells:
            times[c].append(run_cell(c[1], args.steps, c[0], c[2]))
    print(f"{'OMP wait':<9} {'threads':>7} {'idle s':>8} {'busy s':>8} {'busy/idle':>9}")
    rows = []
    for passive in (False, True):
        for threads in (1, 2):
            idle = statistics.median(times[(passive, threads, 0)])
            loaded = statistics.median(times[(passive, threads, args.busy)])
            policy = "passive" if passive else "default"
            rows.append({"policy": policy, "threads": threads, "idle_s": idle, "busy_s": loaded})
            print(f"{policy:<9} {threads:>7} {idle:>8.2f} {loaded:>8.2f} {loaded / idle:>9.1f}x")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
