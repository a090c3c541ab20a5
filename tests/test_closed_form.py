"""Seed 003 finished: the ideal and the linear-subspace denoisers, fitted in closed form, and the
small-step iteration x' = (1 - eta) x + eta DAE(x) that restores stored images (or not)."""

from __future__ import annotations

import json
import math

import torch

from diffrep.cli import main
from diffrep.methods import build_method
from diffrep.methods.iteration import iterate_denoiser

SHAPE = (1, 4, 4)


def _images(n, seed):
    g = torch.Generator().manual_seed(seed)
    return (2 * torch.randint(0, 256, (n, *SHAPE), generator=g).float() + 1) / 256 - 1


def test_ideal_dae_is_the_posterior_mean_of_the_seed():
    train = _images(30, 0)
    m = build_method("ideal", SHAPE, sigma=0.7)
    m.fit(train)
    x = _images(5, 1)
    # DAE(x) = sum_i P(x_i | x) x_i with P(x_i | x) proportional to N(x; x_i, s^2)
    d2 = (x.flatten(1)[:, None].double() - train.flatten(1)[None].double()).pow(2).sum(-1)
    w = torch.softmax(-d2 / (2 * 0.7**2), dim=1)  # [5, 30]
    expect = (w @ train.flatten(1).double()).reshape(x.shape)
    torch.testing.assert_close(m.denoise(x).double(), expect, atol=1e-5, rtol=1e-5)


def test_iteration_ends_on_stored_images_for_ideal_and_on_the_projection_for_svd():
    train, test = _images(40, 0), _images(20, 1)
    noisy = test + 0.3 * torch.randn(test.shape, generator=torch.Generator().manual_seed(3))
    ideal = build_method("ideal", SHAPE, sigma=0.3)
    ideal.fit(train)
    final = iterate_denoiser(ideal.denoise, noisy, eta=0.1, steps=200)
    gaps = (final.flatten(1)[:, None] - train.flatten(1)[None]).abs().amax(-1).min(1).values
    assert (gaps < 1 / 256).all()  # every iterate is a stored training image

    svd = build_method("svd", SHAPE, rank=4)
    svd.fit(train)
    P = svd.V @ svd.V.T
    torch.testing.assert_close(P @ P, P, atol=1e-5, rtol=0)  # a projection
    final = iterate_denoiser(svd.denoise, noisy, eta=0.1, steps=200)
    # x_k = P x + (1 - eta)^k (I - P) x: the projection of the start, not a stored image
    expect = noisy.flatten(1) @ P + 0.9**200 * (noisy.flatten(1) - noisy.flatten(1) @ P)
    torch.testing.assert_close(final.flatten(1), expect, atol=1e-5, rtol=1e-5)
    gaps = (final.flatten(1)[:, None] - train.flatten(1)[None]).abs().amax(-1).min(1).values
    assert (gaps > 0.1).all()


def test_cli_trains_ideal_and_svd_in_closed_form_and_eval_reports_attractors(tmp_path):
    sets = ["--set", "eval.metrics=[attractors]", "--set", "eval.max_eval=100"]
    fractions = {}
    for name in ("ideal", "svd"):
        out = tmp_path / name
        assert main(["train", f"configs/{name}-digits.yaml", "--out", str(out)]) == 0
        assert json.loads((out / "metrics.jsonl").read_text())["step"] == 0
        assert main(["eval", str(out), *sets]) == 0
        ev = json.loads((out / "eval.json").read_text())
        fractions[name] = ev["attractors"]["on_training_image_fraction"]
        assert (out / "figures" / "attractors.png").is_file()
        assert main(["sample", str(out), "-n", "4", "--steps", "20",
                     "--out", str(tmp_path / f"{name}.png")]) == 0  # fmt: skip
    assert fractions == {"ideal": 1.0, "svd": 0.0}  # the seed: ideal all, subspace none
    assert math.isfinite(ev["attractors"]["median_distance_to_train"])
