"""Denoising autoencoder at one noise level (seed 003, "Denoising Autoencoder").

x~ = x0 + sigma eps (eps ~ N(0, I)), code = ConvEncoder(x~), and ConvDecoder(code) predicts
either x0 (the seed's cost sum_i ||x_i - DAE(x~_i)||^2) or the noise eps, which the seed
notes is the same thing: eps ~ x - DAE(x), so x0_hat = x~ - sigma eps_hat. The representation
is the code of the clean image, `encode(x0)`. The loss is a squared error, not a likelihood,
so the method has no ELBO (`bound_is_valid = False`). It samples by the seed's small-step
iteration x' = (1 - eta) x + eta DAE(x) from noise (`diffrep.methods.iteration`).
"""

from __future__ import annotations

from typing import Literal

import torch

from diffrep.errors import UserError
from diffrep.methods.base import METHODS, Batch, Method
from diffrep.methods.iteration import DenoiserIterationSampling
from diffrep.nets.encoders import ConvDecoder, ConvEncoder


@METHODS.register("dae")
class DAE(DenoiserIterationSampling, Method):
    bound_is_valid = False

    def __init__(
        self,
        data_shape: tuple[int, int, int],
        *,
        code_dim: int = 16,
        width: int = 32,
        sigma: float = 0.3,
        predict: Literal["x0", "eps"] = "x0",
    ):
        """
        Args:
            code_dim: size of the code (the representation).
            width: channels of the first conv level of encoder and decoder.
            sigma: noise standard deviation in model space (images span [-1, 1]).
            predict: the decoder's target, the clean image "x0" or the noise "eps".
        """
        super().__init__(data_shape)
        if code_dim < 1 or sigma <= 0:
            raise UserError(
                f"dae: need code_dim >= 1 and sigma > 0, got code_dim={code_dim}, "
                f"sigma={sigma}; fix: e.g. code_dim=16, sigma=0.3"
            )
        self.sigma = sigma
        self.predict = predict
        self.encoder = ConvEncoder(self.data_shape, code_dim, width=width)
        self.decoder = ConvDecoder(code_dim, self.data_shape, self.data_shape[0], width=width)

    def denoise(self, x_noisy: torch.Tensor) -> torch.Tensor:
        """DAE(x~): the estimate of x0 from a noisy image [B, C, H, W]."""
        out = self.decoder(self.encoder(x_noisy))
        return out if self.predict == "x0" else x_noisy - self.sigma * out

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        x0 = batch["x0"]
        eps = torch.randn_like(x0)
        x_noisy = x0 + self.sigma * eps
        out = self.decoder(self.encoder(x_noisy))
        if self.predict == "x0":
            x0_hat, err = out, (out - x0)
        else:
            x0_hat, err = x_noisy - self.sigma * out, (out - eps)
        return {
            "loss": err.flatten(1).pow(2).sum(1),
            "mse_x0": (x0_hat - x0).flatten(1).pow(2).mean(1).detach(),
        }

    @torch.no_grad()
    def encode(self, x0: torch.Tensor) -> torch.Tensor:
        return self.encoder(x0)

    @torch.no_grad()
    def reconstruct(self, x0: torch.Tensor, generator: torch.Generator | None = None):
        """DAE applied to the clean image (deterministic), clamped to model space."""
        return self.denoise(x0).clamp(-1, 1)
