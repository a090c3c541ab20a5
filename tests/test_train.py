"""Trainer: exact resume, SIGTERM, NaN loss, EMA maths, schedules, logging, config checks."""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import types
from dataclasses import replace

import pytest
import torch
from torch import nn

from diffrep.checkpoint import checkpoint_step, load_checkpoint, load_weights
from diffrep.config import _build_section
from diffrep.data import load_dataset
from diffrep.errors import UserError
from diffrep.methods.base import Method
from diffrep.train import EMA, TrainConfig, lr_at, train


class Tiny(Method):
    """A noisy linear autoencoder: global-RNG noise in the loss and a float + an int buffer,
    so exact resume needs the RNG states and the EMA must copy buffers."""

    def __init__(self, data_shape, hidden: int = 6, nan_at: int = 0):
        super().__init__(data_shape)
        self.enc = nn.Linear(self.dim, hidden)
        self.dec = nn.Linear(hidden, self.dim)
        self.register_buffer("x_mean", torch.zeros(self.dim))  # running mean of the inputs
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))
        self.nan_at = nan_at  # loss call (= training step, 1-based) at which the loss goes NaN

    def loss(self, batch):
        x = batch["x0"].flatten(1)  # [B, D]
        with torch.no_grad():
            self.x_mean.lerp_(x.mean(0), 0.1)
            self.calls += 1
        noisy = x + 0.1 * torch.randn_like(x)
        rec = self.dec(torch.tanh(self.enc(noisy - self.x_mean)))
        err = ((rec - x) ** 2).sum(1)  # [B]
        if self.nan_at and int(self.calls) == self.nan_at:
            err = err * float("nan")
        return {"loss": err, "mse": err / self.dim}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny models: several OpenMP threads on a shared 2-core machine spin against each other
    # (a 100x slowdown under load); one thread is also what these shapes need.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", "train").subset(slice(0, 200))  # real 8x8 digits


def _cfg(**kw):
    base = dict(steps=8, batch_size=16, lr=1e-2, warmup=3, log_every=2, ckpt_every=0, ema=0.9)
    base.update(kw)
    return TrainConfig(**base)


def _tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return Tiny((1, 8, 8), **kw)


def _state(method):
    return {k: v.clone() for k, v in method.state_dict().items()}


