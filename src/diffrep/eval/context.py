"""What every metric family sees: `EvalContext`, and the registry of families `EVALS`.

A metric family is a function `family(ctx: EvalContext) -> dict` registered in `EVALS`; its dict
is deep-merged into eval.json and it may save pictures with `ctx.figure(...)`. Families share
expensive intermediate results through the context's caches, which are public attributes (a
family of a new method may read them and fill its own):

    feature_cache   {(split, t): encode features [N, Z] float64}: `ctx.features(split, t)`;
                    split "train" | "test", t None for `encode(x0)`, else `encode(x0, t=t)`
    sample_cache    the shared samples uint8 [cfg.n_samples, C, H, W] or None: `ctx.samples()`
                    (FID, KID and memorisation all score the same draw)
    fidnet_cache    (feature network, its sha256) or None: `ctx.fidnet()`
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from diffrep.eval import EvalConfig
from diffrep.eval import plots as P
from diffrep.eval.batching import batches, encode_features, to_uint8_np
from diffrep.registry import Registry

EVALS: Registry[Callable[..., dict]] = Registry("evaluation")


def encode_takes_t(method) -> bool:
    """True when the method's representation depends on a noise level: `encode(x0, t=...)`.

    Declared by the class attribute `encode_takes_t = True` (see `diffrep.methods.base.Method`).
    """
    return bool(getattr(method, "encode_takes_t", False)) and method.can("encode")


@torch.no_grad()
def draw_samples(method, n: int, batch_size: int, generator, **kw) -> np.ndarray:
    """n samples from the method as uint8 [n, C, H, W], drawn in batches."""
    out = []
    for sl in batches(n, batch_size, "sample"):
        out.append(to_uint8_np(method.sample(sl.stop - sl.start, generator=generator, **kw)))
    return np.concatenate(out)


@dataclass
class EvalContext:
    """The method, the (subsetted) data, the options, the run dir, and the shared caches."""

    method: object
    train: object  # ImageData, at most cfg.max_train examples
    test: object  # ImageData, at most cfg.max_eval examples
    cfg: EvalConfig
    run_dir: Path | None = None
    full_train: object = None  # the whole train split (the FID network trains on it)
    figures: list[str] = field(default_factory=list)
    feature_cache: dict = field(default_factory=dict)  # {(split, t): [N, Z]}
    sample_cache: np.ndarray | None = None  # uint8 [n_samples, C, H, W]
    fidnet_cache: tuple | None = None  # (network, sha256)

    def features(self, which: str, t: float | None = None) -> np.ndarray:
        """encode features [N, Z] of "train" or "test" (at noise level t), computed once."""
        if which not in ("train", "test"):
            raise ValueError(f"features: which must be 'train' or 'test', got {which!r}")
        key = (which, None if t is None else float(t))
        if key not in self.feature_cache:
            data = self.train if which == "train" else self.test
            self.feature_cache[key] = encode_features(
                self.method, data.images, self.cfg.batch_size, t
            )
        return self.feature_cache[key]

    def samples(self) -> np.ndarray:
        """cfg.n_samples samples (cfg.sample_kwargs), drawn once; their grid is the "samples"
        figure."""
        if self.sample_cache is None:
            cfg = self.cfg
            s = draw_samples(
                self.method, cfg.n_samples, cfg.batch_size, self.generator(3), **cfg.sample_kwargs
            )
            self.sample_cache = s
            self.figure("samples", P.image_grid(s[: cfg.grid_images], nrow=8), "Samples",
                        "Samples", order=10)  # fmt: skip
        return self.sample_cache

    def fidnet(self):
        """(feature network, its sha256) of domain FID: cfg.fidnet_path, else the cached one
        trained on the full train split; loaded once per evaluation."""
        from diffrep.eval.fidnet import ensure_fidnet, load_fidnet

        if self.fidnet_cache is None:
            cfg = self.cfg
            path = cfg.fidnet_path or ensure_fidnet(
                self.full_train, cache_dir=cfg.fidnet_cache, epochs=cfg.fidnet_epochs, seed=cfg.seed
            )
            self.fidnet_cache = load_fidnet(path)
        return self.fidnet_cache

    def generator(self, offset: int) -> torch.Generator:
        """A CPU generator seeded from cfg.seed, distinct per family (reproducible, independent)."""
        return torch.Generator().manual_seed(self.cfg.seed * 1000 + offset)

    def figure(self, name: str, png: bytes, title: str, section: str, caption: str = "", order=100):
        if self.run_dir is not None:
            P.save_figure(self.run_dir, name, png, title, section, caption, order)
        self.figures.append(name)
