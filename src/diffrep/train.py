"""The trainer: a plain PyTorch loop around `method.loss(batch)["loss"].mean()`.

AdamW with linear warm-up (then constant or cosine), gradient-norm clipping, an EMA of the whole
state dict, seeded data order, periodic evaluation, atomic checkpoints with exact resume, clean
stop on SIGTERM/SIGINT, a clear error on a non-finite loss, and multi-process data parallelism
under torchrun (DDP). The trainer knows nothing else about a method: every other entry of the
dict that `loss` returns is averaged and logged. Two optional hooks: `method.param_groups()`
(AdamW groups, each with an lr_scale on the schedule) and `method.on_step(step, total_steps)`
(before each step's loss: annealing). Submodules with `frozen = True` (`diffrep.nets.freeze`)
are not trained, averaged, clipped or checkpointed.

How the CLI (or a script) calls it:

    from diffrep.train import TrainConfig, seed_everything, train
    seed_everything(cfg.train.seed)                  # before building: seeds the initial weights
    data = load_dataset("digits", "train")
    method = build_method("vae", data.shape, latent_dim=8)
    summary = train(method, data, "runs/vae", TrainConfig(steps=2000), resume=False,
                    eval_hook=lambda m, step: {"recon_mse": ...})
    # summary: {"step", "loss", <other loss terms>, "grad_norm", "steps_per_s", "interrupted", ...}

Multi-GPU / multi-process (the same call; torchrun sets WORLD_SIZE/RANK/LOCAL_RANK):

    torchrun --standalone --nproc_per_node=4 -m diffrep.cli train CONFIG --out RUN_DIR

`batch_size` is the global batch; each of the W processes takes batch_size / W of it, so a run
follows the same data order whatever W is. Only rank 0 writes files.

Files under RUN_DIR: checkpoint/ (see `diffrep.checkpoint`), metrics.jsonl (one JSON object per
log step: step, lr, loss terms, grad_norm, steps_per_s; and {"step", "eval": {...}} rows),
tb/ (TensorBoard, when the tensorboard package is installed).

Exactness: on CPU, N steps + stop + `resume=True` for N more steps gives bit-identical weights to
2N uninterrupted steps (the checkpoint holds the optimizer, the EMA, the data-order generator and
every RNG state). On GPU, cuDNN/atomics may make runs differ in the last bits.
"""

from __future__ import annotations

import json
import math
import re
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from diffrep import distributed as dist_utils
from diffrep.checkpoint import (
    atomic_write_bytes,
    capture_rng_state,
    has_checkpoint,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from diffrep.errors import UserError
from diffrep.jsonutil import dumps, flatten, to_jsonable
from diffrep.nets.freeze import apply_frozen, frozen_modules, trainable_state_dict

_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?|xpu(:\d+)?)$")


