"""Frozen pre-trained diffusion models: a denoiser and its schedule that nothing trains.

PDAE (seed 002) keeps a pre-trained DPM fixed and learns only what fills its posterior-mean gap;
such a base comes from a diffrep run or from a local diffusers folder:

    base = load_frozen("run:runs/ddpm-mnist")          # a diffrep `ddpm` or `vdm` run (EMA weights)
    base = load_frozen("diffusers:models/ddpm-mnist")  # UNet2DModel + DDPM/DDIM scheduler config
    eps_hat = base.denoiser(x_t, t)                    # x_t [B, C, H, W], t float [B] in [0, 1]
    S.ddim(base.denoiser, base.schedule, x_T, steps)   # diffrep's samplers, objectives, inversions

A `FrozenDPM` is an `nn.Module` with the class attribute `frozen = True`: its parameters have
`requires_grad` off, it stays in eval mode (also after the parent's `.train()`), and the trainer
leaves it out of the optimizer, the EMA, gradient clipping and the checkpoint
(`diffrep.nets.freeze`): a method's checkpoint never holds the base's weights. `.schedule` is a
diffrep `Schedule` (gamma(t) = -logSNR(t), float64), so everything written in gamma works on it
unchanged. `cond` is accepted and ignored (the base is unconditional), so the base can sit under
`guided`/`switch`.

Dependencies. A method that holds a FrozenDPM depends on files outside its run directory.
`dependencies(method)` lists them ({"spec", "kind", "path", "sha256", "files"}); `diffrep.runs`
writes that list into run.json and, when the run is rebuilt, wraps the method's construction in
`expect_dependencies(records, where)`: `load_frozen` then reads each base from its recorded
(absolute) path, or where the spec itself points when that path is gone (a moved project), and
checks its sha256 before loading it; a missing or changed base is a `UserError` naming it.
Methods need to know nothing of this: holding the FrozenDPM is enough.

sha256: of the one weights file (run: `checkpoint/ema.safetensors`, so `sha256sum` agrees); for
several files (diffusers: the weights, the UNet config and the scheduler config, each of which
changes the model), the sha256 of their `sha256sum`-style listing "<sha>  <relative path>\\n",
sorted by path.

diffusers convention (Ho et al. 2020 indexing). diffusers' timestep k = 0..T-1 is Ho's x_{k+1}:
alphas_cumprod[k] = prod_{j <= k} (1 - beta_j). diffrep's ddpm puts x_i at t = i / T with x_0
the data, so t = i / T <-> timestep i - 1, and gamma(i / T) = log((1 - abar) / abar) with
abar = alphas_cumprod[i - 1] (gamma(0) = -inf, the data). Between grid points the schedule
interpolates -log abar linearly in t (as diffrep's DDPM schedules) and the network gets the
fractional timestep t T - 1 (its sinusoidal embedding takes any real), clamped at 0 for
t < 1 / T; grid t (within 1e-3 of a step) are snapped to the integer timestep, so on the grid
the adapter is exactly the model as diffusers calls it. Images are in [-1, 1] on both sides.
prediction_type "epsilon" is used as is; "v_prediction" and "sample" are converted to eps
(eps = sigma z + alpha v; eps = (z - alpha x0) / sigma). Models with a learned variance
(out_channels = 2 C) give eps as their first C channels.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffrep.diffusion import process as P
from diffrep.diffusion.schedules import DiscreteBetaSchedule, Schedule
from diffrep.errors import UserError
from diffrep.nets.freeze import freeze
from diffrep.registry import Registry

F64 = torch.float64

#: "run" / "diffusers" -> loader(path: Path, spec: str) -> FrozenDPM
SOURCES: Registry[FrozenDPM] = Registry("frozen model source")

_SPEC_FIX = "fix: write run:RUN_DIR (a diffrep ddpm/vdm run) or diffusers:DIR (a local folder)"


# --------------------------------------------------------------------------- the module


class FrozenDPM(nn.Module):
    """A pre-trained unconditional DPM that stays frozen: `denoiser`, `schedule`, `net`."""

    #: The trainer leaves modules with `frozen = True` out of optimizer, EMA, clipping, checkpoint.
    frozen = True

    def __init__(self, spec: str, path: Path, files: dict[str, str], data_shape, T: int = 0):
        super().__init__()
        self.source = spec  # as the user wrote it
        self.path = Path(path)  # resolved, absolute
        self.files = dict(files)  # relative path -> sha256
        self.data_shape = tuple(int(s) for s in data_shape)  # (C, H, W)
        self.T = int(T)  # training steps of a discrete-time model (0: continuous time)
        self.clip_x0 = False  # what the base's own sampler does to x0_hat

    def _freeze(self) -> FrozenDPM:
        return freeze(self)  # requires_grad off, eval mode (diffrep.nets.freeze's convention)

    def train(self, mode: bool = True) -> FrozenDPM:
        return super().train(False)  # eval mode always (dropout off, norms fixed)

    @property
    def sha256(self) -> str:
        return digest(self.files)

    def dependency(self) -> dict[str, Any]:
        """What a run that uses this base records in its run.json."""
        kind = self.source.partition(":")[0]
        return {
            "spec": self.source, "kind": kind, "path": str(self.path),
            "sha256": self.sha256, "files": self.files,
        }  # fmt: skip

    def denoiser(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        """eps_hat(x_t, t): x_t [B, C, H, W], t float [B] in [0, 1]; `cond` is ignored."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"source={self.source!r}, data_shape={self.data_shape}, sha256={self.sha256[:12]}"


