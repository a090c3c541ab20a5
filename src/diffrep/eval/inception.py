"""Inception-v3 pool features (2048-d) for the classic FID / KID, from a local weights file.

Optional: it needs torch-fidelity (through torchmetrics' `NoTrainInceptionV3`, the TF-ported
network every published FID uses) and the weights file `pt_inception-2015-12-05-6726825d.pth`.
diffrep never downloads at run time, so the user passes the file; without it the "inception"
family fails with a UserError that says how to get it, and the other metrics still run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from diffrep.errors import UserError

WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + WEIGHTS_NAME


def load_inception(weights: str | Path | None):
    """(Inception feature network, sha256 of the weights file)."""
    from diffrep.eval.fidnet import sha256_file

    if weights is None or not Path(weights).is_file():
        what = "no Inception weights file given" if weights is None else f"{weights} not found"
        raise UserError(
            f"Inception FID/KID: {what}; download {WEIGHTS_URL} once, then pass "
            "--set eval.inception_weights=/path/to/"
            + WEIGHTS_NAME
            + " (or drop 'inception' from eval.metrics; the domain FID needs no download)"
        )
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3
    except ImportError:
        NoTrainInceptionV3 = None
    try:
        if NoTrainInceptionV3 is None:
            raise ModuleNotFoundError("torchmetrics")
        net = NoTrainInceptionV3(
            name="inception-v3-compat",
            features_list=["2048"],
            feature_extractor_weights_path=str(weights),
        )
    except ModuleNotFoundError:
        raise UserError(
            "Inception FID/KID needs torchmetrics and torch-fidelity; install them with "
            "`pip install 'diffrep[metrics]' torch-fidelity` "
            "(or drop 'inception' from eval.metrics)"
        ) from None
    return net.eval(), sha256_file(weights)


@torch.no_grad()
def inception_features(net, images_uint8: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """[N, 2048] float64 pool features; grey images are repeated to 3 channels."""
    from diffrep.eval.batching import batches

    out = []
    for sl in batches(len(images_uint8), batch_size, "inception"):
        x = torch.from_numpy(np.ascontiguousarray(images_uint8[sl]))
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1).contiguous()
        out.append(net(x).double().cpu().numpy())
    return np.concatenate(out)
