"""Checkpoints: round trip, weights_only state, atomic writes, every corruption -> UserError."""

from __future__ import annotations

import io
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import diffrep.checkpoint as ck
from diffrep.checkpoint import (
    atomic_write_bytes,
    capture_rng_state,
    checkpoint_step,
    has_checkpoint,
    load_checkpoint,
    load_weights,
    restore_rng_state,
    save_checkpoint,
)
from diffrep.errors import UserError


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny models: several OpenMP threads on a shared 2-core machine spin against each other
    # (a 100x slowdown under load); one thread is also what these shapes need.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Net(nn.Module):
    def __init__(self, width: int = 4):
        super().__init__()
        self.a = nn.Linear(3, width)
        self.bn = nn.BatchNorm1d(width)  # float buffers + an int64 counter
        self.b = nn.Linear(width, 2)
        self.b2 = self.b  # a shared module: safetensors must cope with shared storage

    def forward(self, x):
        return self.b(self.bn(self.a(x)))


def _trained(seed=0):
    torch.manual_seed(seed)
    net = Net()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        net(torch.randn(8, 3)).square().mean().backward()
        opt.step()
    return net, opt


def _save(tmp_path, seed=0):
    net, opt = _trained(seed)
    ema = {k: v.clone() + 1 for k, v in net.state_dict().items()}
    extra = {"data": {"generator": torch.Generator().manual_seed(3).get_state()}, "note": "x"}
    d = save_checkpoint(tmp_path / "ckpt", net, ema, opt, 3, extra)
    return d, net, opt, ema


def test_round_trip_restores_weights_optimizer_ema_and_extra(tmp_path):
    d, net, opt, ema = _save(tmp_path)
    assert sorted(p.name for p in d.iterdir()) == [
        "ema.safetensors", "manifest.json", "model.safetensors", "state.pt"
    ]  # fmt: skip
    fresh, _ = _trained(seed=1)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
    out = load_checkpoint(d, fresh, fresh_opt)
    assert out["step"] == 3 and out["extra"]["note"] == "x"
    for k, v in net.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
        assert torch.equal(out["ema_state"][k], ema[k]), k
    a, b = opt.state_dict()["state"], fresh_opt.state_dict()["state"]
    for i in a:
        for key in a[i]:
            assert torch.equal(a[i][key], b[i][key])
    # state.pt is plain data: the safe loader reads it
    state = torch.load(d / "state.pt", weights_only=True)
    assert set(state) >= {"step", "optimizer", "rng", "extra"}
    # load_weights picks the EMA by default, the raw weights on request, and sets eval mode
    m = load_weights(d, Net())
    assert not m.training and torch.equal(m.a.weight, ema["a.weight"])
    assert torch.equal(load_weights(d, Net(), ema=False).a.weight, net.a.weight)


def test_no_ema_writes_raw_weights_as_ema(tmp_path):
    net, opt = _trained()
    save_checkpoint(tmp_path, net, None, opt, 1)
    assert torch.equal(load_weights(tmp_path, Net()).a.weight, net.a.weight)


def test_rng_states_round_trip():
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.standard_normal()  # leaves a cached gaussian in numpy's legacy state
    state = capture_rng_state()
    buf = io.BytesIO()
    torch.save(state, buf)
    state = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    want = (torch.rand(3), np.random.standard_normal(3), random.random())
    restore_rng_state(state)
    got = (torch.rand(3), np.random.standard_normal(3), random.random())
    assert torch.equal(want[0], got[0]) and np.array_equal(want[1], got[1]) and want[2] == got[2]


def test_atomic_write_leaves_no_temp_files_and_keeps_old_content_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"old")
    _save(tmp_path)
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".") or "tmp" in p.name]

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(ck.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "f.bin"]


