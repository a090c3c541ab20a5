"""Atomic file writes: a reader sees the old content or the new, never half a file.

`write_bytes(path, data)`: a temp file in the same directory, flush + fsync, `os.replace`, then
fsync of the directory (the rename lives in the directory entry). `write_text` and `write_json`
(strict JSON through `diffrep.jsonutil.dumps`: NaN/inf written as null) build on it. Every file
diffrep writes for a user (run.json, eval.json, reports, checkpoints, figures) goes through here.

File modes: `tempfile.mkstemp` creates 0600 files, which would leave run directories unreadable
to the user's group whatever their umask says. A new file gets `0666 & ~umask`, like any file
`open()` creates; a file that already exists keeps its mode (a user's chmod survives a rewrite).
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path
from typing import Any

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask (read from /proc where possible: setting it is process-wide)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:  # elsewhere: set and restore (the only portable way to read it)
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def fsync_dir(path: str | Path) -> None:
    """fsync a directory so that a rename inside it survives a power cut (best effort)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. platforms where directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically (see the module docstring); creates parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o666 & ~current_umask()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_text(path: str | Path, text: str) -> None:
    """`write_bytes` of UTF-8 text."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    """Strict JSON of `obj` (numpy/torch scalars converted, NaN/inf as null), atomically."""
    from diffrep.jsonutil import dumps

    write_text(path, dumps(obj, indent=indent) + "\n")