def _assert_bitwise(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _without_time(rows):
    return [{k: v for k, v in r.items() if k != "steps_per_s"} for r in rows]


def test_resume_is_bitwise_identical_to_an_uninterrupted_run(tmp_path, digits):
    full = _tiny()
    train(full, digits, tmp_path / "a", _cfg(steps=8))
    part = _tiny()
    first = train(part, digits, tmp_path / "b", _cfg(steps=4))
    assert first["step"] == 4 and not first["interrupted"]
    resumed = _tiny(seed=123)  # fresh weights: everything must come from the checkpoint
    out = train(resumed, digits, tmp_path / "b", _cfg(steps=8), resume=True)
    assert out["step"] == 8
    _assert_bitwise(_state(full), _state(resumed))
    ema_a = load_checkpoint(tmp_path / "a" / "checkpoint", _tiny())["ema_state"]
    ema_b = load_checkpoint(tmp_path / "b" / "checkpoint", _tiny())["ema_state"]
    _assert_bitwise(ema_a, ema_b)
    # the metrics of the resumed half repeat the uninterrupted ones exactly (no duplicates)
    assert _without_time(_metrics(tmp_path / "a")) == _without_time(_metrics(tmp_path / "b"))
    assert [r["step"] for r in _metrics(tmp_path / "b")] == [2, 4, 6, 8]


def test_vae_resume_is_bitwise_identical(tmp_path, digits):
    from diffrep.methods import build_method

    def vae(seed):
        torch.manual_seed(seed)
        return build_method("vae", digits.shape, latent_dim=4, width=8)

    cfg = _cfg(steps=4, lr=2e-3, batch_size=8)
    full = vae(0)
    train(full, digits, tmp_path / "a", cfg)
    part = vae(0)
    train(part, digits, tmp_path / "b", replace(cfg, steps=2))
    resumed = vae(1)
    train(resumed, digits, tmp_path / "b", cfg, resume=True)
    _assert_bitwise(_state(full), _state(resumed))
    rows = _metrics(tmp_path / "a")
    assert {"loss", "recon", "kl", "lr", "grad_norm", "steps_per_s"} <= set(rows[-1])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_checkpoints_returns_and_resumes_exactly(tmp_path, digits, sig):
    cfg = _cfg(steps=10, lr_schedule="cosine", ckpt_every=4)
    full = _tiny()
    train(full, digits, tmp_path / "a", cfg)

    before = signal.getsignal(sig)

    def kill_at_3(step, logs):
        if step == 3:
            os.kill(os.getpid(), sig)

    part = _tiny()
    out = train(part, digits, tmp_path / "b", cfg, callback=kill_at_3)
    assert out["interrupted"]
    assert out["step"] in (3, 4)  # finishes the step in flight, then stops
    assert checkpoint_step(tmp_path / "b" / "checkpoint") == out["step"]
    assert signal.getsignal(sig) is before  # handlers restored
    resumed = _tiny(seed=7)
    out = train(resumed, digits, tmp_path / "b", cfg, resume=True)
    assert out["step"] == 10 and not out["interrupted"]
    _assert_bitwise(_state(full), _state(resumed))


def test_nan_loss_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path, digits):
    run = tmp_path / "run"
    with pytest.raises(UserError, match=r"step 7\b.*lower train\.lr"):
        train(_tiny(nan_at=7), digits, run, _cfg(steps=10, ckpt_every=4))
    ckpt = run / "checkpoint"
    assert checkpoint_step(ckpt) == 4
    # it loads, and holds the weights of a clean 4-step run
    clean = _tiny()
    train(clean, digits, tmp_path / "clean", _cfg(steps=4))
    restored = load_checkpoint(ckpt, _tiny(seed=5))
    assert restored["step"] == 4
    loaded = _tiny(seed=5)
    load_checkpoint(ckpt, loaded)
    _assert_bitwise(_state(clean), _state(loaded))
    assert not [p for p in ckpt.iterdir() if p.name.startswith(".")]  # no temp files


def test_ema_matches_a_hand_computation(tmp_path, digits):
    decay = 0.8
    method = _tiny()
    init = _state(method)
    snaps = []
    train(
        method,
        digits,
        tmp_path / "run",
        _cfg(steps=5, ema=decay),
        callback=lambda step, logs: snaps.append(_state(method)),
    )
    ema = {k: v.clone().double() for k, v in init.items()}
    for n, theta in enumerate(snaps):  # n updates done before this one
        d = min(decay, (1 + n) / (10 + n))
        for k in ("enc.weight", "enc.bias", "dec.weight", "dec.bias"):
            ema[k] = d * ema[k] + (1 - d) * theta[k].double()
    got = load_weights(tmp_path / "run" / "checkpoint", _tiny(seed=9), ema=True).state_dict()
    for k in ("enc.weight", "enc.bias", "dec.weight", "dec.bias"):
        torch.testing.assert_close(got[k].double(), ema[k], rtol=1e-5, atol=1e-6)
        assert not torch.allclose(got[k], snaps[-1][k])  # really an average
    # buffers are copied from the live model, not averaged
    assert torch.equal(got["x_mean"], snaps[-1]["x_mean"])
    assert int(got["calls"]) == 5


def test_ema_without_warmup_is_the_plain_recursion():
    m = nn.Linear(2, 1)
    e = EMA(m, 0.5, warmup=False)
    w0 = m.weight.detach().clone()
    with torch.no_grad():
        m.weight.fill_(1.0)
    e.update(m)
    torch.testing.assert_close(e.state["weight"], 0.5 * w0 + 0.5)


