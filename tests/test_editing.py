"""diffusion.editing.slerp against its closed form: the great circle between two vectors."""

from __future__ import annotations

import math

import torch

from diffrep.diffusion.editing import slerp


def test_slerp_is_the_great_circle():
    torch.manual_seed(0)
    a, b = torch.randn(3, 50, dtype=torch.float64), torch.randn(3, 50, dtype=torch.float64)
    b = b / b.norm(dim=1, keepdim=True) * a.norm(dim=1, keepdim=True)  # equal norms
    lam = torch.linspace(0, 1, 7, dtype=torch.float64)
    path = slerp(a, b, lam)  # [3, 7, 50]
    torch.testing.assert_close(path[:, 0], a, rtol=0, atol=1e-12)
    torch.testing.assert_close(path[:, -1], b, rtol=0, atol=1e-12)
    # the norm stays (a straight line would shrink it in the middle) ...
    torch.testing.assert_close(path.norm(dim=2), a.norm(dim=1, keepdim=True).expand(3, 7))
    # ... and the angle from a grows linearly: lam * theta
    theta = torch.acos(torch.nn.functional.cosine_similarity(a, b))
    got = torch.acos(torch.nn.functional.cosine_similarity(path, a[:, None], dim=2).clamp(-1, 1))
    torch.testing.assert_close(got, lam[None] * theta[:, None], rtol=0, atol=1e-6)
    # the middle is the normalised sum, times the norm / cos(theta / 2)
    mid = slerp(a, b, torch.tensor([0.5], dtype=torch.float64))[:, 0]
    want = (a + b) / (2 * torch.cos(theta / 2))[:, None]
    torch.testing.assert_close(mid, want, rtol=0, atol=1e-12)


def test_slerp_of_parallel_vectors_is_finite():
    a = torch.ones(1, 4)
    path = slerp(a, 2 * a, torch.tensor([0.0, 0.5, 1.0]))
    assert torch.isfinite(path).all()
    assert math.isclose(float(path[0, 0, 0]), 1.0, rel_tol=1e-5)
