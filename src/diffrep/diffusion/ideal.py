"""The ideal (closed-form optimal) denoiser over a training set, and a memorisation check.

Seed 003 (Tresp, "Towards Diffusion Models and VAE"): the optimal denoising autoencoder for
data that is exactly the training set is DAE(x) = sum_i P(x_i | x) x_i with
P(x_i | x) = N(x; x_i, s^2) / sum_j N(x; x_j, s^2). For the variance-preserving process
x_t = alpha_t x0 + sigma_t eps (VDM eq. 1) with x0 uniform over the N training images,

    E[x0 | x_t] = sum_i softmax_i( -||x_t - alpha_t x_i||^2 / (2 sigma_t^2) ) x_i.

At small sigma the softmax picks the nearest training image (every x_i is an attractor: the
model memorises); at large sigma all weights are equal and it returns the training mean.
Sampling with this denoiser therefore reproduces training images, which `memorisation`
detects by comparing nearest-training-image distances of samples with those of real held-out
images.

The sum runs over chunks of the training set with a streaming log-sum-exp, so memory is
O(batch x chunk + batch x D) whatever N is.
"""

from __future__ import annotations

import torch
from torch import nn

from diffrep.diffusion.process import alpha_sigma
from diffrep.errors import UserError


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1)


class IdealDenoiser(nn.Module):
    """E[x0 | x_t] under the empirical training distribution; an eps_model(x_t, t) -> eps_hat.

    train_x0: [N, ...] training images in model space. schedule: t [B] -> gamma [B] (a
    `diffrep.diffusion.schedules.Schedule`). Computation runs in `dtype` (float64 by default:
    at small sigma the logits are ||.||^2 / sigma^2, and float32 rounding of the squared
    distances would blur the nearest-neighbour choice).
    """

    def __init__(
        self,
        train_x0: torch.Tensor,
        schedule: nn.Module,
        *,
        chunk_size: int = 2048,
        dtype: torch.dtype = torch.float64,
    ):
        super().__init__()
        if not torch.is_tensor(train_x0) or train_x0.dim() < 2 or train_x0.shape[0] < 1:
            raise UserError(
                "IdealDenoiser needs the training images as a tensor [N, ...] with N >= 1; "
                "fix: pass e.g. to_model_input(data.images)"
            )
        if chunk_size < 1:
            raise UserError(f"IdealDenoiser: chunk_size must be >= 1, got {chunk_size}")
        self.schedule = schedule
        self.chunk_size = int(chunk_size)
        self.item_shape = tuple(train_x0.shape[1:])
        xs = _flat(train_x0).to(dtype)  # [N, D]
        self.register_buffer("x_train", xs, persistent=False)
        self.register_buffer("x_sq", xs.square().sum(1), persistent=False)  # [N]

    def _gamma(self, t: torch.Tensor | float, batch: int) -> torch.Tensor:
        if not torch.is_tensor(t):
            t = torch.tensor(float(t))
        gamma = self.schedule(t.reshape(-1).to(torch.float64))
        return gamma.detach().to(self.x_train.dtype).expand(batch)  # [B]

    @torch.no_grad()
    def x0_from_gamma(self, x_t: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        """E[x0 | x_t] for given gamma [B] (or scalar) -> [B, ...] in x_t's dtype."""
        b = x_t.shape[0]
        if tuple(x_t.shape[1:]) != self.item_shape:
            raise UserError(
                f"IdealDenoiser built on items {self.item_shape} got x_t {tuple(x_t.shape)}; "
                "fix: denoise data of the training images' shape"
            )
        z = _flat(x_t).to(self.x_train.dtype)  # [B, D]
        gamma = gamma.to(self.x_train.dtype).reshape(-1).expand(b)
        alpha, sigma = alpha_sigma(gamma)  # [B]
        # sigma = 0 (gamma = -inf, e.g. DDPM schedules at t = 0) is the limit sigma -> 0: the
        # nearest training image. A floor keeps the logits finite so the max-shift picks it.
        inv2s2 = 0.5 / sigma.square().clamp_min(1e-30)  # [B]
        # logit_i = -||z - alpha x_i||^2 / (2 sigma^2) up to the per-row constant ||z||^2:
        #         = (alpha z.x_i - alpha^2 ||x_i||^2 / 2) / sigma^2
        m = torch.full((b,), -torch.inf, dtype=z.dtype, device=z.device)  # running max
        s = torch.zeros(b, dtype=z.dtype, device=z.device)  # running sum exp(l - m)
        acc = torch.zeros_like(z)  # running sum exp(l - m) x_i   [B, D]
        for start in range(0, self.x_train.shape[0], self.chunk_size):
            xi = self.x_train[start : start + self.chunk_size]  # [n, D]
            sq = self.x_sq[start : start + self.chunk_size]  # [n]
            logits = (2 * alpha[:, None] * (z @ xi.T) - alpha[:, None] ** 2 * sq[None, :]) * (
                inv2s2[:, None]
            )  # [B, n]
            m_new = torch.maximum(m, logits.max(1).values)
            scale = torch.exp(m - m_new)  # rescale what was accumulated under the old max
            w = torch.exp(logits - m_new[:, None])  # [B, n]
            s = s * scale + w.sum(1)
            acc = acc * scale[:, None] + w @ xi
            m = m_new
        return (acc / s[:, None]).reshape(x_t.shape).to(x_t.dtype)

    def x0(self, x_t: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """E[x0 | x_t] at time t ([B] or scalar, mapped to gamma by the schedule)."""
        return self.x0_from_gamma(x_t, self._gamma(t, x_t.shape[0]))

    @torch.no_grad()
    def forward(self, x_t: torch.Tensor, t: torch.Tensor | float, cond=None) -> torch.Tensor:
        """eps_hat = (x_t - alpha_t x0_hat) / sigma_t, so it plugs into every sampler."""
        gamma = self._gamma(t, x_t.shape[0])
        x0 = self.x0_from_gamma(x_t, gamma).to(self.x_train.dtype)
        alpha, sigma = alpha_sigma(gamma)
        shape = (-1,) + (1,) * (x_t.dim() - 1)
        eps = (x_t.to(self.x_train.dtype) - alpha.view(shape) * x0) / sigma.view(shape)
        return eps.to(x_t.dtype)


# ------------------------------------------------------------------------- memorisation


@torch.no_grad()
def nearest_distances(
    queries: torch.Tensor, train: torch.Tensor, *, chunk_size: int = 4096, batch_size: int = 512
) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean distance from each query to its nearest training item, and that item's index.

    queries [M, ...], train [N, ...] -> (dist float64 [M], index int64 [M]). float64 so that
    exact copies give distance ~0 rather than sqrt(float32 cancellation error).
    """
    q = _flat(queries).double()
    x = _flat(train).double()
    if q.shape[1] != x.shape[1]:
        raise UserError(
            f"nearest_distances: queries have {q.shape[1]} values per item, training data "
            f"{x.shape[1]}; fix: compare images of the same shape"
        )
    x_sq = x.square().sum(1)
    dists, idxs = [], []
    for qs in q.split(batch_size):
        best = torch.full((qs.shape[0],), torch.inf, dtype=q.dtype)
        arg = torch.zeros(qs.shape[0], dtype=torch.long)
        q_sq = qs.square().sum(1, keepdim=True)
        for start in range(0, x.shape[0], chunk_size):
            xc = x[start : start + chunk_size]
            d2 = (q_sq - 2 * qs @ xc.T + x_sq[None, start : start + chunk_size]).clamp_min(0)
            v, i = d2.min(1)
            better = v < best
            best = torch.where(better, v, best)
            arg = torch.where(better, i + start, arg)
        dists.append(best.sqrt())
        idxs.append(arg)
    return torch.cat(dists), torch.cat(idxs)


def memorisation(
    samples: torch.Tensor,
    train: torch.Tensor,
    test: torch.Tensor,
    *,
    quantile: float = 0.05,
    chunk_size: int = 4096,
) -> dict:
    """Do generated samples copy training images? (seed 003: training images as attractors.)

    Compares d(sample, nearest train image) with d(test image, nearest train image) for real
    held-out images, which are *not* copies by construction. A sample is a "copy" when it is
    closer to a training image than the `quantile` (5 %) quantile of the test-to-train
    distances; a model that generalises has copy_fraction near `quantile`, one that memorises
    near 1. Returns floats (JSON-ready):

    {"median_sample_to_train", "median_test_to_train", "median_ratio" (sample / test),
     "copy_threshold", "copy_fraction", "test_copy_fraction", "num_samples", "num_test",
     "num_distinct_nearest" (how many different training images the samples are nearest to)}
    """
    if not 0.0 < quantile < 1.0:
        raise UserError(f"memorisation: quantile must be in (0, 1), got {quantile}")
    if len(samples) < 1 or len(test) < 2 or len(train) < 1:
        raise UserError(
            "memorisation needs >= 1 sample, >= 1 training image and >= 2 test images; "
            "fix: pass more images"
        )
    d_s, nn_s = nearest_distances(samples, train, chunk_size=chunk_size)
    d_t, _ = nearest_distances(test, train, chunk_size=chunk_size)
    thr = torch.quantile(d_t, quantile)
    med_s, med_t = d_s.median(), d_t.median()
    return {
        "median_sample_to_train": float(med_s),
        "median_test_to_train": float(med_t),
        "median_ratio": float(med_s / med_t) if med_t > 0 else float("nan"),
        "copy_threshold": float(thr),
        "copy_fraction": float((d_s < thr).double().mean()),
        "test_copy_fraction": float((d_t < thr).double().mean()),
        "num_samples": int(len(samples)),
        "num_test": int(len(test)),
        "num_distinct_nearest": int(nn_s.unique().numel()),
    }