@dataclass(frozen=True)
class TrainConfig:
    """The `train:` section of a config. Defaults suit a few-minute CPU run on small images."""

    steps: int = 2000  # optimizer steps in total (a resumed run continues up to this)
    # Wall-clock budget in minutes (0: none): training ends after `steps` or once this much
    # training time is spent, whichever comes first, and the cosine decay runs over whichever
    # budget is further along, so the learning rate reaches min_lr when the time runs out.
    max_minutes: float = 0.0
    batch_size: int = 64  # global batch (split across processes under torchrun)
    lr: float = 1e-3  # peak learning rate
    lr_schedule: Literal["constant", "cosine"] = "constant"  # after warm-up
    min_lr: float = 0.0  # final learning rate of the cosine schedule
    warmup: int = 100  # linear warm-up steps from lr/warmup to lr
    weight_decay: float = 0.0  # decoupled (AdamW)
    betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    ema: float = 0.999  # EMA decay of the weights; 0 disables
    ema_warmup: bool = True  # effective decay min(ema, (1 + n) / (10 + n)) after n updates
    seed: int = 0  # data order and the loss's noise (model init is seeded by the caller)
    log_every: int = 50  # steps between metrics.jsonl rows
    eval_every: int = 0  # steps between eval_hook calls; 0: only at the end (if a hook is given)
    ckpt_every: int = 500  # steps between checkpoints; 0: only at the end
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast on the forward pass
    # Speed options that keep the maths (benchmarks/bench_train_step.py measures them): the
    # fused AdamW kernel (1.11x on a 2-core CPU, last digits of the weights differ from the
    # default loop, so seeded results change) and torch.compile of the loss (minutes to
    # compile on a CPU; pays on GPUs and long runs). Off by default: seeded runs reproduce.
    fused_optimizer: bool = False
    compile: bool = False
    tensorboard: bool = True  # also log to RUN_DIR/tb when tensorboard is installed
    find_unused_parameters: bool = False  # DDP: set True if the loss skips some parameters

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(msg)

        need(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        need(
            math.isfinite(self.max_minutes) and self.max_minutes >= 0,
            f"max_minutes must be >= 0 (0: no time budget), got {self.max_minutes}",
        )
        need(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        need(math.isfinite(self.lr) and self.lr > 0, f"lr must be a positive number, got {self.lr}")
        need(0 <= self.min_lr <= self.lr, f"min_lr must be in [0, lr={self.lr}], got {self.min_lr}")
        need(self.warmup >= 0, f"warmup must be >= 0 steps, got {self.warmup}")
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        need(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            f"betas must be two numbers in [0, 1), got {self.betas}",
        )
        need(self.adam_eps > 0, f"adam_eps must be > 0, got {self.adam_eps}")
        need(self.grad_clip >= 0, f"grad_clip must be >= 0 (0 disables), got {self.grad_clip}")
        need(0 <= self.ema < 1, f"ema must be in [0, 1) (0 disables), got {self.ema}")
        need(self.log_every >= 1, f"log_every must be >= 1, got {self.log_every}")
        need(
            self.eval_every >= 0, f"eval_every must be >= 0 (0: at the end), got {self.eval_every}"
        )
        need(
            self.ckpt_every >= 0, f"ckpt_every must be >= 0 (0: at the end), got {self.ckpt_every}"
        )
        need(
            bool(_DEVICE_RE.match(self.device)),
            f"device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}",
        )


# --------------------------------------------------------------------------- small parts


def seed_everything(seed: int) -> None:
    """Seed torch (all devices), numpy and python's `random` (e.g. before building a method)."""
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """ "auto" -> cuda:LOCAL_RANK if CUDA is available, else cpu; checks availability."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"train.device={name!r} but CUDA is not available; fix: device=cpu")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
        if dev.index >= torch.cuda.device_count():
            raise UserError(
                f"train.device={name!r} but only {torch.cuda.device_count()} GPU(s) are visible"
            )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"train.device={name!r} but MPS is not available; fix: device=cpu")
    return dev


def lr_at(step: int, cfg: TrainConfig, time_frac: float = 0.0) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warm-up, then constant/cosine.

    `time_frac`: the fraction of `max_minutes` already spent; the cosine follows whichever of
    the step and time budgets is further along.
    """
    if cfg.warmup > 0 and step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.lr_schedule == "constant":
        return cfg.lr
    span = max(cfg.steps - cfg.warmup, 1)
    progress = min(max(max(step - cfg.warmup, 0) / span, time_frac), 1.0)
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


class EMA:
    """Exponential moving average of a module's weights, kept as a whole state dict.

    Parameters: ema <- d ema + (1 - d) theta after every optimizer step, starting from the
    initial weights, with d = min(decay, (1 + n) / (10 + n)) after n updates when `warmup` is on
    (early averages are then not dominated by the random initialisation). Buffers (running
    statistics, counters, fixed tables) are copied, so the EMA state is a complete, consistent
    state dict that `load_state_dict` accepts. Frozen submodules (`diffrep.nets.freeze`) are
    left out: their weights never change, and checkpoints do not store them.
    """

    def __init__(self, module: nn.Module, decay: float, warmup: bool = True):
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        # remove_duplicate=False: every name of a tied parameter is averaged, not copied.
        self.param_names = {n for n, _ in module.named_parameters(remove_duplicate=False)}
        self.state = {k: v.detach().clone() for k, v in trainable_state_dict(module).items()}

    def current_decay(self) -> float:
        if self.warmup:
            return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        return self.decay

    def _entries(self, module: nn.Module) -> list | None:
        """[(ema tensor, owner submodule, attribute name, averaged?)] for every key of the state,
        found once per (module, state) pair: module.state_dict() walks the whole module tree
        each call (1.5 ms a step for a small U-Net, as much as the averaging itself). The owner
        and name are kept, not the tensor, so a later `module.to(...)` is still seen. None when
        a key is not a plain attribute (a custom state_dict hook): then state_dict() each time."""
        cached = getattr(self, "_cache", None)
        if cached is not None and cached[0] is self.state and cached[1] is module:
            return cached[2]
        entries = []
        for k, e in self.state.items():
            owner_name, _, attr = k.rpartition(".")
            try:
                owner = module.get_submodule(owner_name)
            except AttributeError:
                return None
            if not isinstance(getattr(owner, attr, None), torch.Tensor):
                return None
            entries.append((e, owner, attr, k in self.param_names and e.is_floating_point()))
        self._cache = (self.state, module, entries)
        return entries

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        d = self.current_decay()
        avg, live = [], []
        entries = self._entries(module)
        if entries is None:
            sd = module.state_dict()
            entries = [(e, sd, k, k in self.param_names and e.is_floating_point())
                       for k, e in self.state.items()]  # fmt: skip
        for e, owner, attr, averaged in entries:
            v = owner[attr] if isinstance(owner, dict) else getattr(owner, attr)
            if averaged:
                avg.append(e)
                live.append(v.detach() if v.dtype == e.dtype else v.detach().to(e.dtype))
            else:
                e.copy_(v)
        # e + (1-d)(v - e) = d e + (1-d) v for all parameters in one call (the same lerp kernel
        # per tensor, without a Python-level op per tensor)
        if avg:
            torch._foreach_lerp_(avg, live, 1.0 - d)
        self.num_updates += 1


class _BatchStream:
    """Global batches of indices from concatenated random permutations (a seeded generator).

    The pending indices and the generator state are checkpointed, so a resumed run draws
    exactly the batches an uninterrupted one would.
    """

    def __init__(self, n: int, seed: int):
        self.n = n
        self.gen = torch.Generator().manual_seed(seed)
        self.pending = torch.empty(0, dtype=torch.int64)

    def next(self, size: int) -> torch.Tensor:
        while self.pending.numel() < size:
            self.pending = torch.cat([self.pending, torch.randperm(self.n, generator=self.gen)])
        idx, self.pending = self.pending[:size], self.pending[size:]
        return idx

    def state_dict(self) -> dict[str, Any]:
        return {"n": self.n, "generator": self.gen.get_state(), "pending": self.pending.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["n"]) != self.n:
            raise UserError(
                f"the checkpoint was trained on {state['n']} images but the data has {self.n}; "
                "fix: resume with the run's own data config or start a new run"
            )
        self.gen.set_state(state["generator"])
        self.pending = state["pending"].clone()


class _StopSignals:
    """Turn SIGTERM/SIGINT into a flag checked between steps; a second signal aborts at once."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested is not None:  # second signal: the user really wants out
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():  # handlers: main thread only
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class _Logger:
    """metrics.jsonl (+ TensorBoard) on rank 0; a no-op elsewhere."""

    def __init__(self, out_dir: Path, enabled: bool, resume_step: int | None, tensorboard: bool):
        self.enabled = enabled
        self.path = out_dir / "metrics.jsonl"
        self.tb = None
        if not enabled:
            return
        if resume_step is None:
            self.path.write_text("")
        else:
            self._truncate_after(resume_step)
        if tensorboard:
            try:  # lazy: torch.utils.tensorboard needs the tensorboard package
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out_dir / "tb"), purge_step=resume_step)
            except ImportError:
                self.tb = None

    def _truncate_after(self, step: int) -> None:
        # Rows logged after the checkpoint we resume from would be repeated: drop them.
        if not self.path.is_file():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                if int(json.loads(line)["step"]) <= step:
                    keep.append(line)
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line from a crash
        atomic_write_bytes(self.path, "".join(l + "\n" for l in keep).encode())

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(dumps(row) + "\n")
        if self.tb is not None:
            step = row["step"]
            for k, v in flatten(to_jsonable(row), sep="/").items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def check_data(method: nn.Module, data: Any, cfg: TrainConfig, world: int) -> None:
    images = getattr(data, "images", None)
    if not isinstance(images, np.ndarray) or images.ndim != 4 or images.dtype != np.uint8:
        raise UserError("training data must be an ImageData with uint8 images [N, C, H, W]")
    if len(images) == 0:
        raise UserError(f"the training set {getattr(data, 'name', '')!r} is empty; fix: the split")
    want = getattr(method, "data_shape", None)
    if want is not None and tuple(want) != tuple(images.shape[1:]):
        raise UserError(
            f"the method was built for images {tuple(want)} but the data has "
            f"{tuple(images.shape[1:])}; fix: build the method with data.shape"
        )
    if cfg.batch_size > len(images):
        raise UserError(
            f"train.batch_size={cfg.batch_size} is larger than the {len(images)} training images "
            f"(every batch would repeat images); fix: train.batch_size <= {len(images)}"
        )
    if cfg.batch_size % world:
        raise UserError(
            f"train.batch_size={cfg.batch_size} does not split over {world} processes; "
            f"fix: a multiple of {world}"
        )


# Changing these between a checkpoint and a resume breaks exact continuation (but is allowed).
_TRAJECTORY_KEYS = (
    "batch_size",
    "lr",
    "lr_schedule",
    "min_lr",
    "max_minutes",
    "warmup",
    "weight_decay",
    "betas",
    "adam_eps",
    "grad_clip",
    "ema",
    "ema_warmup",
    "seed",
    "precision",
    "fused_optimizer",
)


# --------------------------------------------------------------------------- optimizer


def param_groups(method: nn.Module) -> list[dict[str, Any]]:
    """The method's parameter groups, checked: [{"name", "params", "lr_scale"}].

    `method.param_groups()` when it has one (`diffrep.methods.base.Method`), else one group
    "all". Parameters of frozen submodules or with requires_grad False are left out; every
    other parameter must be in exactly one group; groups left empty are dropped.
    """
    fixed = {id(p) for m in frozen_modules(method).values() for p in m.parameters()}
    trainable = [p for p in method.parameters() if p.requires_grad and id(p) not in fixed]
    if hasattr(method, "param_groups"):
        raw = method.param_groups()
    else:
        raw = [{"name": "all", "params": trainable, "lr_scale": 1.0}]
    names = {id(p): n for n, p in method.named_parameters()}
    seen: set[int] = set()
    groups = []
    for i, g in enumerate(raw):
        name = str(g.get("name", f"group{i}"))
        scale = float(g.get("lr_scale", 1.0))
        if not (math.isfinite(scale) and scale >= 0):
            raise ValueError(f"parameter group {name!r}: lr_scale must be >= 0, got {scale}")
        params = [p for p in g["params"] if p.requires_grad and id(p) not in fixed]
        twice = [names.get(id(p), "?") for p in params if id(p) in seen]
        if twice:
            raise ValueError(f"parameters {twice[:3]} are in more than one parameter group")
        seen.update(id(p) for p in params)
        if params:
            groups.append({"name": name, "params": params, "lr_scale": scale})
    left_out = [names.get(id(p), "?") for p in trainable if id(p) not in seen]
    if left_out:
        raise ValueError(
            f"{type(method).__name__}.param_groups() leaves out trainable parameters "
            f"{left_out[:5]}; put them in a group (lr_scale 0 keeps them fixed) or freeze them"
        )
    if not groups:
        raise UserError(f"{type(method).__name__} has no trainable parameters")
    if len({g["name"] for g in groups}) != len(groups):
        raise ValueError(f"parameter group names repeat: {[g['name'] for g in groups]}")
    return groups


def describe_param_groups(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """[{"name", "n_params" (scalars), "lr_scale"}] of parameter groups (for run records)."""
    return [
        {
            "name": g["name"],
            "n_params": sum(p.numel() for p in g["params"]),
            "lr_scale": g["lr_scale"],
        }
        for g in groups
    ]


def build_optimizer(groups: list[dict[str, Any]], cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over the groups; each group keeps its "name" and "lr_scale" (see `set_lr`).

    On a CPU the multi-tensor (foreach) implementation: torch picks it by default only on GPUs,
    yet on a CPU it gives the same bits as the per-tensor loop (tests/test_train.py) and takes
    2 ms less a step for a 0.14M-parameter U-Net (3.9 vs 5.8 ms: one call per operation over all
    100 tensors instead of one per tensor)."""
    params = [p for g in groups for p in g["params"]]
    on_cpu = all(p.device.type == "cpu" for p in params)
    return torch.optim.AdamW(
        [dict(g) for g in groups],
        lr=cfg.lr,
        betas=tuple(cfg.betas),
        eps=cfg.adam_eps,
        weight_decay=cfg.weight_decay,
        fused=True if cfg.fused_optimizer else None,
        foreach=True if on_cpu and not cfg.fused_optimizer else None,
    )


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    """Each group's learning rate = the scheduled `lr` * the group's lr_scale."""
    for g in opt.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)


# --------------------------------------------------------------------------- one training call


@dataclass(eq=False)
class _Run:
    """What one `train` call builds once (setup) and the loop, the checkpoints and the
    evaluations share. `step` and `train_time` move; the rest is fixed after setup."""

    cfg: TrainConfig
    method: nn.Module
    data: Any
    out_dir: Path
    info: Any  # dist_utils.DistInfo
    device: torch.device
    rank: int
    opt: torch.optim.Optimizer
    groups: list[dict[str, Any]]
    ema: EMA | None
    stream: _BatchStream
    step: int = 0
    time_before: float = 0.0  # training seconds spent by earlier calls (a resumed run)
    # Training seconds so far, averaged over ranks in the per-step collective so every rank
    # sees the same value: the learning rate and the time-budget stop must agree across ranks.
    train_time: float = 0.0
    model: nn.Module | None = None  # the loss module (DDP-wrapped when distributed)
    logger: _Logger | None = None

    @property
    def ckpt_dir(self) -> Path:
        return self.out_dir / "checkpoint"

    @property
    def budget_s(self) -> float:
        return 60.0 * self.cfg.max_minutes


def _check_run_dir(out_dir: Path, resume: bool) -> None:
    ckpt_dir = out_dir / "checkpoint"
    if resume and not has_checkpoint(ckpt_dir):
        raise UserError(f"nothing to resume: {ckpt_dir} holds no checkpoint; fix: drop --resume")
    if not resume and has_checkpoint(ckpt_dir):
        raise UserError(
            f"{out_dir} already holds a checkpoint; fix: pass --resume to continue it, or train "
            "into a new directory"
        )


def _setup(
    method: nn.Module, data: Any, out_dir: Path, cfg: TrainConfig, info, device, rank: int
) -> _Run:
    """Device, frozen parts, optimizer, EMA, data order and the loss's RNG of a fresh run."""
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    apply_frozen(method)  # before the groups: frozen parameters never reach the optimizer
    method.to(device).train()
    groups = param_groups(method)
    opt = build_optimizer(groups, cfg)
    ema = EMA(method, cfg.ema, cfg.ema_warmup) if cfg.ema > 0 else None
    stream = _BatchStream(len(data), seed=cfg.seed ^ 0x5DEECE66D)  # differs from torch's seed
    seed_everything(cfg.seed + rank)  # the loss's noise differs across ranks
    return _Run(cfg, method, data, out_dir, info, device, rank, opt, groups, ema, stream)


def _resume(run: _Run) -> None:
    """Restore weights, optimizer, EMA, data order, RNG states and time spent from the
    checkpoint; warn when options that shape the trajectory changed."""
    cfg, info = run.cfg, run.info
    ckpt = load_checkpoint(run.ckpt_dir, run.method, run.opt)
    # The saved groups' settings replace the current ones on load: the method's own win.
    for g, want in zip(run.opt.param_groups, run.groups):
        g["name"], g["lr_scale"] = want["name"], want["lr_scale"]
    run.step = int(ckpt["step"])
    extra = ckpt["extra"]
    if run.ema is not None:
        run.ema.state = ckpt["ema_state"]
        run.ema.num_updates = int(extra.get("ema_num_updates", run.step))
    run.stream.load_state_dict(extra["data"])
    run.time_before = float(extra.get("train_time_s", 0.0))
    rngs = ckpt["rng"] if isinstance(ckpt["rng"], list) else [ckpt["rng"]]
    if len(rngs) == info.world_size:
        restore_rng_state(rngs[run.rank])
    else:  # a different process count: exact continuation is impossible anyway
        seed_everything(cfg.seed + run.rank + 7919 * run.step)
    old = extra.get("train_config", {})
    changed = [
        k
        for k in _TRAJECTORY_KEYS
        if k in old and to_jsonable(old[k]) != to_jsonable(getattr(cfg, k))
    ]
    if changed and info.is_main:
        warnings.warn(
            f"resuming with changed train options {changed}: training continues but "
            "differs from an uninterrupted run",
            stacklevel=3,
        )


@dataclass
class _StepResult:
    lr: float
    terms: dict[str, torch.Tensor]
    loss: float  # mean over all ranks
    grad_norm: float
    stop_requested: bool  # a signal reached some rank


def _train_step(run: _Run, stop: _StopSignals, autocast, t_start: float) -> _StepResult:
    """One optimizer step: hook, lr, batch, loss, backward, clip, sync, step, EMA."""
    from diffrep.data import make_batch

    cfg, info, step = run.cfg, run.info, run.step
    if hasattr(run.method, "on_step"):
        run.method.on_step(step, cfg.steps)  # before the loss: annealing (a function of step)
    lr = lr_at(step, cfg, run.train_time / run.budget_s if run.budget_s else 0.0)
    set_lr(run.opt, lr)
    local_bs = cfg.batch_size // info.world_size
    idx = run.stream.next(cfg.batch_size)[run.rank * local_bs : (run.rank + 1) * local_bs].numpy()
    labels = getattr(run.data, "labels", None)
    batch = make_batch(
        run.data.images[idx], None if labels is None else labels[idx], device=run.device
    )
    with autocast:
        terms = run.model(batch)
    loss = terms["loss"].float().mean()
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
    params = [p for g in run.opt.param_groups for p in g["params"]]  # frozen ones are not here
    grads = [p.grad for p in params if p.grad is not None]
    gnorm = torch.nn.utils.get_total_norm(grads)  # what clip_grad_norm_ computes
    # clip_grad_norm_ multiplies every gradient by min(1, max_norm / (norm + 1e-6)); scaling by
    # exactly 1 changes nothing, so the multiplies are skipped then (same bits, fewer ops)
    if float(max_norm / (gnorm + 1e-6)) < 1.0:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, gnorm)
    # One collective per step: the mean loss, the grad norm (equal on all ranks after DDP's
    # all-reduce), the stop flag and the training time, so every rank takes the same learning
    # rate and stops at the same step.
    flag = 1.0 if stop.requested else 0.0
    now_s = run.time_before + time.perf_counter() - t_start
    sync = torch.tensor(
        [loss.item(), gnorm.item(), flag, now_s], dtype=torch.float64, device=run.device
    )
    sync = dist_utils.all_reduce_sum(sync, info).cpu()
    loss_val = sync[0].item() / info.world_size
    gnorm_val = sync[1].item() / info.world_size
    run.train_time = sync[3].item() / info.world_size
    if not math.isfinite(loss_val) or not math.isfinite(gnorm_val):
        what = "loss" if not math.isfinite(loss_val) else "gradient norm"
        kept = (
            f"the last good checkpoint in {run.ckpt_dir} was not touched"
            if has_checkpoint(run.ckpt_dir)
            else "no checkpoint was written (the run has no good weights yet)"
        )
        raise UserError(
            f"the {what} became {loss_val if what == 'loss' else gnorm_val} at step "
            f"{step + 1} (lr {lr:.3g}); fix: lower train.lr, raise train.warmup or "
            f"set train.grad_clip, and check the data for NaN/inf; {kept}"
        )
    run.opt.step()
    if run.ema is not None:
        run.ema.update(run.method)
    run.step += 1
    return _StepResult(lr, terms, loss_val, gnorm_val, sync[2].item() > 0)


