"""diffrep.allocator: freed large blocks stay in the heap (no page faults for the next tensor)."""

import json
import os
import subprocess
import sys

import pytest

from diffrep import allocator

# A fresh process runs a small conv net (GroupNorm, SiLU, conv, residual: activations of 3.2 MB
# each, allocated and freed every call) 20 times after a warm-up and reports its minor page
# faults. By default glibc hands the freed blocks back to the OS and the next call faults the
# pages in again (140k-230k faults here); kept, the blocks are reused (0.8k-2.4k).
PROBE = r"""
import json, resource, sys
import torch
import torch.nn.functional as F
from diffrep.allocator import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else False
torch.manual_seed(0)
w, x = torch.randn(16, 16, 3, 3), torch.randn(64, 16, 28, 28)


def net(x):
    for _ in range(3):
        x = x + F.conv2d(F.silu(F.group_norm(x, 8)), w, padding=1)
    return F.avg_pool2d(x, 2)


with torch.no_grad():
    net(x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        net(x)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
print(json.dumps({"kept": kept, "faults": after - before}))
"""


def _probe(mode: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in (*allocator.ENV, "LD_PRELOAD")}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env=env, capture_output=True,
                         text=True, check=True)  # fmt: skip
    return json.loads(out.stdout)


@pytest.mark.skipif(not allocator._glibc(), reason="glibc's malloc only")
def test_kept_memory_spares_the_page_faults_of_each_large_tensor():
    default, kept = _probe("default"), _probe("keep")
    assert not default["kept"] and kept["kept"]
    assert default["faults"] > 50_000  # pages mapped afresh at every call
    assert kept["faults"] < 0.05 * default["faults"]  # the freed blocks are reused


def test_the_users_choice_and_other_allocators_are_left_alone(monkeypatch):
    def clean():  # as a fresh shell would have it (an in-process CLI test may have exported them)
        for k in (*allocator.ENV, "LD_PRELOAD"):
            monkeypatch.delenv(k, raising=False)

    clean()
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "0")
    assert allocator.keep_freed_memory() is False
    clean()
    monkeypatch.setenv("LD_PRELOAD", "libjemalloc.so.2")
    assert allocator.keep_freed_memory() is False
    if allocator._glibc():
        clean()
        monkeypatch.setenv("LD_PRELOAD", "")  # set but empty: nothing preloaded
        assert allocator.keep_freed_memory() is True
        assert os.environ["MALLOC_MMAP_THRESHOLD_"] == str(allocator.MMAP_THRESHOLD)  # exported
    clean()
    monkeypatch.setattr(allocator.os, "confstr", lambda name: "musl")  # not glibc
    assert allocator.keep_freed_memory() is False
    assert not any(k in os.environ for k in allocator.ENV)
