"""The method contract and the method registry.

A method is an `nn.Module` that owns its parts (encoder, networks, schedule, prior) and exposes:

- `loss(batch) -> dict[str, Tensor[B]]`: per-example terms in nats; the training objective is
  under "loss". The trainer knows nothing else about a method.
- `encode(x0) -> Tensor[B, Z]`: the representation (the posterior mean for variational methods).
- trainer hooks, both optional: `param_groups()` (parameter groups with learning-rate scales)
  and `on_step(step, total_steps)` (annealing, called before each step's loss).
- where they apply: `reconstruct(x0)`, `sample(n, generator=None)`, `elbo(x0)`,
  `posterior(x0) -> (mean, logvar)` for methods with a Gaussian encoder.

`elbo(x0)` returns named per-example terms in nats whose "total" is the negative ELBO of the
*discrete* 8-bit data (an upper bound on -log P(x) in nats) when `bound_is_valid` is True;
evaluation divides it by D ln 2 to get bits per dim (see `diffrep.data.bits_per_dim`).

Submodules whose class has `frozen = True` (a pre-trained model the method composes) stay in
eval mode and are neither trained nor checkpointed (`diffrep.nets.freeze`).

Images inside methods are in model space: float32 in (-1, 1) with centred 8-bit bins,
x0 = (2 k + 1) / 256 - 1 for k in {0..255} (`diffrep.data.to_model_input`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from diffrep.nets.freeze import frozen_modules
from diffrep.registry import Registry

Batch = dict[str, torch.Tensor]  # {"x0": [B, C, H, W] model space, "y": [B] int64 (-1: no label)}

METHODS: Registry[Method] = Registry("method")

_OPTIONAL = ("encode", "reconstruct", "sample", "elbo", "posterior")


class Method(nn.Module):
    """Base class: subclasses implement `loss` and whichever optional capabilities apply."""

    #: False for objectives that are not a bound (e.g. a "simple" unweighted diffusion loss):
    #: evaluation and reports then label the number as "not a bound".
    bound_is_valid: bool = True

    #: True when `log_joint(x0, z)` = log p(x | z) + log p(z) is exact (a VAE with a Gaussian or
    #: flow prior); False when it is the log of an unbiased estimate of p(x, z) (a diffusion
    #: prior: one weighted path of its chain) or absent. The importance-weighted NLL is an upper
    #: bound either way; eval.json says "nll_iw_latent_chain" when False (looser at the same k).
    log_joint_exact: bool = False

    #: True when the representation depends on a noise level: `encode(x0, t=None)` with t in
    #: [0, 1] (None: the method's default). Evaluation then probes it at each `eval.probe_t`.
    encode_takes_t: bool = False

    def __init__(self, data_shape: tuple[int, int, int]):
        super().__init__()
        self.data_shape = tuple(int(s) for s in data_shape)  # (C, H, W)

    @property
    def dim(self) -> int:
        """D, the number of pixel values per image (for bits per dim)."""
        c, h, w = self.data_shape
        return c * h * w

    @property
    def device(self) -> torch.device:
        p = next(self.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    # -------------------------------------------------------------- trainer hooks

    def param_groups(self) -> list[dict[str, Any]]:
        """Optimizer parameter groups: [{"name": str, "params": [...], "lr_scale": float}].

        Each group's learning rate is the scheduled lr times its `lr_scale`. Every trainable
        parameter must be in exactly one group (parameters with requires_grad False, e.g. of
        frozen submodules, are left out by the trainer). Default: one group "all".
        """
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"name": "all", "params": params, "lr_scale": 1.0}]

    def on_step(self, step: int, total_steps: int) -> None:
        """Called by the trainer before the loss of optimizer step `step` (0-based) of
        `total_steps` (train.steps), e.g. for annealing. Must be a pure function of `step`
        (no state carried across calls, no RNG use) so a resumed run stays bit-exact."""

    def train(self, mode: bool = True) -> Method:
        # Frozen submodules stay in eval mode (dropout off, statistics fixed) while training.
        super().train(mode)
        for m in frozen_modules(self).values():
            m.eval()
        return self

    def encode(self, x0: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def reconstruct(self, x0: torch.Tensor, generator: torch.Generator | None = None):
        raise NotImplementedError

    def sample(self, n: int, generator: torch.Generator | None = None, **kw: Any):
        raise NotImplementedError

    def elbo(self, x0: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def posterior(self, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def can(self, capability: str) -> bool:
        """True if this method implements the optional `capability` (e.g. "sample")."""
        if capability not in _OPTIONAL:
            raise ValueError(f"unknown capability {capability!r}; one of {_OPTIONAL}")
        return getattr(type(self), capability) is not getattr(Method, capability)

    def capabilities(self) -> list[str]:
        return [c for c in _OPTIONAL if self.can(c)]

    def sample_options(self) -> set[str]:
        """Keyword options `sample()` uses (e.g. {"sampler", "steps"}); the CLI refuses the
        others rather than let `**kw` swallow them silently."""
        return named_options(self.sample)


def named_options(fn: Any) -> set[str]:
    """Named keyword parameters of `fn` beyond (n, generator, progress)."""
    import inspect

    return {
        p.name
        for p in inspect.signature(fn).parameters.values()
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
        and p.name not in ("n", "generator", "progress")
    }


def build_method(name: str, data_shape: tuple[int, int, int], **kwargs: Any) -> Method:
    """Build a registered method from its name, the data shape and its constructor arguments."""
    import diffrep.methods  # noqa: F401  (populates the registry)

    return METHODS.build(name, data_shape, **kwargs)
