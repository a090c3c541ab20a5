"""Random views of a batch (`data.views`): each example is its own integer shift of x, within the
range, with the border repeated; every shift occurs; affine views rotate; and the methods with a
`view` option encode the view in training and x0 itself in eval."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from diffrep.data.views import RandomView, build_view, random_translate
from diffrep.errors import UserError


def _shifted(x: torch.Tensor, dy: int, dx: int, s: int) -> torch.Tensor:
    """x [C, H, W] moved by (dy, dx), border repeated: the reference, one example at a time."""
    _, h, w = x.shape
    p = F.pad(x[None], (s, s, s, s), mode="replicate")[0]
    return p[:, s - dy : s - dy + h, s - dx : s - dx + w]


def test_each_example_is_one_shift_of_itself_and_all_shifts_occur():
    s, B = 2, 400
    x = torch.rand(B, 2, 7, 9, generator=torch.Generator().manual_seed(0))
    y = random_translate(x, s, torch.Generator().manual_seed(1))
    assert y.shape == x.shape
    seen = set()
    for b in range(B):
        found = [
            (dy, dx)
            for dy in range(-s, s + 1)
            for dx in range(-s, s + 1)
            if torch.equal(y[b], _shifted(x[b], dy, dx, s))
        ]
        assert len(found) == 1, f"example {b}: {found}"
        seen.add(found[0])
    assert len(seen) == (2 * s + 1) ** 2  # 25 shifts, 400 draws: each occurs


def test_no_shift_is_the_identity_and_the_generator_decides():
    x = torch.rand(5, 1, 6, 6)
    assert random_translate(x, 0) is x
    a = random_translate(x, 1, torch.Generator().manual_seed(4))
    b = random_translate(x, 1, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)


def test_encoder_input_is_a_view_in_training_and_x0_itself_in_eval():
    x0 = torch.rand(8, 1, 6, 6, generator=torch.Generator().manual_seed(3))
    v = RandomView(shift=1)
    assert v.encoder_input(x0, training=False, generator=torch.Generator()) is x0
    seen = v.encoder_input(x0, training=True, generator=torch.Generator().manual_seed(5))
    assert torch.equal(seen, random_translate(x0, 1, torch.Generator().manual_seed(5)))
    assert not torch.equal(seen, x0)


def encoder_inputs(method, x0: torch.Tensor, seed: int = 0) -> list[torch.Tensor]:
    """What `method.encoder` saw during method.loss({"x0": x0}) with torch's RNG at `seed`."""
    seen = []
    hook = method.encoder.register_forward_hook(lambda mod, args, out: seen.append(args[0]))
    try:
        torch.manual_seed(seed)
        with torch.no_grad():
            method.loss({"x0": x0})
    finally:
        hook.remove()
    return seen


def check_view_contract(method, x0: torch.Tensor) -> None:
    """A method built with view={"shift": 2}: in training its encoder sees the view drawn first
    from torch's RNG, and the loss's target stays x0; in eval it sees x0 itself."""
    seen = encoder_inputs(method.train(), x0)
    torch.manual_seed(0)
    view = random_translate(x0, 2)
    assert len(seen) == 1 and torch.equal(seen[0], view) and not torch.equal(view, x0)
    seen = encoder_inputs(method.eval(), x0)
    assert len(seen) == 1 and torch.equal(seen[0], x0)


@pytest.mark.parametrize("name", ["drl", "vae_vdm"])
def test_methods_encode_a_view_in_training_and_x0_in_eval(name):
    from diffrep.methods import build_method

    unet = {"base_channels": 8, "channel_mults": (1, 2)}
    width = {"drl": {"width": 8}, "vae_vdm": {"encoder_width": 8}}[name]
    m = build_method(name, (1, 8, 8), unet=unet, view={"shift": 2}, **width)
    x0 = 2 * torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(2)) - 1
    check_view_contract(m, x0)


def test_affine_views_rotate_and_a_bad_view_is_one_clear_error():
    # a horizontal bar turned by up to 90 degrees is no longer the bar, but keeps its mass
    x = torch.full((64, 1, 15, 15), 0.0)
    x[:, 0, 7, 3:12] = 1.0
    y = RandomView(rotate=90)(x, torch.Generator().manual_seed(0))
    turned = (y - x).abs().sum((1, 2, 3)) > 1.0
    assert turned.float().mean() > 0.8
    torch.testing.assert_close(y.sum((1, 2, 3)), x.sum((1, 2, 3)), rtol=0.15, atol=0)
    assert not RandomView() and RandomView(scale=0.1)
    for bad, match in (({"shift": -1}, "shift >= 0"), ({"scale": 1.5}, "scale < 1"),
                       ({"shift": 2.5}, "whole shift"),
                       ({"roate": 5}, "unknown option")):  # fmt: skip
        with pytest.raises(UserError, match=match):
            build_view(bad)
