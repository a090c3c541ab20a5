"""One atomic writer (file modes follow the umask) and one JSON policy (NaN/inf -> null)."""

from __future__ import annotations

import json
import math
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from diffrep import atomic
from diffrep.jsonutil import dumps, flatten, to_jsonable

SRC = Path(__file__).resolve().parents[1] / "src"

# Run in a child process: the umask is process-wide, and tests may run in threads.
WRITE_ALL = """
import os, sys
os.umask(int(sys.argv[2], 8))
from pathlib import Path
import torch
from torch import nn
from diffrep import atomic
from diffrep.checkpoint import save_checkpoint
from diffrep.eval.suite import write_eval
from diffrep.report import write_report
d = Path(sys.argv[1])
atomic.write_text(d / "a.txt", "x")
atomic.write_json(d / "b.json", {"x": 1})
write_eval(d, {"bpd": 1.0})
(d / "run.json").write_text("{}")
write_report(d)
save_checkpoint(d / "checkpoint", nn.Linear(2, 2), None, None, 1)
"""


@pytest.mark.parametrize(("umask", "mode"), [("022", 0o644), ("077", 0o600), ("002", 0o664)])
def test_new_files_follow_the_umask(tmp_path, umask, mode):
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    subprocess.run([sys.executable, "-c", WRITE_ALL, str(tmp_path), umask], env=env, check=True)
    names = ["a.txt", "b.json", "eval.json", "report.html", "checkpoint/model.safetensors",
             "checkpoint/state.pt", "checkpoint/manifest.json"]  # fmt: skip
    modes = {n: stat.S_IMODE((tmp_path / n).stat().st_mode) for n in names}
    assert modes == dict.fromkeys(names, mode)
    assert not list(tmp_path.glob(".*.tmp"))  # no temp files left behind


def test_a_rewrite_keeps_the_files_mode(tmp_path):
    p = tmp_path / "eval.json"
    atomic.write_text(p, "old")
    os.chmod(p, 0o640)
    atomic.write_text(p, "new")
    assert p.read_text() == "new" and stat.S_IMODE(p.stat().st_mode) == 0o640


def test_current_umask_matches_the_process(tmp_path):
    old = os.umask(0o027)
    try:
        assert atomic.current_umask() == 0o027
    finally:
        os.umask(old)


def test_json_policy_nan_and_inf_are_null_and_types_are_plain():
    obj = {
        1: np.float32(0.5),
        "nan": float("nan"),
        "inf": np.float64(-math.inf),
        "t": torch.tensor([1.0, float("nan")]),
        "s": torch.tensor(3),
        "b": np.bool_(True),
        "p": Path("a/b"),
        "tup": (np.int64(2), 3.0),
    }
    out = to_jsonable(obj)
    assert out == {"1": 0.5, "nan": None, "inf": None, "t": [1.0, None], "s": 3, "b": True,
                   "p": "a/b", "tup": [2, 3.0]}  # fmt: skip
    assert type(out["1"]) is float and type(out["tup"][0]) is int
    assert json.loads(dumps(obj)) == out  # strict JSON: no NaN token


def test_flatten_joins_keys_and_drops_lists():
    d = {"a": {"b": 1, "c": {"d": 2.0}}, "l": [1, 2], "e": None}
    assert flatten(d) == {"a.b": 1, "a.c.d": 2.0, "e": None}
    assert flatten(d, sep="/") == {"a/b": 1, "a/c/d": 2.0, "e": None}
