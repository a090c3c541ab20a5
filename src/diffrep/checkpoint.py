"""Checkpoints: weights in safetensors, trainer state in a weights-only `state.pt`, all atomic.

A checkpoint directory (RUN_DIR/checkpoint/) holds

    model.safetensors   the raw weights (the `state_dict`, buffers included, without frozen
                        submodules: those are rebuilt from their own source, `diffrep.nets.freeze`)
    ema.safetensors     the EMA of the weights (= the raw weights when EMA is off)
    state.pt            optimizer state, step, RNG states (torch / cuda / numpy / python, one set
                        per rank) and trainer state (the data-order generator); plain tensors and
                        containers only, so `torch.load(weights_only=True)` reads it
    manifest.json       step, size and sha256 of the three files above; written last

The set is replaced as a whole: a save writes every file (each fsynced, the manifest last) into
a sibling `checkpoint.new/`, then renames the old directory to `checkpoint.old/`, the new one to
`checkpoint/`, and deletes the old one. A crash at any point leaves a complete checkpoint: the
previous one (in `checkpoint/`, or in `checkpoint.old/` when it came between the two renames,
next to a complete `checkpoint.new/`, which the readers then take, as the newer). The next save
tidies up. The manifest is the commit marker: a reader checks each file's size and hash
against it, which turns truncation, bit rot and a mix of files from different steps into one
clear `UserError` (torch's zip reader alone silently loads a `state.pt` with garbage in its
tensor data).

Usage (the trainer does this; eval/sample code only needs `load_weights`):

    save_checkpoint(run_dir / "checkpoint", method, ema_state, optimizer, step, extra_state)
    ckpt = load_checkpoint(run_dir / "checkpoint", method, optimizer)   # resume
    load_weights(run_dir / "checkpoint", method, ema=True)              # eval / sample
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from diffrep.atomic import fsync_dir
from diffrep.atomic import write_bytes as atomic_write_bytes
from diffrep.errors import UserError
from diffrep.nets.freeze import frozen_modules, is_frozen_key, trainable_state_dict

MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
STATE_FILE = "state.pt"
MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1

_FIX = "retrain (drop --resume / start a new run) or point at a different run directory"


# --------------------------------------------------------------------------- RNG states


def capture_rng_state() -> dict[str, Any]:
    """This process's global RNG states in weights_only-loadable form (tensors, ints, tuples)."""
    np_state = np.random.get_state(legacy=False)  # {"bit_generator", "state": {"key", "pos"}, ...}
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": n["bit_generator"],
            "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
            "has_gauss": n["has_gauss"],
            "gauss": n["gauss"],
        }
    )
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


# --------------------------------------------------------------------------- save


def _tensor_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared storage (tied weights) and non-contiguous views: clone each.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in sd.items()}


def _safetensors_bytes(sd: dict[str, torch.Tensor], step: int, kind: str) -> bytes:
    from safetensors.torch import save

    return save(_tensor_dict(sd), metadata={"format": "pt", "step": str(step), "kind": kind})


def _sibling(ckpt_dir: Path, tag: str) -> Path:
    return ckpt_dir.with_name(f"{ckpt_dir.name}.{tag}")


def _resolve(ckpt_dir: str | Path) -> Path:
    """The directory holding the newest complete checkpoint: `ckpt_dir`, or after a crash
    between the two renames of a save, its complete `.new` (else `.old`) sibling."""
    ckpt_dir = Path(ckpt_dir)
    if ckpt_dir.exists():
        return ckpt_dir
    for tag in ("new", "old"):
        if (_sibling(ckpt_dir, tag) / MANIFEST_FILE).is_file():
            return _sibling(ckpt_dir, tag)
    return ckpt_dir


def _finish_interrupted_save(ckpt_dir: Path) -> None:
    """Put the newest complete checkpoint back under its name and remove the leftovers."""
    import shutil

    found = _resolve(ckpt_dir)
    if found != ckpt_dir:
        os.rename(found, ckpt_dir)
    for tag in ("new", "old"):
        shutil.rmtree(_sibling(ckpt_dir, tag), ignore_errors=True)