def load_frozen(spec: str, *, ema: bool = True) -> FrozenDPM:
    """A frozen DPM from "run:DIR" (a diffrep ddpm/vdm run; `ema`: its EMA weights) or
    "diffusers:DIR" (a local UNet2DModel folder with its scheduler config; never downloads).

    Inside `expect_dependencies(...)` (a run being rebuilt) the base is read from the path the
    run recorded and its sha256 must match the record.
    """
    kind, sep, rest = str(spec).partition(":")
    if not sep or not rest or kind not in SOURCES:
        raise UserError(f"frozen model {spec!r}: unknown form; {_SPEC_FIX}")
    expected = (_EXPECTED.get() or {}).get(spec)
    path = Path(rest).expanduser().resolve()
    if expected:
        path = _check_expected(spec, path, expected)
    elif not path.exists():
        raise UserError(f"frozen model {spec!r}: {path} does not exist; {_SPEC_FIX}")
    kw = {"ema": ema} if kind == "run" else {}
    return SOURCES.get(kind)(path, spec, **kw)._freeze()


def dependencies(module: nn.Module) -> list[dict[str, Any]]:
    """The frozen bases `module` holds (one record per spec), for run.json."""
    found = {m.source: m.dependency() for m in module.modules() if isinstance(m, FrozenDPM)}
    return list(found.values())


# --------------------------------------------------------------------------- recorded bases

_EXPECTED: contextvars.ContextVar[dict[str, dict] | None] = contextvars.ContextVar(
    "diffrep_expected_dependencies", default=None
)


@contextmanager
def expect_dependencies(records: list[dict[str, Any]] | None, where: str) -> Iterator[None]:
    """While rebuilding the run `where`, load its frozen bases as recorded (path, sha256)."""
    table = {r["spec"]: {**r, "where": where} for r in records or []}
    token = _EXPECTED.set({**(_EXPECTED.get() or {}), **table})
    try:
        yield
    finally:
        _EXPECTED.reset(token)


