"""npz user data with generative factors: read, validated, and probed by the evaluation suite."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffrep.data import load_dataset
from diffrep.errors import UserError
from diffrep.eval import EvalConfig
from diffrep.eval.suite import evaluate
from diffrep.methods.base import Method

N = 200


def _images_and_factors(seed=0):
    """8x8 images whose left half brightness is a discrete factor and right half continuous."""
    rng = np.random.default_rng(seed)
    kind = rng.integers(0, 3, N)  # discrete, 3 values
    level = rng.uniform(0, 1, N)  # continuous
    x = np.zeros((N, 8, 8), np.uint8)
    x[:, :, :4] = (kind * 100)[:, None, None]
    x[:, :, 4:] = np.round(level * 255)[:, None, None]
    return x, kind, level


def test_npz_factors_are_read_with_names_kinds_and_the_split(tmp_path):
    x, kind, level = _images_and_factors()
    p = tmp_path / "d.npz"
    np.savez(
        p,
        x=x,
        factors=np.stack([kind, level], 1),
        factor_names=np.array(["kind", "level"]),
        factor_kinds=np.array(["discrete", "continuous"]),
    )
    tr = load_dataset("npz", "train", path=str(p), test_fraction=0.25)
    te = load_dataset("npz", "test", path=str(p), test_fraction=0.25)
    assert tr.factor_names == ("kind", "level") and tr.factor_kinds == ("discrete", "continuous")
    assert tr.factors.shape == (150, 2) and te.factors.shape == (50, 2)
    assert tr.factors.dtype == np.float64
    # each row's factors still describe its own image after the holdout split
    np.testing.assert_array_equal(tr.images[:, 0, 0, 0], tr.factors[:, 0] * 100)
    # defaults: names factor_j, kinds from the dtype (integers discrete, floats continuous)
    np.savez(tmp_path / "e.npz", x=x, factors=kind)
    d = load_dataset("npz", "all", path=str(tmp_path / "e.npz"))
    assert d.factor_names == ("factor_0",) and d.factor_kinds == ("discrete",)
    # separate splits
    np.savez(
        tmp_path / "s.npz",
        x_train=x[:150],
        x_test=x[150:],
        factors_train=level[:150],
        factors_test=level[150:],
    )
    d = load_dataset("npz", "test", path=str(tmp_path / "s.npz"))
    assert d.factors.shape == (50, 1) and d.factor_kinds == ("continuous",)
    np.testing.assert_allclose(d.factors[:, 0], level[150:])


@pytest.mark.parametrize(
    "arrays,match",
    [
        ({"factors": np.zeros((N - 1, 2))}, "factors must be numbers"),
        ({"factors": np.zeros((N, 2, 2))}, "factors must be numbers"),
        ({"factors": np.array(["a"] * N)}, "factors must be numbers"),
        ({"factors": np.full((N, 1), np.nan)}, "NaN"),
        ({"factors": np.zeros((N, 2)), "factor_names": np.array(["a"])}, "2 strings"),
        ({"factors": np.zeros((N, 2)), "factor_names": np.array(["a", "a"])}, "repeat"),
        ({"factors": np.zeros((N, 1)), "factor_kinds": np.array(["ordinal"])}, "ordinal"),
        ({"factor_names": np.array(["a"])}, "factor_names without factors"),
    ],
)
def test_npz_factors_are_validated(tmp_path, arrays, match):
    x, _, _ = _images_and_factors()
    np.savez(tmp_path / "d.npz", x=x, **arrays)
    with pytest.raises(UserError, match=match):
        load_dataset("npz", "train", path=str(tmp_path / "d.npz"))


def test_unknown_options_list_only_real_options(tmp_path):
    x, _, _ = _images_and_factors()
    np.savez(tmp_path / "d.npz", x=x)
    with pytest.raises(UserError) as e:
        load_dataset("npz", path=str(tmp_path / "d.npz"), bogus=1)
    msg = str(e.value)
    assert msg.endswith("valid options: path, test_fraction"), msg
    with pytest.raises(UserError, match="it takes no options"):
        load_dataset("mnist", "train", size=3)


class Pixels(Method):
    """encode(x) = the flattened image: a representation that carries both factors."""

    def __init__(self):
        super().__init__((1, 8, 8))
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def loss(self, batch):
        raise NotImplementedError

    def encode(self, x0):
        return x0.flatten(1)


def test_npz_factors_are_probed_by_evaluation(tmp_path):
    x, kind, level = _images_and_factors()
    p = tmp_path / "d.npz"
    np.savez(
        p,
        x=x,
        factors=np.stack([kind, level], 1).astype(np.float32),
        factor_kinds=np.array(["discrete", "continuous"]),
    )
    tr = load_dataset("npz", "train", path=str(p))
    te = load_dataset("npz", "test", path=str(p))
    cfg = EvalConfig(metrics=("probe",), tsne_points=1, few_label_sizes=(1,))
    res = evaluate(Pixels(), tr, te, cfg)
    f = res["probe"]["factors"]
    print(f)
    assert f["factor_0"]["acc"] == 1.0 and f["factor_1"]["r2"] > 0.99
