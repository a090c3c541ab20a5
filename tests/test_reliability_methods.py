"""Faults every method must survive (issue 16), parametrised over the METHODS registry.

A method registered later gets these checks without new code (TINY in test_methods_contract only
makes networks small): exact resume across SIGINT/SIGTERM, a NaN loss at step 1 (no good
checkpoint exists yet: the message says so), another method's checkpoint refused, sizes of 0
refused with a message (or harmless), and a kill -9 at every point of a checkpoint write.
"""

from __future__ import annotations

import inspect
import os
import signal
import typing

import pytest
import torch

from diffrep.checkpoint import (
    checkpoint_step,
    has_checkpoint,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)
from diffrep.data import load_dataset
from diffrep.errors import UserError
from diffrep.methods import METHODS, build_method
from diffrep.train import TrainConfig, seed_everything, train
from test_methods_contract import TINY, _frozen_base  # noqa: F401  (pdae: a frozen base run)

NAMES = METHODS.names()
# methods fitted in closed form (`closed_form = True`: ideal, svd) take no training steps
TRAINED = [n for n in NAMES if not getattr(METHODS.get(n), "closed_form", False)]


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", "train").subset(slice(0, 64))


def _build(name: str, data_shape=(1, 8, 8), **extra):
    seed_everything(0)
    return build_method(name, data_shape, **{**TINY.get(name, {}), **extra})


def _cfg(**kw) -> TrainConfig:
    base = dict(steps=6, batch_size=8, warmup=2, log_every=2, ckpt_every=0, ema=0.9,
                device="cpu", tensorboard=False)  # fmt: skip
    return TrainConfig(**{**base, **kw})


def _state(m: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("name", TRAINED)
def test_resume_across_a_signal_is_bitwise_exact(tmp_path, digits, name, sig):
    full = _build(name)
    train(full, digits, tmp_path / "full", _cfg(), progress=False)

    def send(step, _):
        if step == 2:
            os.kill(os.getpid(), sig)  # as Ctrl-C / `kill` would, in the middle of the run

    part = _build(name)
    first = train(part, digits, tmp_path / "part", _cfg(), callback=send, progress=False)
    assert first["interrupted"] and 2 <= first["step"] < 6
    resumed = _build(name)
    out = train(resumed, digits, tmp_path / "part", _cfg(), resume=True, progress=False)
    assert out["step"] == 6 and not out["interrupted"]
    a, b = _state(full), _state(resumed)
    for k in a:
        assert torch.equal(a[k], b[k]), f"{name}: {k} differs after the interrupted run"


@pytest.mark.parametrize("name", TRAINED)
def test_nan_at_step_1_says_no_checkpoint_exists(tmp_path, digits, name):
    m = _build(name)
    real = m.loss
    m.loss = lambda batch: {k: v * float("nan") for k, v in real(batch).items()}  # e.g. a bad lr
    with pytest.raises(UserError, match=r"at step 1\b.*no checkpoint was written"):
        train(m, digits, tmp_path / "r", _cfg(), progress=False)
    assert not has_checkpoint(tmp_path / "r" / "checkpoint")


@pytest.mark.parametrize("name", NAMES)
def test_another_methods_checkpoint_is_refused(tmp_path, name):
    other = NAMES[(NAMES.index(name) + 1) % len(NAMES)]
    save_checkpoint(tmp_path / "ckpt", _build(other), None, None, 1)
    target = _build(name)
    before = _state(target)
    with pytest.raises(UserError, match="fix:"):
        load_weights(tmp_path / "ckpt", target)
    with pytest.raises(UserError, match="fix:"):
        load_checkpoint(tmp_path / "ckpt", target)
    assert all(torch.equal(v, before[k]) for k, v in _state(target).items())  # untouched


def _size_params() -> list[tuple[str, str]]:
    """(method, argument) for every int constructor argument whose default is >= 1."""
    out = []
    for name in NAMES:
        ctor = METHODS.get(name)
        hints = typing.get_type_hints(ctor.__init__)
        for p in inspect.signature(ctor).parameters.values():
            if hints.get(p.name) is int and isinstance(p.default, int) and p.default >= 1:
                out.append((name, p.name))
    return out


@pytest.mark.parametrize("name, arg", _size_params())
def test_a_size_of_zero_is_refused_with_a_message_or_harmless(digits, name, arg):
    try:
        m = _build(name, **{arg: 0})
    except UserError as e:
        assert "0" in str(e) and "\n" not in str(e)  # names the value, one line
        return
    batch = {"x0": torch.rand(4, 1, 8, 8) * 2 - 1, "y": torch.zeros(4, dtype=torch.long)}
    assert torch.isfinite(m.loss(batch)["loss"]).all()  # accepted: then it must work


# ------------------------------------------------------------------ kill -9 during a save


def _watch(ops, hook) -> None:
    """Route each file-system operation a save uses (fsync, replace, rename, rmtree) via hook."""
    import shutil

    for mod, fn in ((os, "fsync"), (os, "replace"), (os, "rename"), (shutil, "rmtree")):
        ops.setattr(mod, fn, hook(getattr(mod, fn)))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_kill_9_at_every_point_of_a_checkpoint_save_leaves_a_loadable_checkpoint(tmp_path):
    """A child process saves step 2 over step 1 and is SIGKILLed just before its k-th
    file-system operation (each fsync, rename and removal), for every k: the parent then finds
    a complete checkpoint of step 1 or 2, and the next save cleans up."""
    m = _build("vae")
    ckpt = tmp_path / "ckpt"
    save_checkpoint(ckpt, m, None, None, 1)
    count = [0]

    def counted(real):
        def op(*a, **kw):
            count[0] += 1
            return real(*a, **kw)

        return op

    with pytest.MonkeyPatch.context() as mp:
        _watch(mp, counted)
        save_checkpoint(tmp_path / "count", m, None, None, 1)
        count[0] = 0
        save_checkpoint(tmp_path / "count", m, None, None, 2)  # a save replacing one
    n_points = count[0]
    assert n_points >= 8  # 4 files x (fsync, replace) + the swap
    steps = set()
    for k in range(n_points + 1):
        pid = os.fork()
        if pid == 0:  # the child: SIGKILL itself just before operation k
            try:

                def die_at_k(real, done=[0], k=k):  # noqa: B006 (one counter per child)
                    def op(*a, **kw):
                        if done[0] == k:
                            os.kill(os.getpid(), signal.SIGKILL)
                        done[0] += 1
                        return real(*a, **kw)

                    return op

                _watch(pytest.MonkeyPatch(), die_at_k)
                save_checkpoint(ckpt, m, None, None, 2)
            finally:
                os._exit(0)  # k past the last operation: the save completed
        _, status = os.waitpid(pid, 0)
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        assert killed == (k < n_points), f"point {k}: status {status}"
        assert has_checkpoint(ckpt), f"kill at point {k}: no checkpoint left"
        steps.add(checkpoint_step(ckpt))
        load_weights(ckpt, _build("vae"))  # every file verifies
        save_checkpoint(ckpt, m, None, None, 1)  # the next save tidies up; reset for point k+1
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("ckpt")) == ["ckpt"]
    assert steps == {1, 2}  # early kills keep the old checkpoint, late ones give the new one
