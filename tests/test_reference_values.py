"""Reference values from independent implementations, and maths that had no test.

Hard-coded numbers were printed by Hugging Face diffusers 0.42.1 (torch 2.13.0, CPU):

    from diffusers import DDPMScheduler, DDIMScheduler
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                  beta_end=0.02).alphas_cumprod[[0, 1, 99, 499, 998, 999]]
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
        .alphas_cumprod[...]                                   (the same indices)
    s = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                      beta_end=0.02, timestep_spacing="trailing", set_alpha_to_one=True,
                      clip_sample=False); s.set_timesteps(2)    # timesteps [999, 499]
    z = x; for t in s.timesteps: z = s.step(0.7 * z, t, z).prev_sample

diffusers stores alphas_cumprod in float32, hence rtol 1e-6. Its timestep i is diffrep's step
i + 1 (t = (i + 1) / T), so alphas_cumprod[i] = sigmoid(-gamma_{i+1}).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffrep.data import LOG_BIN, dequantise
from diffrep.diffusion import samplers
from diffrep.diffusion.objectives import vdm_elbo
from diffrep.diffusion.schedules import SCHEDULES
from diffrep.eval import probes

F64 = torch.float64
IDX = [0, 1, 99, 499, 998, 999]
DIFFUSERS_LINEAR_ABAR = [
    0.9998999834060669,
    0.9997800588607788,
    0.8970179557800293,
    0.07858723402023315,
    4.118194192415103e-05,
    4.035830352222547e-05,
]
DIFFUSERS_COSINE_ABAR = [
    0.9999586939811707,
    0.9999125599861145,
    0.9720926880836487,
    0.4938434660434723,
    2.428766265438753e-06,
    2.4287349909002387e-09,
]
DDIM_X = [0.5, -1.25, 2.0, 0.1]
DIFFUSERS_DDIM_AFTER_999 = [
    6.955406321153558,
    -17.38851580288389,
    27.821625284614232,
    1.3910812642307118,
]
DIFFUSERS_DDIM_AFTER_499 = [
    8.139743911441691,
    -20.349359778604224,
    32.558975645766765,
    1.6279487822883383,
]


@pytest.mark.parametrize(
    "name,ref", [("ddpm-linear", DIFFUSERS_LINEAR_ABAR), ("cosine", DIFFUSERS_COSINE_ABAR)]
)
def test_schedules_match_diffusers(name, ref):
    gammas = SCHEDULES.build(name, T=1000).table(1000)  # float64 [1001]
    abar = torch.sigmoid(-gammas[torch.tensor(IDX) + 1])
    np.testing.assert_allclose(abar.numpy()[:5], ref[:5], rtol=1e-6)
    # the last cosine value: diffusers' float32 1 - beta at beta = max_beta = 0.999 is off by
    # 1.3e-5 relative (float32 spacing near 1), and the cumulative product carries it
    np.testing.assert_allclose(abar.numpy()[5], ref[5], rtol=2e-5 if name == "cosine" else 1e-6)


def test_ddim_steps_match_diffusers():
    """Two deterministic DDIM steps (t = 1 -> 0.5 -> 0) with the linear eps_hat = 0.7 z."""
    sched = SCHEDULES.build("ddpm-linear", T=1000)
    x = torch.tensor([DDIM_X], dtype=F64)

    def eps_model(z, t, cond=None):
        return 0.7 * z

    one = samplers.ddim(eps_model, sched, x, 2, eta=0.0)
    np.testing.assert_allclose(one[0].numpy(), DIFFUSERS_DDIM_AFTER_499, rtol=1e-6)
    # the first step alone: the sampler's z after t = 1 -> 0.5, read off the same update
    g = sched(torch.tensor([1.0, 0.5], dtype=F64))
    a, s = torch.sigmoid(-g).sqrt(), torch.sigmoid(g).sqrt()
    eps = 0.7 * x
    mid = a[1] * (x - s[0] * eps) / a[0] + s[1] * eps
    np.testing.assert_allclose(mid[0].numpy(), DIFFUSERS_DDIM_AFTER_999, rtol=1e-6)


def test_dequantisation_bound():
    """-log P(k) <= E_u[-log p(x)] - D log(2/256) at x = dequantise(k) (Theis et al. 2016),
    nearly tight for a density flat within bins, loose for one sharper than a bin."""
    g = torch.Generator().manual_seed(0)
    k = torch.randint(20, 236, (1, 6), generator=g).to(torch.uint8)  # interior bins, D = 6
    lo = (2 * k.double()) / 256 - 1  # bin edges in model space
    hi = lo + 2 / 256
    n = 20000
    x = dequantise(k.expand(n, 6), generator=g).double()  # [n, 6]
    assert ((x >= lo) & (x < hi)).all()
    centre = (lo + hi) / 2
    for std, gap_range in ((0.3, (0.0, 1e-3)), (0.5 / 256, (0.1, 10.0))):
        p = torch.distributions.Normal(centre + 0.1 * std, std)  # [1, 6]
        log_P = torch.log(p.cdf(hi) - p.cdf(lo)).sum()  # exact discrete log-probability
        nll = -p.log_prob(x).sum(1)  # [n]
        cont = nll.mean() - 6 * LOG_BIN
        se = float(nll.std()) / math.sqrt(n)
        gap = float(cont + log_P)
        print(std, gap, se)
        assert gap > -3 * se and gap_range[0] - 3 * se < gap < gap_range[1], (std, gap)


class GammaDenoiser(torch.nn.Module):
    """A fixed nonlinear eps_hat(z, gamma): it looks gamma(t) up in the schedule it is given,
    so two schedules with the same endpoints give the same function of (z, logSNR)."""

    def __init__(self, schedule):
        super().__init__()
        self.schedule = schedule

    def forward(self, z, t, cond=None):
        gamma = self.schedule(t.double()).to(z.dtype).view(-1, *([1] * (z.dim() - 1)))
        return torch.sigmoid(gamma) * torch.tanh(1.5 * z) + 0.1 * torch.sin(gamma) * z


def test_continuous_vdm_loss_is_invariant_to_the_schedule_shape():
    """VDM eq. 17 in gamma: the continuous diffusion loss depends on the endpoints only."""
    torch.manual_seed(0)
    x0 = torch.tensor([[0.6, -0.3, 0.9, -0.8]], dtype=F64).expand(8000, 4).contiguous()
    linear = SCHEDULES.build("vdm-linear", gamma_min=-6.0, gamma_max=4.0).double()
    net = SCHEDULES.build("learned-net", gamma_min=-6.0, gamma_max=4.0, n_features=64)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # a markedly non-linear monotone shape between the same endpoints
        net.w1.fill_(0.1)
        net.w2.copy_(8 * torch.randn(64, generator=g, dtype=F64))
        net.b2.copy_(4 * torch.randn(64, generator=g, dtype=F64))
        net.w3.copy_(3 * torch.rand(64, generator=g, dtype=F64))
    net = net.double()
    means, ses = [], []
    for sched in (linear, net):
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            d = vdm_elbo(GammaDenoiser(sched), sched, x0, generator=g)["diffusion"]
        means.append(float(d.mean()))
        ses.append(float(d.std()) / math.sqrt(len(d)))
    t = torch.linspace(0, 1, 11, dtype=F64)
    with torch.no_grad():
        shape_gap = (linear(t) - net(t)).abs().max()
    print(means, ses, float(shape_gap))
    assert shape_gap > 0.5  # the shapes really differ
    assert abs(means[0] - means[1]) < 3 * math.hypot(*ses)


def test_probes_do_not_see_test_labels(monkeypatch):
    """Shuffling the test labels before fitting leaves every fitted probe unchanged."""
    rng = np.random.default_rng(0)
    tr_x, te_x = rng.normal(size=(300, 5)), rng.normal(size=(100, 5))
    tr_y = (tr_x[:, 0] + 0.5 * rng.normal(size=300) > 0).astype(int) + 2 * (tr_x[:, 1] > 0)
    te_y = (te_x[:, 0] > 0).astype(int) + 2 * (te_x[:, 1] > 0)
    fitted = []
    real_fit = probes._fit

    def spy(clf, x, y):
        out = real_fit(clf, x, y)
        fitted.append((out.coef_.copy(), out.intercept_.copy()))
        return out

    monkeypatch.setattr(probes, "_fit", spy)
    runs = []
    for y in (te_y, rng.permutation(te_y)):
        fitted.clear()
        res = probes.linear_probe(tr_x, tr_y, te_x, y, Cs=(0.1, 1.0))
        res.update(probes.few_label_probe(tr_x, tr_y, te_x, y, sizes=(10, 100), draws=2))
        runs.append((res, list(fitted)))
    (res0, fit0), (res1, fit1) = runs
    assert len(fit0) == len(fit1) > 0 and res0["linear_C"] == res1["linear_C"]
    for (c0, b0), (c1, b1) in zip(fit0, fit1):
        np.testing.assert_array_equal(c0, c1)
        np.testing.assert_array_equal(b0, b1)
    assert res0["linear_acc"] > 0.7 > res1["linear_acc"]  # the scores did change
