"""trainer_overhead: diffrep's trainer (EMA, gradient clipping, logging, checkpoints at their
defaults) against a bare PyTorch loop over the same model, batch size and number of steps.

The model is configs/vdm-digits.yaml's VDM (U-Net width 16) on the embedded 8x8 digits, batch 64.
Both runs start from the same initial weights; whole runs alternate (trainer, bare, trainer, ...)
and the fastest of each is compared, so both see the same neighbours. The trainer's time includes
everything it does (run directory, metrics.jsonl, checkpoints every 500 steps and at the end).

    python benchmarks/bench_trainer_overhead.py --quick
"""

from __future__ import annotations

import copy
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as H  # noqa: E402


def run(quick: bool, device: torch.device) -> dict:
    from diffrep.data import load_dataset, make_batch
    from diffrep.methods import build_method
    from diffrep.train import TrainConfig, train

    rec = H.record(
        "trainer_overhead",
        "wall time of N training steps: diffrep.train (EMA, clipping, logging, checkpoints at "
        "defaults) vs a bare AdamW loop over the same model and batches",
        device,
    )
    steps, batch, reps = (300, 64, 3) if quick else (1000, 64, 3)
    data = load_dataset("digits", "train")
    torch.manual_seed(0)
    init = build_method("vdm", data.shape, unet={"base_channels": 16, "channel_mults": (1, 2)})
    dev = "cuda" if device.type == "cuda" else "cpu"
    cfg = TrainConfig(steps=steps, batch_size=batch, lr=2e-3, device=dev, tensorboard=False)

    def trainer(cfg=cfg):
        with tempfile.TemporaryDirectory() as d:
            train(copy.deepcopy(init), data, Path(d) / "run", cfg, progress=False)

    def bare(steps=steps):
        m = copy.deepcopy(init).to(device).train()
        opt = torch.optim.AdamW(m.parameters(), lr=cfg.lr)
        rng = np.random.default_rng(0)
        for _ in range(steps):
            idx = rng.integers(0, len(data), batch)
            b = {k: v.to(device) for k, v in make_batch(data.images[idx], data.labels[idx]).items()}
            loss = m.loss(b)["loss"].mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    # Warm-up, untimed: the first AdamW imports torch._dynamo (seconds) and the first steps
    # allocate; whichever loop ran first used to pay that once-per-process cost.
    trainer(replace(cfg, steps=3))
    bare(3)
    times: dict[str, list[float]] = {"diffrep trainer": [], "bare loop": []}
    cpu: dict[str, list[float]] = {"diffrep trainer": [], "bare loop": []}
    for _ in range(reps):
        for name, fn in (("diffrep trainer", trainer), ("bare loop", bare)):
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    # The fastest run of each: noise from neighbours only ever adds time, and whole runs of
    # 13 s moved by 15% between full bench passes while one-at-a-time reruns agreed to 1%
    # (timeit's convention; the medians are in the rows too).
    best = {k: min(v) for k, v in times.items()}
    best_cpu = {k: min(v) for k, v in cpu.items()}
    for k, v in best.items():
        rec["rows"].append({"loop": k, "steps": steps, "batch": batch, "seconds": v,
                            "ms_per_step": 1000 * v / steps, "median_s": float(np.median(times[k])),
                            "cpu_seconds": best_cpu[k]})  # fmt: skip
    rec["ratios"]["trainer overhead (trainer / bare - 1)"] = (
        best["diffrep trainer"] / best["bare loop"] - 1
    )
    # CPU time of this process: on a machine shared with other jobs, waiting for a core does not
    # count, so this is the steadier figure (threads spinning at a barrier still count)
    rec["ratios"]["trainer CPU-time overhead"] = (
        best_cpu["diffrep trainer"] / best_cpu["bare loop"] - 1
    )
    rec["targets"]["trainer CPU-time overhead"] = "<= 0.05"
    rec["targets"]["trainer overhead (trainer / bare - 1)"] = "<= 0.05"
    return rec


if __name__ == "__main__":
    H.cli(run, __doc__)
