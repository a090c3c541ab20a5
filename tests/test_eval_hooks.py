"""Evaluation hooks of methods (issue 10 item 6): encoders that take t, exact log joints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffrep.eval import EvalConfig
from diffrep.eval.suite import evaluate
from diffrep.methods import build_method
from diffrep.methods.base import Method
from test_eval_metrics import model_data


class NoisyCode(Method):
    """encode(x0, t) = x0 + (t / (1 - t)) * fixed noise: the label signal drowns as t grows."""

    encode_takes_t = True

    def __init__(self, data_shape=(1, 4, 4)):
        super().__init__(data_shape)
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def loss(self, batch):
        return {"loss": batch["x0"].flatten(1).sum(1)}

    def encode(self, x0, t=None):
        x = x0.flatten(1).double()
        if t is None or t == 0:
            return x
        # noise fixed per example (seeded by its content), so encode is a function of (x0, t)
        g = torch.Generator().manual_seed(int(x.abs().sum() * 1e4) % (2**31))
        return x + t / (1 - t + 1e-9) * torch.randn(x.shape, generator=g, dtype=x.dtype)


def test_probes_at_several_t_decay_with_noise(tmp_path):
    train, test = model_data(1500, 0), model_data(600, 1)
    cfg = EvalConfig(metrics=("probe",), probe_t=(0.0, 0.5, 0.9), max_train=1500, max_eval=600,
                     tsne_points=2, few_label_sizes=(10,), few_label_draws=1)  # fmt: skip
    res = evaluate(NoisyCode(), train, test, cfg, run_dir=tmp_path)
    at = res["probe"]["at_t"]
    assert set(at) == {"0", "0.5", "0.9"}
    lin = [at[k]["linear_acc"] for k in ("0", "0.5", "0.9")]
    assert lin[0] > 0.9 and lin[0] > lin[1] > lin[2]  # the signal drowns as t grows
    assert at["0"]["linear_acc"] == pytest.approx(res["probe"]["linear_acc"])  # t=0: no noise
    assert (tmp_path / "figures" / "probe_vs_t.png").is_file()
    assert "probe_vs_t" in res["figures"]


def test_probe_t_is_skipped_with_a_note_for_encoders_without_t():
    from test_eval_metrics import LinearGaussian

    train, test = model_data(300, 0), model_data(200, 1)
    cfg = EvalConfig(metrics=("probe",), probe_t=(0.5,), tsne_points=2, few_label_sizes=(10,),
                     few_label_draws=1)  # fmt: skip
    res = evaluate(LinearGaussian(), train, test, cfg)
    assert "at_t" not in res["probe"] and "encode_takes_t" in res["probe"]["at_t_skipped"]
    with pytest.raises(ValueError, match="probe_t"):
        EvalConfig(probe_t=(1.5,))


@pytest.mark.parametrize(
    ("prior", "exact"), [("gaussian", True), ("flow", True), ("diffusion", False)]
)
def test_vae_log_joint_is_exact_unless_the_prior_is_a_bound(prior, exact):
    if prior == "flow":
        pytest.importorskip("zuko")
    args = {"T": 25} if prior == "diffusion" else {}
    vae = build_method("vae", (1, 8, 8), latent_dim=2, width=8, prior=prior, prior_args=args)
    assert vae.log_joint_exact is exact
    assert build_method("dae", (1, 8, 8), code_dim=2, width=8).log_joint_exact is False


def test_iw_nll_label_follows_the_method_flag():
    from diffrep.eval.likelihood import iw_nll

    vae = build_method("vae", (1, 8, 8), latent_dim=2, width=8)
    images = np.random.default_rng(0).integers(0, 256, (4, 1, 8, 8), dtype=np.uint8)
    assert iw_nll(vae, images, k=2)["nll_iw_latent_chain"] is False
    # a prior without an exact density: its latent chain is weighted with z (one path each)
    args = {"T": 30, "hidden": 16}
    vae = build_method("vae", (1, 8, 8), latent_dim=2, width=8, prior="diffusion", prior_args=args)
    assert iw_nll(vae.eval(), images, k=2)["nll_iw_latent_chain"] is True