class _Window:
    """The mean of every loss term and the grad norm over the steps since the last log row."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.n, self.gnorm_sum, self.t0 = 0, 0.0, time.perf_counter()

    def add(self, r: _StepResult) -> None:
        for k, v in r.terms.items():
            if isinstance(v, torch.Tensor) and v.is_floating_point():
                acc = self.sums.get(k)
                m = v.detach().float().mean()
                self.sums[k] = m if acc is None else acc + m
        self.n += 1
        self.gnorm_sum += r.grad_norm

    def row(self, step: int, lr: float, info) -> dict[str, Any]:
        """The log row (terms averaged over ranks too); starts a new window."""
        keys = sorted(self.sums)
        vals = torch.stack([self.sums[k] for k in keys]) / self.n
        vals = (dist_utils.all_reduce_sum(vals, info) / info.world_size).tolist()
        now = time.perf_counter()
        row = {
            "step": step,
            "lr": lr,
            **dict(zip(keys, vals)),
            "grad_norm": self.gnorm_sum / self.n,
            "steps_per_s": self.n / max(now - self.t0, 1e-9),
        }
        self.sums, self.n, self.gnorm_sum, self.t0 = {}, 0, 0.0, now
        return row


def _checkpoint(run: _Run) -> None:
    """Save a checkpoint at the current step (rank 0 writes; every rank's RNG state goes in)."""
    rng = dist_utils.gather_objects(capture_rng_state(), run.info)
    if run.info.is_main:
        ema = run.ema
        extra = {
            "data": run.stream.state_dict(),
            "ema_num_updates": ema.num_updates if ema is not None else 0,
            "train_config": to_jsonable(asdict(run.cfg)),
            "world_size": run.info.world_size,
            "train_time_s": run.train_time,
            "param_groups": describe_param_groups(run.groups),
        }
        save_checkpoint(
            run.ckpt_dir,
            run.method,
            ema.state if ema else None,
            run.opt,
            run.step,
            extra,
            rng_state=rng,
        )
    dist_utils.barrier(run.info)


def _evaluate(run: _Run, eval_hook: Callable[[nn.Module, int], dict]) -> dict:
    """Run `eval_hook` on the EMA weights (rank 0), leaving the training RNG stream untouched."""
    result: dict = {}
    method = run.method
    if run.info.is_main:
        rng = capture_rng_state()
        raw = {k: v.detach().clone() for k, v in trainable_state_dict(method).items()}
        strict = not frozen_modules(method)  # frozen submodules are not in these state dicts
        if run.ema is not None:
            method.load_state_dict(run.ema.state, strict=strict)
        method.eval()
        try:
            with torch.no_grad():
                result = dict(eval_hook(method, run.step) or {})
        finally:
            method.load_state_dict(raw, strict=strict)
            method.train()
            restore_rng_state(rng)
        run.logger.write({"step": run.step, "eval": result})
    dist_utils.barrier(run.info)
    return result


# --------------------------------------------------------------------------- the loop


def train(
    method: nn.Module,
    data: Any,
    out_dir: str | Path,
    cfg: TrainConfig,
    *,
    resume: bool = False,
    eval_hook: Callable[[nn.Module, int], dict] | None = None,
    progress: bool | None = None,
    callback: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Train `method` on `data` (an ImageData) into `out_dir`; return the final metrics.

    Args:
        resume: continue from out_dir/checkpoint (exactly; see the module docstring). Without
            it, an existing checkpoint is an error (never overwritten by a fresh run).
        eval_hook: `eval_hook(method, step) -> dict`, called on rank 0 with the EMA weights
            loaded, in eval mode and under no_grad, every `eval_every` steps and at the end;
            its RNG use does not perturb training. Results go to metrics.jsonl as {"step","eval"}.
        progress: tqdm bar; None shows it only when stderr is a terminal.
        callback: `callback(step, {"loss": ..., "lr": ...})` after every step (all ranks).

    The method's hooks: `param_groups()` (AdamW groups; each group's lr is the scheduled lr
    times its lr_scale) and `on_step(step, total_steps)` before each step's loss. Frozen
    submodules (`diffrep.nets.freeze`) are not trained, averaged, clipped or checkpointed.

    Returns {"step", "loss", <mean loss terms of the last log window>, "grad_norm", "lr",
    "steps_per_s", "time_s", "interrupted" (a signal stopped the run), "out_of_time" (the
    `max_minutes` budget ended it), "train_time_s" (including earlier calls when resumed),
    "eval" (last, if any)}.
    SIGTERM/SIGINT finish the current step, write a checkpoint and return (interrupted=True).
    A non-finite loss or gradient raises UserError naming the step; the checkpoint on disk is
    left as it was (the last good one).
    """
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    rank, local_rank, world = dist_utils.detect()
    device = resolve_device(cfg.device, local_rank)
    check_data(method, data, cfg, world)
    _check_run_dir(out_dir, resume)

    info = dist_utils.setup(device)
    run: _Run | None = None
    try:
        run = _setup(method, data, out_dir, cfg, info, device, rank)
        if resume:
            _resume(run)
        if cfg.max_minutes and run.time_before >= run.budget_s:
            raise UserError(
                f"{out_dir} has already trained {run.time_before / 60:.1f} minutes, the whole "
                f"train.max_minutes={cfg.max_minutes:g} budget; fix: raise train.max_minutes "
                "(or set it to 0) to train further"
            )
        run.logger = _Logger(out_dir, info.is_main, run.step if resume else None, cfg.tensorboard)
        run.model = dist_utils.wrap(method, info, device, cfg.find_unused_parameters)
        if cfg.compile:  # the loss module only: checkpoints keep the method's own names
            run.model = torch.compile(run.model)

        use_bar = (sys.stderr.isatty() if progress is None else progress) and info.is_main
        bar = tqdm(
            total=cfg.steps, initial=run.step, desc="train", disable=not use_bar, dynamic_ncols=True
        )
        window = _Window()
        t_start, start_step = time.perf_counter(), run.step
        run.train_time = run.time_before
        summary: dict[str, Any] = {}
        last_eval: dict | None = None
        interrupted = False
        autocast = torch.autocast(
            device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"
        )
        with _StopSignals() as stop:
            while run.step < cfg.steps:
                r = _train_step(run, stop, autocast, t_start)
                step = run.step
                window.add(r)
                bar.update(1)
                if use_bar and (step % 10 == 0 or step == cfg.steps):
                    bar.set_postfix(loss=f"{r.loss:.4g}", refresh=False)
                if callback is not None:
                    callback(step, {"loss": r.loss, "lr": r.lr, "grad_norm": r.grad_norm})
                out_of_time = run.budget_s > 0 and run.train_time >= run.budget_s
                last = step == cfg.steps or r.stop_requested or out_of_time
                if step % cfg.log_every == 0 or last:
                    summary = window.row(step, r.lr, info)
                    run.logger.write(summary)
                if eval_hook is not None and (
                    (cfg.eval_every and step % cfg.eval_every == 0)
                    or (last and not r.stop_requested)
                ):
                    last_eval = _evaluate(run, eval_hook)
                if (cfg.ckpt_every and step % cfg.ckpt_every == 0) or last:
                    _checkpoint(run)
                if r.stop_requested:
                    interrupted = True
                    break
                if out_of_time:
                    break
        bar.close()
        elapsed = time.perf_counter() - t_start
        step = run.step
        summary = dict(summary) if summary else {"step": step}
        summary.update(
            step=step,
            interrupted=interrupted,
            out_of_time=run.budget_s > 0 and run.train_time >= run.budget_s and not interrupted,
            train_time_s=run.train_time,
            time_s=elapsed,
            steps_per_s=(step - start_step) / max(elapsed, 1e-9) if step > start_step else 0.0,
        )
        if interrupted and info.is_main:
            print(
                f"stopped by {stop.requested} after step {step}; checkpoint written to "
                f"{run.ckpt_dir}; continue with --resume",
                file=sys.stderr,
            )
        if last_eval is not None:
            summary["eval"] = last_eval
        return summary
    finally:
        if run is not None and run.logger is not None:
            run.logger.close()
        dist_utils.teardown(info)
