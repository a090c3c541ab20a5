"""`train.compile`: networks and training losses trace as one torch.compile graph (dynamo only,
no code generation: seconds on a CPU). A graph break is a host sync or a Python-level check on
the per-step path; each one splits the compiled step and costs time every step."""

from __future__ import annotations

import pytest
import torch

from diffrep.distributed import LossModule
from diffrep.methods import build_method
from diffrep.nets.mlp import ResMLP
from diffrep.nets.unet import UNet

TINY_UNET = {"base_channels": 8, "channel_mults": (1, 2)}


def _explain(module, *args):
    import torch._dynamo

    torch._dynamo.reset()
    return torch._dynamo.explain(module)(*args)


@pytest.mark.parametrize("kind", ["resmlp", "unet"])
def test_denoisers_trace_as_one_graph(kind):
    """Checking whether a batch shares one t reads values (a host sync); under torch.compile it
    is skipped, or the graph splits there."""
    if kind == "resmlp":
        net, x = ResMLP(4, hidden=16, depth=1, emb_dim=16), torch.randn(8, 4)
    else:
        net, x = UNet(1, num_res_blocks=1, **TINY_UNET), torch.randn(8, 1, 8, 8)
    explained = _explain(net, x, torch.rand(8))
    assert explained.graph_break_count == 0, [r.reason[:200] for r in explained.break_reasons]
    assert explained.graph_count == 1


@pytest.mark.parametrize(
    "name, kw",
    [
        ("ddpm", {"T": 100, "unet": TINY_UNET}),
        ("drl", {"code_dim": 4, "unet": TINY_UNET}),
        ("vae", {"latent_dim": 4, "width": 8}),
        ("dae", {}),
    ],
)
def test_training_losses_trace_as_one_graph(name, kw):
    """The loss the trainer compiles. (vdm's is not one graph, by design: its finite-endpoint
    check and its decoder's bin window, sized from gamma_0, read values.)"""
    torch.manual_seed(0)
    method = build_method(name, (1, 8, 8), **kw).train()
    explained = _explain(LossModule(method), {"x0": torch.rand(4, 1, 8, 8) * 2 - 1})
    assert explained.graph_break_count == 0, [r.reason[:200] for r in explained.break_reasons]
