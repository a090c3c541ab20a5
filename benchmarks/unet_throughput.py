"""CPU training throughput of candidate UNet configurations on 28x28 (MNIST-sized) batches.

Measures forward + backward + AdamW step images/s for each configuration, side by side with
the parameter count, to pick a fast default for the VDM-on-MNIST budget (20 minutes, 2 cores).

    python benchmarks/unet_throughput.py --threads 2 --batch 64 --seconds 8
"""

from __future__ import annotations

import argparse
import time

import torch

from diffrep.nets.unet import UNet

# name -> UNet keyword arguments (in_channels=1 and image_size=28 are added)
CANDIDATES: dict[str, dict] = {
    "c32 m(1,2,2) r1 attn7": dict(base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=1),
    "c32 m(1,2,2) r1 noattn": dict(
        base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=1, attn_resolutions=()
    ),
    "c32 m(1,2,2) r1 attn7 ff": dict(
        base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=1, fourier_exponents=(6, 7)
    ),
    "c32 m(1,2,2) r1 chlast": dict(
        base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=1, channels_last=True
    ),
    "c32 m(1,2,2) r2 attn7": dict(base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=2),
    "c48 m(1,2,2) r1 attn7": dict(base_channels=48, channel_mults=(1, 2, 2), num_res_blocks=1),
    "c64 m(1,2,2) r1 attn7": dict(base_channels=64, channel_mults=(1, 2, 2), num_res_blocks=1),
    "c32 m(1,2,4) r1 attn7": dict(base_channels=32, channel_mults=(1, 2, 4), num_res_blocks=1),
    "c64 m(1,1,2) r1 attn7": dict(base_channels=64, channel_mults=(1, 1, 2), num_res_blocks=1),
    "c16 m(1,2,4) r1 attn7": dict(base_channels=16, channel_mults=(1, 2, 4), num_res_blocks=1),
    "c32 m(1,2,2) r1 chlast ff": dict(
        base_channels=32,
        channel_mults=(1, 2, 2),
        num_res_blocks=1,
        channels_last=True,
        fourier_exponents=(6, 7),
    ),
    "c24 m(1,2,2) r1 attn7": dict(base_channels=24, channel_mults=(1, 2, 2), num_res_blocks=1),
    "c32 m(1,2) r1 noattn": dict(
        base_channels=32, channel_mults=(1, 2), num_res_blocks=1, attn_resolutions=()
    ),
    "c64 m(1,) r2 noattn (VDM-like)": dict(
        base_channels=64, channel_mults=(1,), num_res_blocks=2, attn_resolutions=()
    ),
}


def measure(kwargs: dict, batch: int, seconds: float, size: int = 28) -> tuple[float, int]:
    torch.manual_seed(0)
    net = UNet(1, image_size=size, **kwargs)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x = torch.randn(batch, 1, size, size)
    t = torch.rand(batch)

    def step():
        loss = (net(x, t) - x).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):  # warm-up (allocator, oneDNN primitive cache)
        step()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        n += 1
    rate = n * batch / (time.perf_counter() - start)
    return rate, sum(p.numel() for p in net.parameters())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=8.0, help="timed seconds per candidate")
    ap.add_argument("--only", default="", help="substring filter on candidate names")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, 1x28x28")
    print(f"{'config':34s} {'params':>10s} {'img/s':>8s} {'steps/min':>10s}")
    for name, kw in CANDIDATES.items():
        if args.only and args.only not in name:
            continue
        rate, params = measure(kw, args.batch, args.seconds)
        print(f"{name:34s} {params:10,d} {rate:8.1f} {60 * rate / args.batch:10.1f}", flush=True)


if __name__ == "__main__":
    main()