def save_checkpoint(
    ckpt_dir: str | Path,
    method: nn.Module,
    ema_state: dict[str, torch.Tensor] | None,
    optimizer: torch.optim.Optimizer | None,
    step: int,
    extra_state: dict[str, Any] | None = None,
    *,
    rng_state: dict[str, Any] | list[dict[str, Any]] | None = None,
) -> Path:
    """Write a checkpoint of `method` after `step` optimizer steps; returns the directory.

    `ema_state` is a state dict with the keys of `trainable_state_dict(method)` (the state of
    frozen submodules is never written); None writes the raw weights as the EMA so that
    `load_weights(ema=True)` always works. `rng_state` defaults to
    this process's states (`capture_rng_state()`); the trainer passes one per rank under DDP.
    `extra_state` must hold only tensors, numbers, strings and containers (weights_only).
    """
    import shutil

    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.parent.mkdir(parents=True, exist_ok=True)
    _finish_interrupted_save(ckpt_dir)
    new, old = _sibling(ckpt_dir, "new"), _sibling(ckpt_dir, "old")
    model_sd = trainable_state_dict(method)
    if ema_state is not None:
        ema_state = {k: v for k, v in ema_state.items() if k in model_sd}
    blobs = {
        MODEL_FILE: _safetensors_bytes(model_sd, step, "model"),
        EMA_FILE: _safetensors_bytes(ema_state if ema_state is not None else model_sd, step, "ema"),
    }
    state = {
        "format_version": FORMAT_VERSION,
        "step": int(step),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "rng": rng_state if rng_state is not None else capture_rng_state(),
        "extra": extra_state or {},
    }
    buf = io.BytesIO()
    torch.save(state, buf)
    blobs[STATE_FILE] = buf.getvalue()
    new.mkdir()
    for name, data in blobs.items():
        atomic_write_bytes(new / name, data)
    manifest = {
        "format_version": FORMAT_VERSION,
        "step": int(step),
        "files": {
            name: {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            for name, data in blobs.items()
        },
    }
    atomic_write_bytes(new / MANIFEST_FILE, (json.dumps(manifest, indent=1) + "\n").encode())
    # The swap: between these two renames only the siblings exist, both complete (_resolve).
    if ckpt_dir.exists():
        os.rename(ckpt_dir, old)
    os.rename(new, ckpt_dir)
    fsync_dir(ckpt_dir.parent)
    shutil.rmtree(old, ignore_errors=True)
    return ckpt_dir


# --------------------------------------------------------------------------- load


def has_checkpoint(ckpt_dir: str | Path) -> bool:
    return (_resolve(ckpt_dir) / MANIFEST_FILE).is_file()


def _read_manifest(ckpt_dir: Path) -> dict[str, Any]:
    if not ckpt_dir.is_dir():
        raise UserError(f"no checkpoint directory {str(ckpt_dir)!r}; fix: {_FIX}")
    path = ckpt_dir / MANIFEST_FILE
    if not path.is_file():
        raise UserError(
            f"checkpoint {str(ckpt_dir)!r} is incomplete: {MANIFEST_FILE} is missing (the save "
            f"was interrupted or this is not a diffrep checkpoint); fix: {_FIX}"
        )
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
        for name in (MODEL_FILE, EMA_FILE, STATE_FILE):
            int(files[name]["bytes"]), str(files[name]["sha256"])
        int(manifest["step"])
    except Exception as e:
        raise UserError(f"checkpoint file {str(path)!r} is corrupt ({e!r}); fix: {_FIX}") from None
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise UserError(
            f"checkpoint {str(ckpt_dir)!r} has format {manifest['format_version']}, newer than "
            f"this diffrep ({FORMAT_VERSION}); fix: upgrade diffrep"
        )
    return manifest


def _read_verified(ckpt_dir: Path, name: str, manifest: dict[str, Any]) -> bytes:
    path = ckpt_dir / name
    if not path.is_file():
        raise UserError(f"checkpoint file {str(path)!r} is missing; fix: {_FIX}")
    data = path.read_bytes()
    want = manifest["files"][name]
    if len(data) != want["bytes"]:
        raise UserError(
            f"checkpoint file {str(path)!r} is truncated or overwritten ({len(data)} bytes, "
            f"expected {want['bytes']}); fix: {_FIX}"
        )
    if hashlib.sha256(data).hexdigest() != want["sha256"]:
        raise UserError(
            f"checkpoint file {str(path)!r} is corrupt (sha256 does not match {MANIFEST_FILE}, "
            f"or it comes from a different save); fix: {_FIX}"
        )
    return data


def _load_tensors(ckpt_dir: Path, name: str, manifest: dict[str, Any]) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    data = _read_verified(ckpt_dir, name, manifest)
    try:
        return load(data)
    except Exception as e:
        raise UserError(
            f"checkpoint file {str(ckpt_dir / name)!r} is not valid safetensors ({e}); fix: {_FIX}"
        ) from None


def _check_and_load_state_dict(module: nn.Module, sd: dict[str, torch.Tensor], path: Path) -> None:
    """Load `sd` into `module` (strict but for frozen submodules, whose keys may be absent and
    are ignored when present), with an error naming the mismatching keys/shapes."""
    prepare = getattr(module, "prepare_load", None)
    if callable(prepare):  # buffers sized by a closed-form fit (e.g. the ideal DAE's images)
        prepare(sd)
    frozen = frozen_modules(module)
    own = trainable_state_dict(module)
    sd = {k: v for k, v in sd.items() if not is_frozen_key(k, frozen)}
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    wrong = [
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(sd))
        if sd[k].shape != own[k].shape
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:5]}" + (" ..." if len(missing) > 5 else ""))
        if unexpected:
            parts.append(
                f"unexpected keys {unexpected[:5]}" + (" ..." if len(unexpected) > 5 else "")
            )
        if wrong:
            parts.append(
                "wrong shapes " + "; ".join(wrong[:5]) + (" ..." if len(wrong) > 5 else "")
            )
        # a method may know which option the keys point to (an option whose default changed)
        hint = getattr(module, "load_hint", lambda missing, unexpected: None)(missing, unexpected)
        fix = hint or f"use the run's own config.yaml, or {_FIX}"
        raise UserError(
            f"checkpoint file {str(path)!r} does not fit this {type(module).__name__} "
            f"({', '.join(parts)}): it was trained with a different method or method options; "
            f"fix: {fix}"
        )
    module.load_state_dict(sd, strict=not frozen)  # the checks above stand in for strict


