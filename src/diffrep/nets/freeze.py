"""Frozen submodules: the convention the trainer and the checkpoint follow (issue 10 item 5).

A module is *frozen* when its class has the attribute `frozen = True` (e.g. a pre-trained DPM
that a method composes, `diffrep.frozen.FrozenDPM`). Frozen means:

- its parameters have `requires_grad=False` (`freeze` sets it; the trainer enforces it);
- it stays in eval mode, also after `.train()` on its parent (`Method.train` restores it);
- the trainer leaves it out of the optimizer, the EMA and gradient clipping;
- checkpoints do not store its state (it is rebuilt from its own source when the method is
  built), and loading a checkpoint tolerates its absence.

    class Teacher(nn.Module):
        frozen = True                  # the whole convention
    method.teacher = freeze(Teacher()) # requires_grad off, eval mode
    trainable_state_dict(method)       # method.state_dict() without teacher.*
"""

from __future__ import annotations

import torch
from torch import nn


def is_frozen(module: nn.Module) -> bool:
    """True when `module`'s class declares `frozen = True`."""
    return getattr(type(module), "frozen", False) is True


def freeze(module: nn.Module) -> nn.Module:
    """Turn `requires_grad` off for every parameter and switch to eval mode; returns `module`."""
    module.requires_grad_(False)
    return module.eval()


def frozen_modules(root: nn.Module) -> dict[str, nn.Module]:
    """{name: module} of the outermost frozen submodules of `root` (every name of a shared one)."""
    out: dict[str, nn.Module] = {}
    for name, m in root.named_modules(remove_duplicate=False):
        if is_frozen(m) and not any(p == "" or name.startswith(p + ".") for p in out):
            out[name] = m
    return out


def apply_frozen(root: nn.Module) -> None:
    """Enforce the convention on every frozen submodule: `requires_grad` off, eval mode."""
    for m in frozen_modules(root).values():
        freeze(m)


def is_frozen_key(key: str, prefixes: list[str] | dict[str, nn.Module]) -> bool:
    """True when a state-dict key belongs to one of the frozen submodules named in `prefixes`."""
    return any(p == "" or key.startswith(p + ".") for p in prefixes)


def trainable_state_dict(root: nn.Module) -> dict[str, torch.Tensor]:
    """`root.state_dict()` without the keys of frozen submodules (what checkpoints store)."""
    prefixes = list(frozen_modules(root))
    return {k: v for k, v in root.state_dict().items() if not is_frozen_key(k, prefixes)}
