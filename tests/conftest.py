"""Shared pytest fixtures (keep generic: anything part-specific lives in that part's tests)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _find_mnist() -> Path | None:
    """The real MNIST IDX files: $DIFFREP_DATA/mnist, else <repo>/../shared/data/mnist."""
    candidates = []
    if os.environ.get("DIFFREP_DATA"):
        candidates.append(Path(os.environ["DIFFREP_DATA"]) / "mnist")
    candidates.append(REPO.parent / "shared" / "data" / "mnist")
    for d in candidates:
        if (d / "t10k-images-idx3-ubyte.gz").is_file() or (d / "t10k-images-idx3-ubyte").is_file():
            return d
    return None


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """Directory holding at least the real MNIST test set; skips the test when absent."""
    d = _find_mnist()
    if d is None:
        pytest.skip(
            "real MNIST files not found (set DIFFREP_DATA or run `diffrep data fetch mnist`)"
        )
    return d


def pytest_configure(config):
    # Tiny CPU shapes run fastest on one thread; more threads only add contention on CI's 2 cores.
    import torch

    torch.set_num_threads(1)
