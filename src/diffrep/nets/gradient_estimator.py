"""PDAE's gradient estimator G_psi(x_t, z, t) (seed 002, "Network architecture").

G_psi estimates grad_{x_t} log p(z | x_t) for the mean shift of a frozen DPM. As in the slides,
it reuses the pre-trained U-Net's time embedding and encoder half (`UNet.down_path`: input blocks
and middle block, frozen) and adds a trainable decoder half conditioned on z:

    (h, skips, emb_t) = frozen_unet.down_path(x_t, t)                # no trainable parameters
    e = [emb_t, MLP(z)]                                           # [B, 2 E]
    G = conv_out(up path of ResBlocks(h, skips; FiLM from e))    # [B, C, H, W]

With `image_shape` given (`z_map`), z also enters as a spatial map: a linear map of z to the
bottleneck features [C, h, w], added to h before the up path (the U-Net's `cond_map`). FiLM is
the same at every pixel, so through FiLM alone z cannot say *where* strokes go, and where x_t is
mostly noise (high t) nothing else can: there G needs the map to shift the mean towards x0.

The up path is the frozen U-Net's layout (`unet.UpPath`: same channels, skips and resampling;
no attention); only
its output conv is zero-initialised, so training starts from G = 0 (the frozen DPM itself) with z
already shaping the features that the output layer learns from.

The backbone U-Net is *passed in* at call time instead of being stored as a submodule, so its
(frozen) weights are not parameters, EMA entries or checkpoint tensors of the estimator.
Networks know no schedule: t is the float the backbone was trained with.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from diffrep.nets.layers import CodeMap, CondEmbedding, group_norm
from diffrep.nets.unet import UNet, UpPath


class GradientEstimator(nn.Module):
    """G_psi(x_t, z, t) on top of `backbone.down_path`; `forward(x_t, t, z, backbone)`."""

    def __init__(
        self,
        backbone: UNet,
        z_dim: int,
        *,
        image_shape: tuple[int, int, int] | None = None,
        dropout: float = 0.0,
    ):
        """
        Args:
            backbone: the U-Net whose down path G reuses; only its layout is read here.
            z_dim: size of the code z.
            image_shape: (C, H, W) of x_t: adds the z map at the bottleneck (module doc);
                None: z enters by FiLM only.
            dropout: in the up path's ResBlocks.
        """
        super().__init__()
        # The backbone's layout: channels of each down ResBlock (the skips) and of each level.
        skip_chans = [blk.conv1.out_channels for blocks in backbone.down for blk in blocks]
        chans = [blocks[0].conv1.out_channels for blocks in backbone.down]
        temb = backbone.time_embed.mlp[-2].out_features
        self.z_dim = z_dim
        self.z_embed = CondEmbedding(z_dim, temb)
        emb_dim = 2 * temb  # [time, z]: every block's FiLM gets its own scale/shift from z
        self.up_path = UpPath(
            chans, skip_chans, emb_dim, backbone.resize, upsample=backbone.up_path.mode,
            dropout=dropout,
        )  # fmt: skip
        # Only the output starts at zero. The ResBlocks' zero-initialised FiLM projections and
        # second convs (the identity start of a denoiser) would gate z behind three zero factors:
        # z's only way to G, and so the encoder's gradient, would be third order at the start.
        for blocks in self.up_path.blocks:
            for block in blocks:
                block.film.proj.reset_parameters()
                block.conv2.reset_parameters()
        self.z_map = None
        if image_shape is not None:
            dev = next(backbone.parameters()).device
            with torch.no_grad():  # the bottleneck's shape, from the backbone itself
                x = torch.zeros(1, *image_shape, device=dev)
                h = backbone.down_path(x, torch.zeros(1, device=dev))[0]
            # zero-initialised: the frozen features h reach the up path unperturbed at the start
            # (a random map adds noise to them; on MNIST it then did worse than FiLM alone)
            self.z_map = CodeMap(z_dim, tuple(h.shape[1:]))  # (C, h, w)
        self.norm_out = group_norm(chans[0])
        self.conv_out = nn.Conv2d(chans[0], backbone.in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor, z: torch.Tensor, backbone: UNet, down=None
    ) -> torch.Tensor:
        # x_t [B, C, H, W], t [B], z [B, z_dim] -> G [B, C, H, W]
        # down: backbone.down_path(x_t, t) when the caller has it already (the frozen DPM's own
        # eps_theta runs the same down path: computing it once saves a third of a step)
        h, skips, shapes, emb = backbone.down_path(x_t, t) if down is None else down
        skips = list(skips)  # the up path pops them
        if self.z_map is not None:  # z as a coarse spatial map [B, C, h, w]
            h = h + self.z_map(z.to(h.dtype))
        emb = torch.cat([emb.expand(x_t.shape[0], -1), self.z_embed(z.to(x_t.dtype))], dim=1)
        h = self.up_path(h, skips, shapes, emb)
        return self.conv_out(F.silu(self.norm_out(h)))
