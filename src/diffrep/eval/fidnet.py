"""The domain feature network for FID / KID: a small CNN classifier trained on the dataset.

Inception features (ImageNet photos at 299x299) say little about 28x28 digits, and need a
weights download. diffrep instead trains a small classifier on the dataset's labelled train split
(a minute on a CPU at MNIST size) and uses its penultimate layer (`feature_dim`, pre-activation,
so the features are dense and the covariance full rank) as the FID feature space, as e.g. the
VAE-VDM poster does for its "domain FID".

The trained weights are cached under `<cache>/fidnet/<dataset>-<hash>.safetensors`, where the hash
covers the training images, labels and every training setting: the same data and settings give
the same file, and `diffrep eval` reuses what `diffrep fidnet train` made. Domain FIDs are only
comparable under the same network, so every score carries the sha256 of the weights file.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from diffrep import atomic
from diffrep.errors import UserError

ARCH_VERSION = 1  # bump when FidNet changes: changes every cache key


class FidNet(nn.Module):
    """Conv classifier: x [B, C, H, W] (model space) -> features [B, feature_dim] -> logits.

    Cheap on purpose (about 1 M multiply-adds per 28x28 image): two stride-2 convolutions, one
    more at the reduced size, then a 4x4 adaptive pool so the head keeps coarse position
    (faster to learn than a global pool) and any image size from 8x8 up works.
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 16, feature_dim: int = 128):
        super().__init__()
        w = width
        self.convs = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1),
            nn.SiLU(),
            nn.AdaptiveAvgPool2d(4),
        )
        self.feature = nn.Linear(4 * w * 16, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature(self.convs(x).flatten(1))  # pre-activation: dense features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.silu(self.features(x)))


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """`cache_dir`, else $DIFFREP_CACHE/fidnet, else ~/.cache/diffrep/fidnet."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("DIFFREP_CACHE")
    return (Path(env) if env else Path.home() / ".cache" / "diffrep") / "fidnet"


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _settings_key(data, settings: dict) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(data.images).tobytes())
    h.update(np.ascontiguousarray(data.labels, dtype=np.int64).tobytes())
    h.update(json.dumps({"arch": ARCH_VERSION, **settings}, sort_keys=True).encode())
    return h.hexdigest()[:16]


def fit_fidnet(
    data,
    *,
    epochs: int = 3,
    batch_size: int = 64,
    lr: float = 3e-3,
    width: int = 16,
    feature_dim: int = 128,
    seed: int = 0,
) -> FidNet:
    """Train a FidNet on `data` (an ImageData with labels) with Adam and cross-entropy."""
    from diffrep.eval.batching import model_input, progress

    if data.labels is None:
        raise UserError(
            f"dataset {data.name!r} has no labels, which the domain FID network is trained on; "
            "pass a trained network with --set eval.fidnet_path=FILE "
            "or drop 'fid' from eval.metrics"
        )
    labels = np.asarray(data.labels, dtype=np.int64)
    num_classes = int(data.num_classes or labels.max() + 1)
    torch.manual_seed(seed)
    net = FidNet(data.images.shape[1], num_classes, width=width, feature_dim=feature_dim)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    n = len(labels)
    steps_per_epoch = (n + batch_size - 1) // batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * steps_per_epoch)
    net.train()
    for _ in progress(range(epochs), "fidnet epochs"):
        perm = rng.permutation(n)
        for s in range(0, n, batch_size):
            idx = np.sort(perm[s : s + batch_size])
            x = model_input(data.images[idx], torch.device("cpu"))
            loss = F.cross_entropy(net(x), torch.from_numpy(labels[idx]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return net.eval()


def ensure_fidnet(
    data,
    cache_dir: str | Path | None = None,
    out: str | Path | None = None,
    **settings,
) -> Path:
    """The cached FidNet weights file for `data` and `settings`, trained if absent."""
    from safetensors.torch import save

    key = _settings_key(data, settings)
    path = (
        Path(out) if out is not None else cache_root(cache_dir) / f"{data.name}-{key}.safetensors"
    )
    if path.is_file():
        return path
    net = fit_fidnet(data, **settings)
    meta = {
        "in_channels": net.convs[0].in_channels,
        "num_classes": net.head.out_features,
        "width": net.convs[0].out_channels,
        "feature_dim": net.feature.out_features,
        "dataset": data.name,
        "key": key,
    }
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    # atomically: concurrent evaluations never read half a file
    atomic.write_bytes(path, save(state, metadata={"diffrep_fidnet": json.dumps(meta)}))
    return path


def train_fidnet(
    dataset: str,
    split: str = "train",
    root: str | None = None,
    out: str | Path | None = None,
    *,
    cache_dir: str | Path | None = None,
    epochs: int = 3,
    seed: int = 0,
    **data_options,
) -> Path:
    """`diffrep fidnet train DATASET`: train (or reuse the cached) domain network; its path."""
    from diffrep.data import load_dataset

    data = load_dataset(dataset, split, root=root, **data_options)
    return ensure_fidnet(data, cache_dir=cache_dir, out=out, epochs=epochs, seed=seed)


def load_fidnet(path: str | Path) -> tuple[FidNet, str]:
    """(network in eval mode, sha256 of the weights file)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"FID feature network {str(path)!r} not found; train one with "
            "`diffrep fidnet train DATASET` or leave eval.fidnet_path unset"
        )
    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {})["diffrep_fidnet"])
        state = load_file(str(path))
    except Exception as e:  # corrupt or foreign file
        raise UserError(
            f"{str(path)!r} is not a diffrep FID network ({e}); retrain it with "
            "`diffrep fidnet train DATASET`"
        ) from None
    net = FidNet(meta["in_channels"], meta["num_classes"], meta["width"], meta["feature_dim"])
    net.load_state_dict(state)
    return net.eval(), sha256_file(path)


@torch.no_grad()
def fidnet_features(net: FidNet, images_uint8: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Penultimate features [N, feature_dim] float64 of uint8 images [N, C, H, W]."""
    from diffrep.eval.batching import map_batches

    dev = next(net.parameters()).device
    c = net.convs[0].in_channels
    if images_uint8.shape[1] != c:
        raise UserError(
            f"the FID network expects {c}-channel images, got {images_uint8.shape[1]}; "
            "use a network trained on this dataset (`diffrep fidnet train DATASET`)"
        )
    return map_batches(net.features, images_uint8, batch_size, dev, "fid features")
