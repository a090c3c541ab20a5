"""allocator: glibc's default malloc against freed memory kept in the process (the CLI's setting).

`diffrep.allocator.keep_freed_memory` raises glibc's mmap and trim thresholds, so the megabytes
of activations a network frees at each call are reused by the next call instead of being handed
back to the OS and faulted in again page by page. Each cell is a fresh process (the allocator's
state is per process) that builds configs/vdm-mnist.yaml's U-Net, warms up, then times
  - sampling: 10 DDIM steps of 128 images (the sampling benchmark's batch), and
  - training: 10 optimizer steps at the config's batch of 16.
"kept" calls keep_freed_memory() first, as the CLI does; "default" runs with glibc's own
settings. Cells alternate (default, kept, default, ...), so a change in the machine's load hits
both. Reported: the median seconds of each, default / kept (> 1: keeping is faster), and each
process's minor page faults and peak resident memory (the price: freed memory stays with the
process).

    python benchmarks/bench_allocator.py --quick
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as H  # noqa: E402

WORKER = r"""
import json, resource, sys, time
import torch
from diffrep.allocator import keep_freed_memory

kept = keep_freed_memory() if sys.argv[1] == "kept" else False
torch.set_num_threads(1)
from diffrep.methods import build_method

unet = {"base_channels": 16, "channel_mults": (1, 2, 4), "fourier_exponents": (6, 7, 8)}
torch.manual_seed(0)
vdm = build_method("vdm", (1, 28, 28), unet=unet)
opt = torch.optim.AdamW(vdm.parameters(), lr=1e-3)
x = torch.rand(16, 1, 28, 28) * 2 - 1


def sample():
    vdm.eval()
    vdm.sample(128, torch.Generator().manual_seed(0), sampler="ddim", steps=10, progress=False)


def train(steps):
    vdm.train()
    for _ in range(steps):
        loss = vdm.loss({"x0": x})["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def timed(fn, warm_up):
    warm_up()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


out = {"kept": kept, "sampling_s": timed(sample, sample),
       "training_s": timed(lambda: train(10), lambda: train(2))}
usage = resource.getrusage(resource.RUSAGE_SELF)
out.update(minor_faults=usage.ru_minflt, peak_rss_mb=usage.ru_maxrss / 1024)
print(json.dumps(out))
"""


def run_cell(mode: str) -> dict:
    from diffrep.allocator import ENV

    env = {k: v for k, v in os.environ.items() if k not in ENV}  # bench.py exports them
    out = subprocess.run([sys.executable, "-c", WORKER, mode], env=env, capture_output=True,
                         text=True, check=True)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(quick: bool, device: torch.device) -> dict:
    rec = H.record(
        "allocator",
        "seconds of U-Net sampling and training in fresh processes: glibc's default malloc vs "
        "freed memory kept (diffrep.allocator, the CLI's setting)",
        device,
    )
    if device.type != "cpu":
        rec["notes"].append("CPU only: a GPU's activations do not come from malloc")
        return rec
    cells: dict[str, list[dict]] = {"default": [], "kept": []}
    for _ in range(2 if quick else 4):
        for mode in cells:
            cells[mode].append(run_cell(mode))
    if not cells["kept"][0]["kept"]:
        rec["notes"].append("keep_freed_memory() did not apply here (not glibc, or the user's "
                            "MALLOC_* / LD_PRELOAD): both columns are glibc's default")  # fmt: skip
    med = {m: {k: statistics.median(c[k] for c in cs) for k in cs[0] if k != "kept"}
           for m, cs in cells.items()}  # fmt: skip
    for m, v in med.items():
        rec["rows"].append({"malloc": m, **{k: round(x, 3) for k, x in v.items()}})
    for what in ("sampling", "training"):
        key = f"{what}: default / kept seconds"
        rec["ratios"][key] = med["default"][f"{what}_s"] / med["kept"][f"{what}_s"]
    rec["plots"].append({
        "title": "fresh processes: glibc's default malloc vs freed memory kept", "kind": "bar",
        "x": ["sampling", "training"],
        "y": {m: [med[m]["sampling_s"], med[m]["training_s"]] for m in med},
        "ylabel": "seconds",
    })  # fmt: skip
    rec["notes"].append(
        f"median of {len(cells['kept'])} fresh processes each, in turn; sampling: 10 DDIM steps "
        "of 128 images, training: 10 steps at batch 16, configs/vdm-mnist.yaml's U-Net, 1 thread"
    )
    return rec


if __name__ == "__main__":
    H.cli(run, __doc__)
