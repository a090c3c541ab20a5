"""Discretised likelihoods pick a bin by which side of a bin *boundary* x is on.

Inputs that are not exact bin centres (8-bit data after float32 rounding, or one ulp off) must
get the log-probability of their bin. Before the fix the edge thresholds sat on the centres of
bins 1 and 254, so x one float32 ulp above bin 254's centre got the whole upper tail (bin 255's
mass) instead of bin 254's.
"""

import pytest
import torch

from diffrep.distributions import discretised_gaussian_log_prob, discretised_logistic_log_prob

CENTRES = (2 * torch.arange(256, dtype=torch.float32) + 1) / 256 - 1


@pytest.mark.parametrize("fn", [discretised_logistic_log_prob, discretised_gaussian_log_prob])
@pytest.mark.parametrize("mean", [-0.99, 0.99])  # sharp next to an edge: tail >> interior bin
def test_one_ulp_off_the_centre_gives_the_same_bin(fn, mean):
    x = CENTRES.view(256, 1)
    m, ls = torch.full_like(x, mean), torch.full_like(x, -5.0)
    ref = fn(x, m, ls)  # [256]
    for direction in (2.0, -2.0):
        lp = fn(torch.nextafter(x, torch.full_like(x, direction)), m, ls)
        bad = (lp - ref).abs() > 1e-3
        assert not bad.any(), (direction, bad.nonzero().flatten().tolist(), (lp - ref)[bad])


@pytest.mark.parametrize("fn", [discretised_logistic_log_prob, discretised_gaussian_log_prob])
def test_a_quarter_bin_off_the_centre_stays_in_the_bin(fn):
    x = CENTRES.view(256, 1)
    m, ls = torch.full_like(x, 0.2), torch.full_like(x, -2.0)
    ref = fn(x, m, ls)
    for shift in (0.5 / 256, -0.5 / 256):  # the bin's interval moves, its mass barely does
        assert ((fn(x + shift, m, ls) - ref).abs() < 0.15).all()


@pytest.mark.parametrize("fn", [discretised_logistic_log_prob, discretised_gaussian_log_prob])
def test_probabilities_of_all_bins_sum_to_one_at_off_centre_inputs(fn):
    x = (CENTRES.double() + 0.3 / 256).view(256, 1)  # every input 0.15 bin above its centre
    lp = fn(x, torch.full_like(x, 0.1), torch.full_like(x, -2.5))
    # the interior bins are evaluated shifted, so compare with the shifted interval masses
    assert torch.logsumexp(lp, 0).item() == pytest.approx(0.0, abs=0.01)
