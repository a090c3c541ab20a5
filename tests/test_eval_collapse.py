"""The shuffle test of the collapse diagnostics, against closed forms.

The oracle decoder below knows x0 from its code (w = x0 itself), so with its own code the
denoising error is 0 and with another example's code x0' it is SNR(t) ||x0 - x0'||^2. With
x0_i = e_i (distinct unit pixels), ||x0 - x0'||^2 = 2 for every pair, so

    shuffle_nats = int 1/2 gamma'(t) SNR(t) 2 dt = SNR(0) - SNR(1)          (d SNR = -gamma' SNR dt)
    shuffle_mse  = int SNR(t) 2 dt = 2 (SNR(0) - SNR(1)) / (gamma_1 - gamma_0)   (linear gamma)
"""

import math

import pytest
import torch
from torch import nn

from diffrep.diffusion.process import alpha_sigma, q_sample
from diffrep.diffusion.schedules import build_schedule
from diffrep.eval.collapse import code_conditioned_diffusion, derangement, shuffle_test
from diffrep.methods.base import Method

G0, G1 = -2.0, 2.0
N = 64  # examples; 1 x 8 x 8 images, x0_i = e_i


class _Part(nn.Module):
    """The code-conditioned diffusion part's per-t loss with a given denoiser."""

    def __init__(self, denoiser, cond_dim: int):
        super().__init__()
        self.denoiser = denoiser
        self.cond_dim = cond_dim
        self.schedule = build_schedule("vdm-linear", gamma_min=G0, gamma_max=G1)

    def per_t_loss(self, x0, t, cond=None, eps=None):
        x_t = q_sample(x0, self.schedule(t).to(x0.dtype), eps)
        return (eps - self.denoiser(x_t, t, cond)).pow(2).flatten(1).sum(1)


class _CodeIsImage(Method):
    """encode(x0) = x0 flattened; decoder = the given denoiser."""

    def __init__(self, denoiser):
        super().__init__((1, 8, 8))
        self.diffusion = _Part(denoiser, 64)

    def encode(self, x0):
        return x0.flatten(1)


def oracle(x_t, t, cond):
    alpha, sigma = alpha_sigma(build_schedule("vdm-linear", gamma_min=G0, gamma_max=G1)(t))
    a, s = (v.to(x_t.dtype).view(-1, 1, 1, 1) for v in (alpha, sigma))
    return (x_t - a * cond.view_as(x_t)) / s


def ignores_code(x_t, t, cond):
    return 0.3 * x_t + t.to(x_t.dtype).view(-1, 1, 1, 1)


def _images():
    return torch.eye(N).view(N, 1, 8, 8)


def test_derangement_moves_every_example():
    g = torch.Generator().manual_seed(0)
    for n in (2, 3, 17):
        idx = derangement(n, g)
        assert sorted(idx.tolist()) == list(range(n))
        assert (idx != torch.arange(n)).all()


def test_shuffle_test_is_zero_for_a_decoder_that_ignores_its_code():
    res = shuffle_test(_CodeIsImage(ignores_code), _images(), bins=5, batch_size=32,
                       generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert res["shuffle_nats"] == 0.0 and res["shuffle_mse"] == 0.0  # same t and eps: exact
    assert min(res["t_bins"]["own_mse"]) > 1.0  # ...although the decoder is far from perfect


def test_shuffle_test_matches_the_closed_form_for_a_decoder_that_uses_its_code():
    res = shuffle_test(_CodeIsImage(oracle), _images(), bins=10, batch_size=N,
                       generator=torch.Generator().manual_seed(0))  # fmt: skip
    snr0, snr1 = math.exp(-G0), math.exp(-G1)
    assert res["shuffle_nats"] == pytest.approx(snr0 - snr1, rel=0.03)  # 7.25 nats
    assert res["shuffle_mse"] == pytest.approx(2 * (snr0 - snr1) / (G1 - G0), rel=0.03)
    assert max(res["t_bins"]["own_mse"]) < 1e-8  # the own code makes the oracle exact
    # SNR falls with t, so the increase does too; the standard error is small but not zero
    inc = res["t_bins"]["increase_mse"]
    assert all(a > b for a, b in zip(inc, inc[1:]))
    assert 0 < res["shuffle_nats_se"] < 0.1 * res["shuffle_nats"]
    assert res["shuffle_bpd"] == pytest.approx(res["shuffle_nats"] / (64 * math.log(2)))


def test_methods_without_a_code_conditioned_decoder_are_skipped():
    m = _CodeIsImage(oracle)
    assert code_conditioned_diffusion(m) is m.diffusion
    m.diffusion.cond_dim = None
    assert code_conditioned_diffusion(m) is None
    with pytest.raises(ValueError, match="cond_dim"):
        shuffle_test(m, _images())
