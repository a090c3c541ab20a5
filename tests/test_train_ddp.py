"""Two-process torchrun training on CPU (gloo): identical weights on both ranks, rank 0 alone
writes files, each step's global batch is the single-process one split in two (data order), and
the result matches a single-process run with the same global batch."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

SCRIPT = textwrap.dedent(
    '''
    import dataclasses, json, os, sys
    from pathlib import Path

    import numpy as np

    import torch
    from torch import nn

    from diffrep.data import load_dataset
    from diffrep.methods.base import Method
    from diffrep.train import TrainConfig, train


    class Det(Method):
        """A deterministic autoencoder (no noise), so one process and two can be compared."""

        def __init__(self, data_shape):
            super().__init__(data_shape)
            self.enc = nn.Linear(self.dim, 6)
            self.dec = nn.Linear(6, self.dim)
            self.seen = []  # the example indices of every batch (labels = indices below)

        def loss(self, batch):
            self.seen.append(batch["y"].tolist())
            x = batch["x0"].flatten(1)
            err = ((self.dec(torch.tanh(self.enc(x))) - x) ** 2).sum(1)
            return {"loss": err, "mse": err / self.dim}


    def run(base, rank):
        torch.set_num_threads(1)
        data = load_dataset("digits", "train").subset(slice(0, 40))  # 6 x 8 > 40: two epochs
        data = dataclasses.replace(data, labels=np.arange(40), num_classes=40)
        torch.manual_seed(rank)  # a different init per rank: DDP must broadcast rank 0's
        method = Det(data.shape)
        cfg = TrainConfig(steps=6, batch_size=8, lr=1e-2, warmup=2, log_every=2, ckpt_every=3,
                          ema=0.9, device="cpu")
        summary = train(method, data, base / f"run{rank}", cfg)
        torch.save(method.state_dict(), base / f"params{rank}.pt")
        (base / f"order{rank}.json").write_text(json.dumps(method.seen))
        (base / f"summary{rank}.json").write_text(json.dumps(summary))


    if __name__ == "__main__":
        run(Path(sys.argv[1]), int(os.environ.get("RANK", "0")))
    '''
)


@pytest.mark.slow
def test_two_process_torchrun_matches_single_process(tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    ddp = tmp_path / "ddp"
    ddp.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run(
        [*cmd, str(script), str(ddp)], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    p0 = torch.load(ddp / "params0.pt", weights_only=True)
    p1 = torch.load(ddp / "params1.pt", weights_only=True)
    for k in p0:
        assert torch.equal(p0[k], p1[k]), k  # gradient sync keeps the ranks bit-identical
    # only rank 0 wrote the run directory
    assert (ddp / "run0" / "checkpoint" / "manifest.json").is_file()
    assert not (ddp / "run1").exists()
    rows = [json.loads(line) for line in (ddp / "run0" / "metrics.jsonl").read_text().split("\n")
            if line]  # fmt: skip
    assert [r["step"] for r in rows] == [2, 4, 6]
    s0, s1 = (json.loads((ddp / f"summary{r}.json").read_text()) for r in (0, 1))
    assert s0["loss"] == s1["loss"] and s0["step"] == s1["step"] == 6
    o0, o1 = (json.loads((ddp / f"order{r}.json").read_text()) for r in (0, 1))

    # one process on the whole global batch of 8 follows the same trajectory (up to rounding
    # of the gradient all-reduce), which checks the batch sharding and the gradient averaging
    spec = importlib.util.spec_from_file_location("ddp_train", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    single = tmp_path / "single"
    single.mkdir()
    threads = torch.get_num_threads()
    try:
        mod.run(single, 0)
    finally:
        torch.set_num_threads(threads)
    ref = torch.load(single / "params0.pt", weights_only=True)
    # the data order: each step's global batch of the 1-process run, split in two in rank order
    order = json.loads((single / "order0.json").read_text())
    assert len(order) == len(o0) == len(o1) == 6
    assert [a + b for a, b in zip(o0, o1)] == order
    assert [len(a) for a in o0] == [4] * 6
    assert len({i for b in order[:5] for i in b}) == 40  # the first epoch covers every example
    for k in p0:
        torch.testing.assert_close(p0[k], ref[k], rtol=1e-5, atol=1e-6)
    torch.manual_seed(0)  # training moved the weights far beyond that tolerance: the check bites
    init = mod.Det((1, 8, 8)).state_dict()
    moved = max((p0[k] - init[k]).abs().max().item() for k in p0)
    assert moved > 1e-3
    ref_rows = [
        json.loads(line) for line in (single / "run0" / "metrics.jsonl").read_text().split("\n")
        if line
    ]  # fmt: skip
    for a, b in zip(rows, ref_rows):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
