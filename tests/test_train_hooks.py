"""Trainer hooks (issue 10 item 5): parameter groups with lr scales, `on_step`, frozen modules."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from diffrep.checkpoint import load_checkpoint, load_state, load_weights, save_checkpoint
from diffrep.data import load_dataset
from diffrep.errors import UserError
from diffrep.methods.base import Method
from diffrep.nets.freeze import freeze, frozen_modules, trainable_state_dict
from diffrep.train import EMA, TrainConfig, param_groups, train


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", "train").subset(slice(0, 200))


def _cfg(**kw):
    base = dict(steps=8, batch_size=16, lr=1e-2, warmup=0, log_every=2, ckpt_every=0, ema=0.9)
    base.update(kw)
    return TrainConfig(**base)


def _state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def _assert_bitwise(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


class Teacher(nn.Module):
    """A fixed feature map with dropout and a running buffer: eval mode must hold."""

    frozen = True

    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, 5), nn.Dropout(0.5))
        self.register_buffer("scale", torch.full((5,), 2.0))

    def forward(self, x):
        return self.net(x) * self.scale


class Student(Method):
    """Regresses a frozen teacher's features; `anneal` follows `on_step` (a pure function)."""

    def __init__(self, data_shape, careless: bool = False, scales=(1.0, 1.0)):
        super().__init__(data_shape)
        self.teacher = Teacher(self.dim)
        if not careless:  # careless: leave requires_grad on; the trainer must still freeze it
            freeze(self.teacher)
        self.enc = nn.Linear(self.dim, 5)
        self.head = nn.Linear(5, 5)
        self.scales = scales
        self.anneal = 0.0
        self.calls: list[tuple[int, int]] = []

    def param_groups(self):
        return [
            {"name": "enc", "params": list(self.enc.parameters()), "lr_scale": self.scales[0]},
            {"name": "head", "params": list(self.head.parameters()), "lr_scale": self.scales[1]},
        ]

    def on_step(self, step, total_steps):
        self.calls.append((step, total_steps))
        self.anneal = min(step / 4, 1.0)

    def loss(self, batch):
        x = batch["x0"].flatten(1)  # [B, D]
        target = self.teacher(x)  # [B, 5]
        pred = self.head(torch.tanh(self.enc(x + 0.1 * torch.randn_like(x))))
        err = ((pred - target) ** 2).sum(1)  # [B]
        return {"loss": (0.5 + self.anneal) * err, "err": err}


def _student(seed=0, **kw):
    torch.manual_seed(seed)
    return Student((1, 8, 8), **kw)


def test_frozen_teacher_is_fixed_unsaved_and_resume_is_exact(tmp_path, digits):
    full = _student()
    teacher0 = _state(full.teacher)
    out = train(full, digits, tmp_path / "a", _cfg(), eval_hook=lambda m, s: {"n": 1.0})
    assert out["step"] == 8
    _assert_bitwise(_state(full.teacher), teacher0)  # bit-identical after training
    assert not full.teacher.training and full.enc.training  # eval mode after method.train()
    ckpt = tmp_path / "a" / "checkpoint"
    for name in ("model.safetensors", "ema.safetensors"):
        keys = set(load_file(ckpt / name))
        assert keys == {"enc.weight", "enc.bias", "head.weight", "head.bias"}, name
    opt_params = [p for g in load_state(ckpt)["optimizer"]["param_groups"] for p in g["params"]]
    assert len(opt_params) == 4  # enc and head weights and biases; no teacher
    assert [(g["name"], g["n_params"]) for g in load_state(ckpt)["extra"]["param_groups"]] == [
        ("enc", 64 * 5 + 5),
        ("head", 5 * 5 + 5),
    ]

    part = _student()
    train(part, digits, tmp_path / "b", _cfg(steps=4))
    resumed = _student(seed=1)  # other trainable weights; the teacher comes from "its source"
    resumed.teacher.load_state_dict(teacher0)
    train(resumed, digits, tmp_path / "b", _cfg(), resume=True)
    _assert_bitwise(_state(full), _state(resumed))
    assert [c for c in resumed.calls] == [(s, 8) for s in range(4, 8)]  # on_step: step, total
    ema_a = load_checkpoint(ckpt, _student())["ema_state"]
    ema_b = load_checkpoint(tmp_path / "b" / "checkpoint", _student())["ema_state"]
    _assert_bitwise(ema_a, ema_b)
    assert set(ema_a) == {"enc.weight", "enc.bias", "head.weight", "head.bias"}

    # loading tolerates the frozen keys' absence and keeps the method's own teacher
    fresh = _student(seed=2)
    teacher2 = _state(fresh.teacher)
    load_weights(ckpt, fresh)
    _assert_bitwise(_state(fresh.teacher), teacher2)
    _assert_bitwise(trainable_state_dict(fresh), ema_a)