def test_eval_hook_sees_ema_weights_and_does_not_perturb_training(tmp_path, digits):
    seen = []

    def hook(method, step):
        assert not method.training and not torch.is_grad_enabled()
        torch.randn(100)  # consumes global RNG: training must not notice
        seen.append((step, _state(method)))
        return {"w_norm": method.enc.weight.norm().item()}

    with_eval = _tiny()
    out = train(with_eval, digits, tmp_path / "a", _cfg(steps=6, eval_every=3), eval_hook=hook)
    without = _tiny()
    train(without, digits, tmp_path / "b", _cfg(steps=6))
    _assert_bitwise(_state(with_eval), _state(without))
    assert [s for s, _ in seen] == [3, 6]
    ema_final = load_weights(tmp_path / "a" / "checkpoint", _tiny(seed=3)).state_dict()
    _assert_bitwise(seen[-1][1], ema_final)
    evals = [r for r in _metrics(tmp_path / "a") if "eval" in r]
    assert [r["step"] for r in evals] == [3, 6]
    assert evals[-1]["eval"]["w_norm"] == pytest.approx(ema_final["enc.weight"].norm().item())
    assert out["eval"]["w_norm"] == evals[-1]["eval"]["w_norm"]


def test_training_reduces_the_loss_and_logs_every_term(tmp_path, digits):
    out = train(_tiny(), digits, tmp_path / "run", _cfg(steps=30, log_every=10, lr=3e-2))
    rows = _metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [10, 20, 30]
    assert rows[-1]["loss"] < 0.5 * rows[0]["loss"]
    assert rows[-1]["mse"] == pytest.approx(rows[-1]["loss"] / 64, rel=1e-5)
    assert out["loss"] == rows[-1]["loss"] and out["step"] == 30
    assert all(r["grad_norm"] > 0 and r["steps_per_s"] > 0 for r in rows)


def test_refuses_to_overwrite_or_resume_nothing(tmp_path, digits):
    run = tmp_path / "run"
    with pytest.raises(UserError, match="nothing to resume"):
        train(_tiny(), digits, run, _cfg(steps=2), resume=True)
    train(_tiny(), digits, run, _cfg(steps=2))
    with pytest.raises(UserError, match="already holds a checkpoint.*--resume"):
        train(_tiny(), digits, run, _cfg(steps=2))
    with pytest.raises(
        UserError, match=r"built for images \(1, 4, 4\) but the data has \(1, 8, 8\)"
    ):
        train(Tiny((1, 4, 4)), digits, tmp_path / "other", _cfg(steps=2))


def test_lr_schedule():
    cfg = TrainConfig(steps=100, lr=1.0, warmup=10, lr_schedule="cosine", min_lr=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1)  # (0 + 1) / 10
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(55, cfg) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(100, cfg) == pytest.approx(0.1)
    assert lr_at(50, replace(cfg, lr_schedule="constant")) == 1.0


def test_lr_schedule_follows_the_time_budget_when_it_is_further_along():
    cfg = TrainConfig(steps=100, lr=1.0, warmup=10, lr_schedule="cosine", min_lr=0.1)
    half = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5))
    assert lr_at(20, cfg, time_frac=0.5) == pytest.approx(half)  # time leads
    assert lr_at(55, cfg, time_frac=0.1) == pytest.approx(half)  # steps lead
    assert lr_at(20, cfg, time_frac=1.7) == pytest.approx(0.1)  # clamped at the end
    assert lr_at(5, cfg, time_frac=0.9) == pytest.approx(0.6)  # warm-up is counted in steps


