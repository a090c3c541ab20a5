"""Likelihood, latent health, reconstruction metrics and the eval.json assembly.

The workhorse is a linear-Gaussian latent model whose encoder is the exact posterior, so the
numbers the metrics should produce are known in closed form:

    z ~ N(0, I_Z),  x = W z + s eps,   W with orthogonal columns of norms (0.8, 0.4, 0),
    q(z | x) = p(z | x) = N(S W^T x / s^2, S),  S = (I + W^T W / s^2)^-1 (diagonal),
    -log p(x) = -log N(x; 0, W W^T + s^2 I)           (ELBO and IW-NLL both equal it),
    I(x; z) = E_x KL_d summed = -1/2 sum_d log S_dd,   Cov_x(E_q[z_d]) = 1 - S_dd.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from diffrep.data import ImageData, to_model_input, to_uint8
from diffrep.errors import UserError
from diffrep.eval import EvalConfig
from diffrep.eval.latents import latent_health
from diffrep.eval.likelihood import elbo_metrics, iw_nll
from diffrep.eval.recon import psnr, recon_metrics, ssim
from diffrep.eval.suite import evaluate
from diffrep.methods.base import Method

SHAPE = (1, 4, 4)
D = 16
NORMS = (0.8, 0.4, 0.0)
S_NOISE = 0.05


class LinearGaussian(Method):
    """Linear-Gaussian latent variable model with its exact posterior as encoder."""

    log_joint_exact = True

    def __init__(self, data_shape=SHAPE, logvar_offset: float = 0.0):
        super().__init__(data_shape)
        q, _ = torch.linalg.qr(
            torch.randn(D, len(NORMS), generator=torch.Generator().manual_seed(0))
        )
        self.register_buffer("W", (q * torch.tensor(NORMS)).double())
        self.offset = logvar_offset  # > 0: a deliberately too-wide encoder
        self.dummy = torch.nn.Parameter(torch.zeros(()))  # gives the module a device

    @property
    def post_var(self):  # S, diagonal because W's columns are orthogonal
        return 1.0 / (1.0 + (self.W**2).sum(0) / S_NOISE**2)

    def loss(self, batch):
        return {"loss": -self.log_px(batch["x0"])}

    def posterior(self, x0):
        x = x0.reshape(len(x0), -1).double()
        mean = self.post_var * (x @ self.W) / S_NOISE**2
        logvar = torch.log(self.post_var).expand_as(mean) + self.offset
        return mean.float(), logvar.float()

    def log_joint(self, x0, z):
        x, z = x0.reshape(len(x0), -1).double(), z.double()
        r = x - z @ self.W.T
        log_lik = -0.5 * ((r / S_NOISE) ** 2 + math.log(2 * math.pi * S_NOISE**2)).sum(1)
        return log_lik - 0.5 * (z**2 + math.log(2 * math.pi)).sum(1)

    def log_px(self, x0):
        cov = self.W @ self.W.T + S_NOISE**2 * torch.eye(D, dtype=torch.float64)
        dist = torch.distributions.MultivariateNormal(torch.zeros(D, dtype=torch.float64), cov)
        return dist.log_prob(x0.reshape(len(x0), -1).double())

    def elbo(self, x0):
        mean, logvar = (t.double() for t in self.posterior(x0))
        x = x0.reshape(len(x0), -1).double()
        var = logvar.exp()
        # -E_q log p(x|z) and KL(q || N(0, I)), both analytic for the linear-Gaussian model
        r = x - mean @ self.W.T
        recon = 0.5 * (
            ((r / S_NOISE) ** 2).sum(1)
            + (var * (self.W**2).sum(0)).sum(1) / S_NOISE**2
            + D * math.log(2 * math.pi * S_NOISE**2)
        )
        kl = 0.5 * (mean**2 + var - 1 - logvar).sum(1)
        return {"recon": recon, "kl": kl, "total": recon + kl}

    def encode(self, x0):
        return self.posterior(x0)[0]

    def reconstruct(self, x0, generator=None):
        return (self.posterior(x0)[0].double() @ self.W.T).float().reshape(x0.shape)

    def sample(self, n, generator=None, **kw):
        z = torch.randn(n, len(NORMS), generator=generator, dtype=torch.float64)
        x = z @ self.W.T + S_NOISE * torch.randn(n, D, generator=generator, dtype=torch.float64)
        return x.float().reshape(n, *SHAPE).clamp(-0.999, 0.999)


def model_data(n: int, seed: int) -> ImageData:
    """Images drawn from the model itself (quantised to 8 bits), labelled by the sign of z_1."""
    m = LinearGaussian()
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, len(NORMS), generator=g, dtype=torch.float64)
    x = z @ m.W.T + S_NOISE * torch.randn(n, D, generator=g, dtype=torch.float64)
    images = to_uint8(x.float().reshape(n, *SHAPE)).numpy()
    return ImageData("linear-gaussian", images, labels=(z[:, 0] > 0).long().numpy(), num_classes=2)


@pytest.fixture(scope="module")
def data():
    return model_data(3000, 0)


def test_elbo_and_iw_nll_equal_exact_nll_with_exact_posterior(data):
    m = LinearGaussian()
    exact = float(-m.log_px(to_model_input(torch.from_numpy(data.images))).mean())
    el = elbo_metrics(m, data.images, batch_size=512)
    iw = iw_nll(
        m, data.images[:500], k=8, batch_size=256, generator=torch.Generator().manual_seed(0)
    )
    exact500 = float(-m.log_px(to_model_input(torch.from_numpy(data.images[:500]))).mean())
    print(f"exact {exact:.4f} elbo {el['elbo_nats']:.4f} iw {iw['nll_iw_nats']:.4f}")
    assert el["elbo_nats"] == pytest.approx(exact, abs=1e-6)
    assert el["bpd"] == pytest.approx(exact / (D * math.log(2)), abs=1e-8)
    assert set(el["elbo_terms"]) == {"recon", "kl", "total"}
    assert iw["nll_iw_nats"] == pytest.approx(exact500, abs=1e-6)  # log w constant in z
    assert iw["nll_iw_latent_chain"] is False and iw["nll_iw_k"] == 8


def test_iw_nll_tightens_with_k_for_a_poor_encoder(data):
    m = LinearGaussian(logvar_offset=1.5)  # encoder variance e^1.5 times too large
    x = data.images[:400]
    exact = float(-m.log_px(to_model_input(torch.from_numpy(x))).mean())
    g = torch.Generator().manual_seed(1)
    nll = {k: iw_nll(m, x, k=k, batch_size=512, generator=g)["nll_iw_nats"] for k in (1, 8, 64)}
    print(exact, nll)
    assert nll[1] > nll[8] > nll[64] > exact
    assert nll[64] - exact < 0.5 * (nll[1] - exact)


def test_iw_nll_flags_log_joints_that_weight_a_latent_chain(data):
    m = LinearGaussian()
    assert iw_nll(m, data.images[:8], k=2)["nll_iw_latent_chain"] is False
    m.log_joint_exact = False  # e.g. a diffusion prior: one path of its chain per sample
    assert iw_nll(m, data.images[:8], k=2)["nll_iw_latent_chain"] is True


def test_latent_health_matches_closed_form(data):
    m = LinearGaussian()
    out = latent_health(m, data.images, batch_size=512, mi_examples=3000, seed=0)
    S = m.post_var.numpy()
    mi_true = float(-0.5 * np.log(S).sum())
    print(out["kl_per_dim"], -0.5 * np.log(S), out["mi"], mi_true, out["mi_max"])
    # 5%: 3000 samples, and 8-bit clipping at +-1 trims the data's tails a little
    np.testing.assert_allclose(out["kl_per_dim"], -0.5 * np.log(S), rtol=0.05, atol=1e-6)
    assert out["active_units"] == 2 and out["latent_dim"] == 3
    np.testing.assert_allclose(out["unit_variance"], 1 - S, rtol=0.05, atol=1e-6)
    assert out["mi"] == pytest.approx(mi_true, rel=0.1)
    assert out["mi"] <= out["mi_max"]


def test_ssim_and_psnr_match_torchmetrics():
    tmf = pytest.importorskip("torchmetrics.functional.image")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 32, 32, generator=g)
    y = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    theirs = tmf.structural_similarity_index_measure(y.double(), x.double(), data_range=1.0)
    assert float(ssim(x, y).mean()) == pytest.approx(float(theirs), rel=1e-6)
    theirs = tmf.peak_signal_noise_ratio(y[:1], x[:1], data_range=1.0)
    assert float(psnr(x[:1], y[:1])) == pytest.approx(float(theirs), rel=1e-5)
    assert float(ssim(x, x).min()) == pytest.approx(1.0)


def test_recon_metrics(data):
    m = LinearGaussian()
    out, recons = recon_metrics(m, data.images[:300], batch_size=128, keep=16)
    x = to_model_input(torch.from_numpy(data.images[:300]))
    mse = float((((m.reconstruct(x) + 1) / 2).clamp(0, 1) - (x + 1) / 2).pow(2).mean())
    print(out)
    assert out["mse"] == pytest.approx(mse, rel=1e-5)
    assert out["psnr"] > 10 * math.log10(1 / out["mse"]) - 1e-6  # mean of logs >= log of mean
    assert 0 < out["ssim"] < 1
    assert recons.shape == (16, *SHAPE) and recons.dtype == np.uint8


class EncoderOnly(Method):
    """A deterministic encoder and nothing else: the suite must skip what it cannot do."""

    def __init__(self, data_shape=SHAPE):
        super().__init__(data_shape)
        self.proj = torch.nn.Linear(D, 4)

    def loss(self, batch):
        return {"loss": self.encode(batch["x0"]).sum(1)}

    def encode(self, x0):
        return self.proj(x0.reshape(len(x0), -1))


def small_cfg(**kw) -> EvalConfig:
    base = dict(
        max_eval=600,
        max_train=1000,
        iw_samples=4,
        iw_max_examples=100,
        n_samples=400,
        tsne_points=200,
        mi_examples=500,
        few_label_draws=2,
        few_label_sizes=(10, 100),
        kid_subset_size=200,
        kid_subsets=5,
        fidnet_epochs=1,
        grid_images=16,
    )
    base.update(kw)
    return EvalConfig(**base)


def test_evaluate_assembles_eval_json(data, tmp_path):
    test = model_data(800, 1)
    cfg = small_cfg(
        fidnet_cache=str(tmp_path / "cache"), metrics=(*small_cfg().metrics, "inception")
    )
    res = evaluate(LinearGaussian(), data, test, cfg, run_dir=tmp_path)
    json.dumps(res, allow_nan=False)  # strict JSON
    for key in ("bpd", "nll_iw_nats", "elbo_terms", "bound_is_valid"):
        assert key in res
    for key in ("linear_acc", "knn_acc", "few_label_acc"):
        assert key in res["probe"]
    assert set(res["probe"]["few_label_acc"]) == {"10", "100"}
    assert res["probe"]["linear_acc"] > 0.9  # the label is the sign of z_1, linear in encode(x)
    assert {"kl_per_dim", "active_units", "mi"} <= set(res["latent"])
    assert {"mse", "psnr", "ssim"} <= set(res["recon"])
    assert len(res["fid"]["feature_net_sha256"]) == 64 and res["fid"]["domain"] >= 0
    assert res["kid"]["feature_net_sha256"] == res["fid"]["feature_net_sha256"]
    # Inception without weights: an error for that family only, with instructions
    assert "inception_weights" in res["errors"]["inception"]
    figs = {p.stem for p in (tmp_path / "figures").glob("*.png")}
    assert {"samples", "reconstructions", "tsne", "kl_per_dim", "active_units"} <= figs
    assert set(res["figures"]) == figs


def test_evaluate_skips_what_a_method_cannot_do(data):
    res = evaluate(EncoderOnly(), data, model_data(300, 2), small_cfg())
    assert "bpd" not in res and "fid" not in res and "recon" not in res
    assert "linear_acc" in res["probe"]
    assert set(res["latent"]) == {"active_units", "latent_dim", "unit_variance"}
    assert "errors" not in res


def test_eval_config_checks_ranges_and_names(data):
    with pytest.raises(ValueError, match="iw_samples"):
        EvalConfig(iw_samples=0)
    with pytest.raises(ValueError, match="probe_val_fraction"):
        EvalConfig(probe_val_fraction=1.5)
    with pytest.raises(UserError, match="unknown evaluation 'fdi'"):
        evaluate(EncoderOnly(), data, data, EvalConfig(metrics=("fdi",)))
