"""Frechet distance (FID) and kernel inception distance (KID) between two feature sets.

FID (Heusel et al. 2017, eq. 6) fits a Gaussian to each feature set and returns

    d^2 = |mu_1 - mu_2|^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2}).

Tr (S_1 S_2)^{1/2} is computed as Tr (L^T S_2 L)^{1/2} with S_1 = L L^T (Cholesky, or
L = S_1^{1/2} when S_1 is singular): the inner matrix is similar to S_1 S_2 and symmetric positive
semi-definite, so a symmetric eigenvalue problem (eigenvalues clipped at 0) replaces the
general, non-symmetric matrix square root that goes complex or NaN on near-singular covariances.
Everything is float64, computed with torch's BLAS/LAPACK (the covariance of 10k x 256 features
was 7x faster there than numpy's on our CPUs; see benchmarks/bench_eval_speed.py); inputs and
outputs stay numpy.

KID (Binkowski et al. 2018, sec. 4) is the unbiased MMD^2 with the cubic polynomial kernel
k(x, y) = (x.y / d + 1)^3, averaged over random subsets; unlike FID it is unbiased in the number
of samples, so small evaluations are comparable with large ones.

Scores are only comparable when computed with the same feature network: `domain_scores` stores the
sha256 of the network's weights file next to every number.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch


def feature_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [d] and unbiased covariance [d, d] of features [N, d], in float64."""
    f = np.asarray(feats, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"need at least 2 feature vectors [N, d], got shape {f.shape}")
    if len(f) < f.shape[1]:
        warnings.warn(
            f"FID from {len(f)} samples of {f.shape[1]}-d features: the covariance is singular "
            "and the score is strongly biased upwards; use at least as many samples as dimensions",
            stacklevel=2,
        )
    from threadpoolctl import threadpool_limits

    mu = f.mean(0)
    x = f - mu
    # numpy turns x.T @ x into one BLAS syrk (half a general matmul's work: the result is
    # symmetric); its BLAS threads follow torch's setting, like every other op here
    with threadpool_limits(torch.get_num_threads(), user_api="blas"):
        cov = x.T @ x
    return mu, cov / (len(f) - 1)


def _sqrtm_psd(a: torch.Tensor) -> torch.Tensor:
    lam, v = torch.linalg.eigh((a + a.T) / 2)  # symmetrise away round-off asymmetry
    return (v * lam.clamp(min=0.0).sqrt()) @ v.T


def sqrtm_psd(a: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (eigenvalues clipped at 0)."""
    return _sqrtm_psd(torch.as_tensor(np.asarray(a, dtype=np.float64))).numpy()


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """d^2 between N(mu1, sigma1) and N(mu2, sigma2) (Heusel et al. 2017, eq. 6)."""
    mu1, mu2, s1, s2 = (
        torch.as_tensor(np.asarray(a, np.float64)) for a in (mu1, mu2, sigma1, sigma2)
    )
    # A factor S1 = L L^T makes L^T S2 L similar to S1 S2 and symmetric PSD: Cholesky when S1 is
    # positive definite (cheap), the eigendecomposition square root when it is singular.
    L, info = torch.linalg.cholesky_ex(s1)
    r1 = L if int(info) == 0 else _sqrtm_psd(s1)
    m = r1.T @ s2 @ r1
    lam = torch.linalg.eigvalsh((m + m.T) / 2)
    tr_sqrt = lam.clamp(min=0.0).sqrt().sum()
    d2 = ((mu1 - mu2) ** 2).sum() + s1.trace() + s2.trace() - 2.0 * tr_sqrt
    return float(max(float(d2), 0.0))  # round-off can leave -1e-12 for identical sets


def fid_from_features(feats1: np.ndarray, feats2: np.ndarray) -> float:
    return frechet_distance(*feature_stats(feats1), *feature_stats(feats2))


def kid_from_features(
    feats1: np.ndarray,
    feats2: np.ndarray,
    subset_size: int = 1000,
    subsets: int = 50,
    seed: int = 0,
) -> tuple[float, float]:
    """KID: mean and std over `subsets` random subsets of the unbiased MMD^2 (cubic kernel)."""
    f1, f2 = np.asarray(feats1, np.float64), np.asarray(feats2, np.float64)
    m = min(subset_size, len(f1), len(f2))
    if m < 2:
        raise ValueError("KID needs at least 2 samples in each set")
    if m < subset_size:
        warnings.warn(
            f"KID from subsets of {m} samples (kid_subset_size={subset_size} asked for more than "
            f"the {min(len(f1), len(f2))} available): the estimate is noisier and the subsets "
            "overlap; use more samples (eval.n_samples) for a comparable KID",
            stacklevel=2,
        )
    d = f1.shape[1]
    rng = np.random.default_rng(seed)
    vals = np.empty(subsets)
    for i in range(subsets):
        x = f1[rng.choice(len(f1), m, replace=False)]
        y = f2[rng.choice(len(f2), m, replace=False)]
        k_xx = (x @ x.T / d + 1.0) ** 3
        k_yy = (y @ y.T / d + 1.0) ** 3
        k_xy = (x @ y.T / d + 1.0) ** 3
        # unbiased MMD^2: drop the diagonals of the within-set kernels
        vals[i] = (
            (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
            + (k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
            - 2.0 * k_xy.mean()
        )
    return float(vals.mean()), float(vals.std())


def scores(
    real_feats: np.ndarray,
    fake_feats: np.ndarray,
    kid_subset_size: int = 1000,
    kid_subsets: int = 50,
    seed: int = 0,
) -> dict[str, float]:
    """{"fid", "kid", "kid_std"} between two feature sets."""
    kid, kid_std = kid_from_features(real_feats, fake_feats, kid_subset_size, kid_subsets, seed)
    return {"fid": fid_from_features(real_feats, fake_feats), "kid": kid, "kid_std": kid_std}


def train_fidnet(*args, **kwargs):
    """`diffrep fidnet train DATASET`; see `diffrep.eval.fidnet.train_fidnet`."""
    from diffrep.eval.fidnet import train_fidnet as _train

    return _train(*args, **kwargs)