class _Clock:
    """A fake `time` module for the trainer: the loss advances it, so 'minutes' are exact."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


def test_time_budget_stops_decays_lr_and_resumes_with_the_time_spent(tmp_path, digits, monkeypatch):
    import diffrep.train as train_mod

    clock = _Clock()
    monkeypatch.setattr(train_mod, "time", clock)

    class Slow(Tiny):
        def loss(self, batch):
            clock.now += 6.0  # each step takes 6 "seconds"
            return super().loss(batch)

    cfg = _cfg(steps=1000, max_minutes=1.0, lr_schedule="cosine", warmup=0, log_every=1, lr=1.0)
    out = train(Slow((1, 8, 8)), digits, tmp_path / "r", cfg)
    # the budget (60 s) is spent after 10 steps of 6 s; the step budget (1000) is not
    assert (out["step"], out["out_of_time"], out["interrupted"]) == (10, True, False)
    assert out["train_time_s"] == pytest.approx(60.0)
    lrs = [r["lr"] for r in _metrics(tmp_path / "r")]
    # step k runs with the time fraction after step k - 1: 6k / 60
    assert lrs == pytest.approx([0.5 * (1 + math.cos(math.pi * k / 10)) for k in range(10)])
    assert checkpoint_step(tmp_path / "r" / "checkpoint") == 10

    # resuming counts the 60 s already spent: a 2-minute budget allows 10 more steps
    clock.now = 1000.0
    with pytest.warns(UserWarning, match="max_minutes"):  # the lr trajectory changes
        more = train(
            Slow((1, 8, 8)), digits, tmp_path / "r", replace(cfg, max_minutes=2.0), resume=True
        )
    assert (more["step"], more["out_of_time"]) == (20, True)
    assert _metrics(tmp_path / "r")[10]["lr"] == pytest.approx(0.5 * (1 + math.cos(math.pi / 2)))
    with pytest.raises(UserError, match="already trained 2.0 minutes.*raise train.max_minutes"):
        train(Slow((1, 8, 8)), digits, tmp_path / "r", replace(cfg, max_minutes=2.0), resume=True)


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"steps": 0}, "steps must be >= 1"),
        ({"max_minutes": -1.0}, "max_minutes must be >= 0"),
        ({"lr": -1.0}, "lr must be a positive"),
        ({"ema": 1.0}, "ema must be in"),
        ({"betas": (0.9, 1.5)}, "betas"),
        ({"device": "gpu"}, "device must be"),
        ({"grad_clip": -1.0}, "grad_clip"),
    ],
)
def test_config_range_checks(bad, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**bad)
    with pytest.raises(UserError, match=f"train: .*{match}"):  # what config.py turns it into
        _build_section(TrainConfig, bad, "train")


def test_tensorboard_progress_bar_and_bf16_autocast(tmp_path, digits, monkeypatch, capsys):
    # a stand-in for torch.utils.tensorboard (the real one needs the tensorboard package)
    scalars = []

    class Writer:
        def __init__(self, log_dir, purge_step=None):
            self.log_dir = log_dir

        def add_scalar(self, tag, value, step):
            scalars.append((tag, value, step))

        def close(self):
            scalars.append("closed")

    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = Writer
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    out = train(
        _tiny(), digits, tmp_path / "run", _cfg(steps=4, precision="bf16"),
        eval_hook=lambda m, s: {"score": 1.5}, progress=True,
    )  # fmt: skip
    assert math.isfinite(out["loss"])
    tags = {(t, s) for t, _, s in scalars[:-1]}
    assert {("loss", 2), ("loss", 4), ("mse", 4), ("lr", 4), ("eval/score", 4)} <= tags
    assert scalars[-1] == "closed"
    assert "train" in capsys.readouterr().err  # the tqdm bar went to stderr


def test_cpu_optimizer_is_foreach_and_gives_the_per_tensor_bits():
    """build_optimizer takes AdamW's multi-tensor path on a CPU (faster); its weights after
    steps with weight decay and a changing lr equal the per-tensor loop's, bit for bit."""
    from diffrep.train import build_optimizer

    torch.manual_seed(0)
    shapes = [(16, 8, 3, 3), (16,), (10, 32), (3,)]
    a = [torch.randn(s, requires_grad=True) for s in shapes]
    b = [p.detach().clone().requires_grad_(True) for p in a]
    cfg = TrainConfig(lr=1e-3, weight_decay=0.01, betas=(0.9, 0.99))
    ours = build_optimizer([{"name": "all", "params": a, "lr_scale": 1.0}], cfg)
    assert ours.defaults["foreach"] is True
    loop = torch.optim.AdamW(b, lr=1e-3, betas=(0.9, 0.99), weight_decay=0.01, foreach=False)
    for step in range(20):
        for p, q in zip(a, b):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        for opt in (ours, loop):
            opt.param_groups[0]["lr"] = 1e-3 * (1 + step % 3)
            opt.step()
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    fused = build_optimizer([{"name": "all", "params": a}], replace(cfg, fused_optimizer=True))
    assert fused.defaults["foreach"] is None and fused.defaults["fused"] is True
