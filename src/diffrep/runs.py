"""Run directories: what `diffrep train` writes and every other command reads.

RUN_DIR/config.yaml   the resolved config
RUN_DIR/run.json      method name and arguments, data shape, dataset, diffrep version
RUN_DIR/checkpoint/   weights (safetensors), EMA weights, trainer state
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from diffrep.errors import UserError


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write via a temp file in the same directory, fsync, rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_run_info(run_dir: str | Path, cfg, data_shape: tuple[int, int, int]) -> None:
    from diffrep import __version__
    from diffrep.config import dump_config

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, run_dir / "config.yaml")
    info = {
        "method": cfg.method_name,
        "method_args": cfg.method_args,
        "data_shape": list(data_shape),
        "dataset": cfg.data.name,
        "version": __version__,
    }
    atomic_write_text(run_dir / "run.json", json.dumps(info, indent=2))


def read_run_info(run_dir: str | Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(
            f"run directory {str(run_dir)!r} does not exist; "
            "train one with `diffrep train CONFIG --out DIR`"
        )
    p = run_dir / "run.json"
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise UserError(
            f"{str(run_dir)!r} is not a diffrep run directory (no run.json); "
            "pass the --out directory of `diffrep train`"
        ) from None
    except json.JSONDecodeError as e:
        raise UserError(
            f"{p} is corrupt ({e}); re-run `diffrep train` into a new directory"
        ) from None


def load_run(run_dir: str | Path, ema: bool = True, device: str = "cpu"):
    """Rebuild the trained method of a run directory: returns (method, config)."""
    from diffrep.checkpoint import load_weights
    from diffrep.config import load_config
    from diffrep.methods import build_method

    run_dir = Path(run_dir)
    info = read_run_info(run_dir)
    cfg = load_config(run_dir / "config.yaml")
    method = build_method(info["method"], tuple(info["data_shape"]), **cfg.method_args)
    load_weights(run_dir / "checkpoint", method, ema=ema)
    method.to(device).eval()
    return method, cfg