def _check_expected(spec: str, here: Path, rec: dict[str, Any]) -> Path:
    """The recorded path (else the spec's own, e.g. after moving a project) if its files still
    have their recorded sha256; a UserError naming the base otherwise."""
    where, recorded = rec["where"], Path(rec["path"])
    path = next((p for p in (recorded, here) if p.exists()), None)
    fix = f"fix: put the original base back at {recorded}, or retrain {where} on the base you have"
    if path is None:
        raise UserError(
            f"{where} depends on the base model {spec!r} at {recorded}, which is missing; {fix}"
        )
    now = {name: _sha256_file(path / name) for name in rec["files"] if (path / name).is_file()}
    if digest(now) != rec["sha256"] or set(now) != set(rec["files"]):
        changed = sorted(n for n in rec["files"] if now.get(n) != rec["files"][n])
        raise UserError(
            f"the base model {spec!r} of {where} changed since it was trained ({path}: "
            f"{', '.join(changed)} differ from the sha256 in run.json); {fix}"
        )
    return path


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def digest(files: dict[str, str]) -> str:
    """The sha256 of one file, or of the sorted "<sha>  <name>" listing of several."""
    if len(files) == 1:
        return next(iter(files.values()))
    listing = "".join(f"{files[n]}  {n}\n" for n in sorted(files))
    return hashlib.sha256(listing.encode()).hexdigest()


def _hash_files(root: Path, names: list[Path]) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): _sha256_file(p) for p in sorted(names)}


# --------------------------------------------------------------------------- run:DIR


class RunDPM(FrozenDPM):
    """The pixel-space diffusion part (`method.diffusion`: U-Net + schedule) of a ddpm/vdm run."""

    def __init__(self, spec: str, path: Path, files: dict[str, str], method: nn.Module):
        super().__init__(spec, path, files, method.data_shape, T=method.T)
        self.part = method.diffusion  # an unconditional PixelDiffusion
        self.clip_x0 = bool(self.part.clip_x0)

    @property
    def schedule(self) -> Schedule:
        return self.part.schedule

    @property
    def net(self) -> nn.Module:
        return self.part.net

    def denoiser(self, x_t, t, cond=None):
        return self.part.denoiser(x_t, t)