def _corrupt_middle(path):
    data = bytearray(path.read_bytes())
    i = len(data) // 2
    data[i : i + 8] = bytes(255 - b for b in data[i : i + 8])
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "name, damage, match",
    [
        ("model.safetensors", "truncate", "model.safetensors.*truncated"),
        ("ema.safetensors", "garbage", "ema.safetensors.*corrupt"),
        ("state.pt", "garbage", "state.pt.*corrupt"),  # torch's zip reader alone misses this
        ("state.pt", "truncate", "state.pt.*truncated"),
        ("state.pt", "delete", "state.pt.*missing"),
        ("manifest.json", "delete", "incomplete.*manifest.json is missing"),
        ("manifest.json", "truncate", "manifest.json.*corrupt"),
    ],
)
def test_damaged_files_raise_user_errors_naming_file_and_fix(tmp_path, name, damage, match):
    d, *_ = _save(tmp_path)
    path = d / name
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        _corrupt_middle(path)
    else:
        path.unlink()
    target = Net()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(UserError, match=match) as e:
        load_checkpoint(d, target, torch.optim.AdamW(target.parameters()))
    assert "fix:" in str(e.value)
    for k, v in target.state_dict().items():  # nothing was half-loaded
        assert torch.equal(v, before[k])
    if name != "state.pt":
        with pytest.raises(UserError, match="fix:"):
            load_weights(d, Net(), ema=name != "model.safetensors")


def test_consistent_but_invalid_safetensors_is_a_user_error(tmp_path):
    # garbage written *through* a valid save path (e.g. a foreign file) still fails cleanly
    d, *_ = _save(tmp_path)
    garbage = os.urandom(100)
    (d / "model.safetensors").write_bytes(garbage)
    manifest = json.loads((d / "manifest.json").read_text())
    import hashlib

    manifest["files"]["model.safetensors"] = {
        "bytes": 100, "sha256": hashlib.sha256(garbage).hexdigest()
    }  # fmt: skip
    (d / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="model.safetensors.*not valid safetensors"):
        load_weights(d, Net(), ema=False)


def test_wrong_architecture_names_keys_and_shapes(tmp_path):
    d, *_ = _save(tmp_path)
    with pytest.raises(
        UserError, match=r"wrong shapes .*a\.weight: checkpoint \(4, 3\) vs model \(5, 3\)"
    ):
        load_weights(d, Net(width=5))
    with pytest.raises(UserError, match=r"missing keys \['extra\.bias', 'extra\.weight'\]"):
        other = Net()
        other.extra = nn.Linear(1, 1)
        load_weights(d, other)
    with pytest.raises(UserError, match="no checkpoint directory"):
        load_weights(tmp_path / "nope", Net())


@pytest.mark.parametrize("crash_at", ["write", "swap"])
def test_a_crash_during_a_save_leaves_a_complete_checkpoint(tmp_path, monkeypatch, crash_at):
    """A save that dies writing the new files keeps the old checkpoint; one that dies between
    the two renames leaves the old and the new complete, and readers take the new one."""
    d, net, opt, ema = _save(tmp_path)  # step 3
    real_write, real_rename = ck.atomic_write_bytes, os.rename
    if crash_at == "write":

        def write(path, data):
            if Path(path).name == "state.pt":
                raise OSError("disk full")
            real_write(path, data)

        monkeypatch.setattr(ck, "atomic_write_bytes", write)
    else:

        def rename(src, dst):
            if Path(src).name == "ckpt.new":
                raise OSError("power cut")
            real_rename(src, dst)

        monkeypatch.setattr(ck.os, "rename", rename)
    with pytest.raises(OSError):
        save_checkpoint(d, net, ema, opt, 7)
    monkeypatch.undo()
    expect = 3 if crash_at == "write" else 7
    assert not d.exists() if crash_at == "swap" else d.exists()
    assert has_checkpoint(d) and checkpoint_step(d) == expect
    fresh, _ = _trained(seed=1)
    assert load_checkpoint(d, fresh)["step"] == expect
    load_weights(d, fresh)
    # the next save puts things in order: one directory, no leftovers
    save_checkpoint(d, net, ema, opt, 9)
    assert checkpoint_step(d) == 9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
