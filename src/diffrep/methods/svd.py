"""The linear-subspace denoiser (seed 003, "SVD - Diffusion").

    DAE(x) = V V^T x,   V [D, k]: the top k right singular vectors of the training matrix X [N, D]

fitted in closed form (`fit`: one SVD; no gradient steps). DAE(x) lies on the subspace but is
not a stored image: the iteration x' = (1 - eta) x + eta V V^T x converges to the projection of
its start, so stored images are not attractors (the seed: "to get attractor properties, DAE(x)
needs to be nonlinear"). The representation is the k coordinates V^T x.
"""

from __future__ import annotations

import torch

from diffrep.errors import UserError
from diffrep.methods.base import METHODS, Batch, Method
from diffrep.methods.iteration import DenoiserIterationSampling


@METHODS.register("svd")
class SubspaceDAE(DenoiserIterationSampling, Method):
    bound_is_valid = False
    closed_form = True  # `diffrep train` calls fit(x0) on the training split instead of training

    def __init__(self, data_shape: tuple[int, int, int], *, rank: int = 16, sigma: float = 0.3):
        """
        Args:
            rank: k, the dimension of the subspace (and of the representation).
            sigma: noise standard deviation of the denoising cost and the attractor check.
        """
        super().__init__(data_shape)
        if not 1 <= rank <= self.dim or sigma <= 0:
            raise UserError(
                f"svd: need 1 <= rank <= {self.dim} and sigma > 0, got rank={rank}, "
                f"sigma={sigma}; fix: e.g. rank=16, sigma=0.3"
            )
        self.sigma = sigma
        self.register_buffer("V", torch.zeros(self.dim, rank))  # [D, k], orthonormal columns

    def fit(self, x0: torch.Tensor) -> None:
        """V from the SVD of the training images x0 [N, C, H, W] (model space, not centred:
        the seed's subspace through the origin)."""
        X = x0.detach().flatten(1).double()  # [N, D]
        k = self.V.shape[1]
        if len(X) < k:
            raise UserError(f"svd: rank {k} needs at least {k} training images, got {len(X)}")
        _, _, vh = torch.linalg.svd(X, full_matrices=False)  # vh [min(N, D), D]
        self.V = vh[:k].T.to(self.V.device, torch.float32).contiguous()

    def denoise(self, x: torch.Tensor) -> torch.Tensor:
        """V V^T x, the orthogonal projection onto the subspace [B, C, H, W]."""
        flat = x.flatten(1)
        return ((flat @ self.V) @ self.V.T).reshape(x.shape)

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        """||x0 - V V^T (x0 + s eps)||^2 per example [B] (evaluation only)."""
        x0 = batch["x0"]
        x_noisy = x0 + self.sigma * torch.randn_like(x0)
        return {"loss": (self.denoise(x_noisy) - x0).flatten(1).pow(2).sum(1)}

    @torch.no_grad()
    def encode(self, x0: torch.Tensor) -> torch.Tensor:
        return x0.flatten(1) @ self.V  # [B, k]

    @torch.no_grad()
    def reconstruct(self, x0: torch.Tensor, generator: torch.Generator | None = None):
        return self.denoise(x0).clamp(-1, 1)