@SOURCES.register("run")
def _load_run(path: Path, spec: str, ema: bool = True) -> FrozenDPM:
    from diffrep.checkpoint import EMA_FILE, MODEL_FILE, load_weights
    from diffrep.methods import build_method

    try:
        info = json.loads((path / "run.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(
            f"frozen model {spec!r}: {path} is not a readable diffrep run ({e}); "
            "fix: pass the --out directory of `diffrep train` on a ddpm or vdm config"
        ) from None
    name = info.get("method")
    if name not in ("ddpm", "vdm"):
        raise UserError(
            f"frozen model {spec!r} is a {name!r} run; a frozen base must be an unconditional "
            "pixel-space DPM; fix: point it at a ddpm or vdm run"
        )
    weights = path / "checkpoint" / (EMA_FILE if ema else MODEL_FILE)
    if not weights.is_file():
        raise UserError(f"frozen model {spec!r}: {weights} is missing; fix: train the run first")
    files = _hash_files(path, [weights])
    with expect_dependencies(info.get("dependencies"), str(path)):
        method = build_method(name, tuple(info["data_shape"]), **info["method_args"])
    load_weights(path / "checkpoint", method, ema=ema)
    return RunDPM(spec, path, files, method)


# --------------------------------------------------------------------------- diffusers:DIR

_PREDICTIONS = {  # diffusers prediction_type -> (z, gamma, output) -> eps
    "epsilon": lambda z, gamma, out: out,
    "v_prediction": P.eps_from_v,
    "sample": P.eps_from_x0,
}
_SCHEDULERS = ("DDPMScheduler", "DDIMScheduler")


def schedule_from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> DiscreteBetaSchedule:
    """The diffrep schedule with alpha_bar(i / T) = alphas_cumprod[i - 1], i = 1..T."""
    log_abar = torch.log(alphas_cumprod.to(F64))  # [T]
    prev = torch.cat([torch.zeros(1, dtype=F64), log_abar[:-1]])
    # beta_i = 1 - abar_i / abar_{i-1}; the schedule's cumsum of -log1p(-beta) gives -log abar back
    return DiscreteBetaSchedule(-torch.expm1(log_abar - prev))


class DiffusersDPM(FrozenDPM):
    """A diffusers UNet2DModel behind diffrep's denoiser interface (conventions: module doc)."""

    def __init__(self, spec, path, files, net: nn.Module, scheduler, data_shape):
        T = int(scheduler.config.num_train_timesteps)
        super().__init__(spec, path, files, data_shape, T=T)
        self.net = net
        self.schedule = schedule_from_alphas_cumprod(scheduler.alphas_cumprod)
        self.prediction_type = scheduler.config.prediction_type
        self.clip_x0 = bool(getattr(scheduler.config, "clip_sample", False))

    def timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """diffusers timesteps t T - 1 [B] (float; integers on the grid t = i / T)."""
        u = t.detach().to(F64) * self.T - 1
        r = u.round()
        return torch.where((u - r).abs() < 1e-3, r, u).clamp(min=0)

    def denoiser(self, x_t, t, cond=None):
        c = self.data_shape[0]
        dtype = next(self.net.parameters()).dtype
        out = self.net(x_t.to(dtype), self.timesteps(t).to(torch.float32), return_dict=False)[0]
        out = out[:, :c].to(x_t.dtype)  # learned-variance models stack [eps, variance]
        gamma = self.schedule(t.to(F64))  # [B]
        return _PREDICTIONS[self.prediction_type](x_t, gamma, out)


def _diffusers_layout(path: Path, spec: str) -> tuple[Path, Path]:
    """(UNet folder, scheduler config file) of a pipeline folder or a bare UNet folder."""
    unet = path / "unet" if (path / "unet" / "config.json").is_file() else path
    sched = [path / "scheduler" / "scheduler_config.json", path / "scheduler_config.json"]
    sched = [p for p in sched if p.is_file()]
    if not (unet / "config.json").is_file() or not sched:
        raise UserError(
            f"frozen model {spec!r}: {path} holds no diffusers UNet2DModel + scheduler (need "
            "unet/config.json or config.json, and scheduler/scheduler_config.json or "
            "scheduler_config.json); fix: save them with save_pretrained into that folder"
        )
    return unet, sched[0]


@SOURCES.register("diffusers")
def _load_diffusers(path: Path, spec: str) -> FrozenDPM:
    try:
        import diffusers
    except ImportError:
        raise UserError(
            f"frozen model {spec!r} needs the diffusers package; "
            "fix: pip install 'diffrep[diffusers]'"
        ) from None
    unet_dir, sched_file = _diffusers_layout(path, spec)
    unet_cfg = json.loads((unet_dir / "config.json").read_text())
    sched_cfg = json.loads(sched_file.read_text())
    if unet_cfg.get("_class_name") != "UNet2DModel":
        raise UserError(
            f"frozen model {spec!r}: {unet_dir} holds a {unet_cfg.get('_class_name')!r}; "
            "fix: use an unconditional UNet2DModel (DDPM-style pipeline)"
        )
    cls_name = sched_cfg.get("_class_name")
    if cls_name not in _SCHEDULERS:
        raise UserError(
            f"frozen model {spec!r}: scheduler {cls_name!r} in {sched_file}; fix: a DDPM/DDIM "
            f"scheduler config ({', '.join(_SCHEDULERS)}: the betas of a discrete VP process)"
        )
    scheduler = getattr(diffusers, cls_name).from_config(sched_cfg)
    if scheduler.config.prediction_type not in _PREDICTIONS:
        raise UserError(
            f"frozen model {spec!r}: prediction_type {scheduler.config.prediction_type!r} is not "
            f"supported; fix: a model predicting one of {', '.join(_PREDICTIONS)}"
        )
    weights = sorted(unet_dir.glob("*.safetensors")) or sorted(unet_dir.glob("*.bin"))
    if not weights:
        raise UserError(f"frozen model {spec!r}: no weights in {unet_dir}; fix: save_pretrained")
    index = sorted(unet_dir.glob("*.index.json"))
    files = _hash_files(path, [*weights, *index, unet_dir / "config.json", sched_file])
    net = diffusers.UNet2DModel.from_pretrained(
        unet_dir, local_files_only=True, low_cpu_mem_usage=False
    )
    size = net.config.sample_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return DiffusersDPM(spec, path, files, net, scheduler, (net.config.in_channels, h, w))
