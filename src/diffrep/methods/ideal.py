"""The ideal denoising autoencoder over a training set (seed 003, "Attractor on the Manifold?").

    DAE(x) = sum_i P(x_i | x) x_i,   P(x_i | x) = N(x; x_i, s^2) / sum_j N(x; x_j, s^2)

It is the optimal DAE for data that is exactly the training set, fitted in closed form (`fit`
stores the images; no gradient steps). Computed by `diffrep.diffusion.ideal.IdealDenoiser`:
x = x_i + s eps is the variance-preserving x_t = alpha x_i + sigma eps scaled by
1 / alpha = sqrt(1 + s^2), at gamma = log(sigma^2 / alpha^2) = 2 log s. At small s every training
image is an attractor of the iteration x' = (1 - eta) x + eta DAE(x), so the samples are
training images (the seed: the model memorises).
"""

from __future__ import annotations

import math

import torch

from diffrep.diffusion.ideal import IdealDenoiser
from diffrep.errors import UserError
from diffrep.methods.base import METHODS, Batch, Method
from diffrep.methods.iteration import DenoiserIterationSampling


@METHODS.register("ideal")
class IdealDAE(DenoiserIterationSampling, Method):
    bound_is_valid = False
    closed_form = True  # `diffrep train` calls fit(x0) on the training split instead of training

    def __init__(self, data_shape: tuple[int, int, int], *, sigma: float = 0.3):
        """
        Args:
            sigma: the noise standard deviation s in model space (images span [-1, 1]).
        """
        super().__init__(data_shape)
        if sigma <= 0:
            raise UserError(f"ideal: sigma must be > 0, got {sigma}; fix: e.g. sigma=0.3")
        self.sigma = sigma
        self.register_buffer("train_x0", torch.zeros(0, *self.data_shape))  # [N, C, H, W]
        self._ideal: IdealDenoiser | None = None

    def fit(self, x0: torch.Tensor) -> None:
        """Store the training images x0 [N, C, H, W] (model space): the closed-form fit."""
        self.train_x0 = x0.detach().to(self.train_x0.device, torch.float32).clone()
        self._ideal = None

    def prepare_load(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Size the training-set buffer like the checkpoint's before loading (N varies)."""
        if "train_x0" in state_dict:
            self.fit(torch.zeros_like(state_dict["train_x0"]))

    def denoise(self, x: torch.Tensor) -> torch.Tensor:
        """DAE(x) [B, C, H, W] (float64 inside: the softmax of ||x - x_i||^2 / s^2)."""
        if len(self.train_x0) == 0:
            raise UserError("ideal: not fitted; fix: `diffrep train` the method (it calls fit)")
        if self._ideal is None or self._ideal.x_train.device != x.device:
            self._ideal = IdealDenoiser(self.train_x0, schedule=None).to(x.device)
        alpha = 1.0 / math.sqrt(1.0 + self.sigma**2)
        gamma = torch.full((x.shape[0],), 2.0 * math.log(self.sigma), dtype=torch.float64)
        return self._ideal.x0_from_gamma(alpha * x, gamma.to(x.device))

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The seed's cost ||x0 - DAE(x0 + s eps)||^2 per example [B] (evaluation only)."""
        x0 = batch["x0"]
        x_noisy = x0 + self.sigma * torch.randn_like(x0)
        return {"loss": (self.denoise(x_noisy) - x0).flatten(1).pow(2).sum(1)}

    @torch.no_grad()
    def reconstruct(self, x0: torch.Tensor, generator: torch.Generator | None = None):
        return self.denoise(x0).clamp(-1, 1)