def test_loading_still_refuses_missing_trainable_keys(tmp_path):
    m = _student()
    sd = trainable_state_dict(m)
    del sd["head.bias"]

    class Partial(nn.Module):
        def __init__(self):
            super().__init__()
            for k, v in sd.items():
                self.register_buffer(k.replace(".", "_"), v)

        def state_dict(self, *a, **kw):
            return dict(sd)

    save_checkpoint(tmp_path / "c", Partial(), None, None, 1)
    with pytest.raises(UserError, match=r"missing keys \['head.bias'\]"):
        load_weights(tmp_path / "c", _student())


def test_careless_frozen_module_is_frozen_by_the_trainer(tmp_path, digits):
    m = _student(careless=True)
    assert all(p.requires_grad for p in m.teacher.parameters())
    teacher0 = _state(m.teacher)
    train(m, digits, tmp_path / "r", _cfg(steps=3))
    assert not any(p.requires_grad for p in m.teacher.parameters())
    _assert_bitwise(_state(m.teacher), teacher0)
    assert list(frozen_modules(m)) == ["teacher"]


def test_ema_skips_frozen_modules():
    m = _student()
    ema = EMA(m, 0.9)
    assert not any(k.startswith("teacher.") for k in ema.state)
    with torch.no_grad():
        m.enc.weight.add_(1.0)
        m.teacher.net[0].weight.add_(1.0)  # (never happens in training) is not averaged
    ema.update(m)
    assert not any(k.startswith("teacher.") for k in ema.state)
    # d = min(0.9, 1/10): ema = 0.1 old + 0.9 new = new - 0.1
    assert torch.allclose(ema.state["enc.weight"], m.enc.weight - 0.1)


def test_lr_scales_set_each_groups_step_size(tmp_path, digits):
    # Adam's first step moves every weight by lr * lr_scale (m / sqrt(v) = sign(g)).
    m = _student(scales=(1.0, 0.25))
    before = _state(m)
    cfg = _cfg(steps=1, lr=1e-3, ema=0.0, grad_clip=0.0)
    train(m, digits, tmp_path / "r", cfg)
    moved = {
        k: (m.state_dict()[k] - before[k]).abs().max().item() for k in ("enc.bias", "head.bias")
    }
    assert moved["enc.bias"] == pytest.approx(1e-3, rel=1e-3)
    assert moved["head.bias"] == pytest.approx(0.25e-3, rel=1e-3)
    opt = load_state(tmp_path / "r" / "checkpoint")["optimizer"]
    assert [g["lr"] for g in opt["param_groups"]] == pytest.approx([1e-3, 0.25e-3])


def test_resume_uses_the_methods_current_lr_scales(tmp_path, digits):
    train(_student(), digits, tmp_path / "r", _cfg(steps=2))
    m = _student(scales=(0.0, 1.0))  # the checkpoint's groups say 1.0: the method's scale wins
    load_checkpoint(tmp_path / "r" / "checkpoint", m)
    before = _state(m)
    train(m, digits, tmp_path / "r", _cfg(steps=4), resume=True)
    assert torch.equal(m.enc.weight, before["enc.weight"])  # lr 0 for "enc" after the resume
    assert not torch.equal(m.head.weight, before["head.weight"])
    opt = load_state(tmp_path / "r" / "checkpoint")["optimizer"]
    assert [(g["name"], g["lr_scale"]) for g in opt["param_groups"]] == [
        ("enc", 0.0),
        ("head", 1.0),
    ]


def test_param_groups_are_checked():
    m = _student()
    m.param_groups = lambda: [{"name": "enc", "params": list(m.enc.parameters())}]
    with pytest.raises(ValueError, match="leaves out trainable parameters.*head"):
        param_groups(m)
    m.param_groups = lambda: [
        {"name": "a", "params": list(m.parameters())},
        {"name": "b", "params": list(m.head.parameters())},
    ]
    with pytest.raises(ValueError, match="more than one parameter group"):
        param_groups(m)
    m.param_groups = lambda: [{"name": "a", "params": list(m.parameters()), "lr_scale": -1}]
    with pytest.raises(ValueError, match="lr_scale must be >= 0"):
        param_groups(m)
    # the default: one group "all" of the trainable parameters (the teacher's are left out)
    groups = param_groups(_plain_method())
    assert [(g["name"], g["lr_scale"], len(g["params"])) for g in groups] == [("all", 1.0, 2)]


def _plain_method():
    class Plain(Method):
        def __init__(self):
            super().__init__((1, 2, 2))
            self.lin = nn.Linear(4, 4)
            self.teacher = freeze(Teacher(4))

    return Plain()
