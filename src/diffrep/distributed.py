"""Multi-process training under torchrun: detection, process group, gradient-sync wrapper.

torchrun sets WORLD_SIZE / RANK / LOCAL_RANK; one process per device. The trainer

- initialises the process group (nccl on GPU, gloo on CPU) unless the caller already did,
- wraps the method in `LossModule` + DDP: DDP's gradient all-reduce hooks fire on `forward`,
  and a method's objective is `loss(batch)`, not `forward`, so the wrapper's forward calls it,
- gives each rank its slice of the global batch; only rank 0 writes files and logs.

    torchrun --standalone --nproc_per_node=2 -m diffrep.cli train ...
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from diffrep.errors import UserError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    owns_group: bool = False  # True if we initialised the process group (and must destroy it)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise UserError(
            f"environment variable {name}={value!r} is not an integer; fix: "
            "launch with torchrun, which sets it"
        ) from None


def detect() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from the torchrun environment; (0, 0, 1) without it."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), _env_int("LOCAL_RANK", 0), dist.get_world_size()
    world = _env_int("WORLD_SIZE", 1)
    return _env_int("RANK", 0), _env_int("LOCAL_RANK", 0), world


def setup(device: torch.device) -> DistInfo:
    """Initialise the process group if torchrun launched several processes."""
    rank, local_rank, world = detect()
    if world <= 1:
        return DistInfo()
    if not dist.is_available():
        raise UserError(
            "WORLD_SIZE > 1 but this torch build has no torch.distributed; "
            "fix: run a single process or install a torch with distributed support"
        )
    if dist.is_initialized():
        return DistInfo(rank, local_rank, world, owns_group=False)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    return DistInfo(dist.get_rank(), local_rank, dist.get_world_size(), owns_group=True)


def teardown(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


class LossModule(nn.Module):
    """`forward(batch) = method.loss(batch)`, so DDP's gradient hooks see the objective."""

    def __init__(self, method: nn.Module):
        super().__init__()
        self.method = method

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.method.loss(batch)


def wrap(method: nn.Module, info: DistInfo, device: torch.device, find_unused: bool) -> nn.Module:
    """The module whose forward is the loss: DDP-wrapped when distributed."""
    module = LossModule(method)
    if not info.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    # DDP broadcasts rank 0's parameters and buffers here, so all ranks start identical.
    return DDP(module, device_ids=ids, find_unused_parameters=find_unused)


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """[obj from rank 0, obj from rank 1, ...] on every rank (a single-item list alone)."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