def load_state(ckpt_dir: str | Path, manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    """The verified contents of state.pt: {"step", "optimizer", "rng", "extra", ...}."""
    ckpt_dir = _resolve(ckpt_dir)
    manifest = manifest if manifest is not None else _read_manifest(ckpt_dir)
    data = _read_verified(ckpt_dir, STATE_FILE, manifest)
    path = ckpt_dir / STATE_FILE
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        step = int(state["step"])
    except pickle.UnpicklingError:  # weights_only refused an object: nothing of it ran
        raise UserError(
            f"checkpoint file {str(path)!r} holds objects other than tensors and plain "
            f"containers (refused unread: loading it could run code); fix: {_FIX}"
        ) from None
    except Exception as e:
        why = " ".join(str(e).split())[:200]  # one line
        raise UserError(
            f"checkpoint file {str(path)!r} cannot be read ({why}); fix: {_FIX}"
        ) from None
    if step != int(manifest["step"]):
        raise UserError(
            f"checkpoint file {str(path)!r} is from step {step} but {MANIFEST_FILE} says "
            f"{manifest['step']}; fix: {_FIX}"
        )
    return state


def load_checkpoint(
    ckpt_dir: str | Path,
    method: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
) -> dict[str, Any]:
    """Restore raw weights into `method` (and `optimizer` state); return the rest.

    Returns {"step": int, "ema_state": dict[str, Tensor] (on the method's device), "rng": ...,
    "extra": dict}. Every failure (missing, truncated, corrupt, wrong keys or shapes) is a
    `UserError` naming the file. Nothing is modified unless every file verifies.
    """
    ckpt_dir = _resolve(ckpt_dir)
    manifest = _read_manifest(ckpt_dir)
    state = load_state(ckpt_dir, manifest)
    model_sd = _load_tensors(ckpt_dir, MODEL_FILE, manifest)
    ema_sd = _load_tensors(ckpt_dir, EMA_FILE, manifest)
    if set(ema_sd) != set(model_sd):
        raise UserError(
            f"checkpoint file {str(ckpt_dir / EMA_FILE)!r} has different keys from "
            f"{MODEL_FILE}; fix: {_FIX}"
        )
    _check_and_load_state_dict(method, model_sd, ckpt_dir / MODEL_FILE)
    if optimizer is not None:
        if state["optimizer"] is None:
            raise UserError(
                f"checkpoint file {str(ckpt_dir / STATE_FILE)!r} holds no optimizer state "
                f"(weights only); fix: {_FIX}"
            )
        try:
            optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError, RuntimeError) as e:
            raise UserError(
                f"optimizer state in {str(ckpt_dir / STATE_FILE)!r} does not fit this model "
                f"({e}); fix: {_FIX}"
            ) from None
    own = trainable_state_dict(method)
    device = next(iter(own.values()), torch.empty(0)).device
    ema_state = {k: ema_sd[k].to(device=device, dtype=own[k].dtype) for k in own}
    return {
        "step": state["step"],
        "ema_state": ema_state,
        "rng": state["rng"],
        "extra": state["extra"],
    }


def load_weights(ckpt_dir: str | Path, method: nn.Module, ema: bool = True) -> nn.Module:
    """Load trained weights (the EMA by default) into `method`, put it in eval mode, return it.

    For evaluation and sampling: `method = build_method(...); load_weights(run/"checkpoint",
    method)`. Files are verified against the manifest, so corruption is a `UserError`.
    """
    ckpt_dir = _resolve(ckpt_dir)
    manifest = _read_manifest(ckpt_dir)
    name = EMA_FILE if ema else MODEL_FILE
    sd = _load_tensors(ckpt_dir, name, manifest)
    _check_and_load_state_dict(method, sd, ckpt_dir / name)
    return method.eval()


def checkpoint_step(ckpt_dir: str | Path) -> int:
    """The step a checkpoint was written at (from its manifest)."""
    return int(_read_manifest(_resolve(ckpt_dir))["step"])
