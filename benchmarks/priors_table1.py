"""Seed 004 Table 1 at CPU size: VAE priors x latent sizes on MNIST (configs/priors-mnist.yaml).

For each prior (gaussian, flow, diffusion) and latent size (8, 16, 32): train the same VAE with
Adam at lr 5e-4 for a fixed number of steps on MNIST test[:8000], keep the weights with the best
validation -ELBO (test[8000:9000], checked every --eval-every steps), then report the domain FID
(the evaluation suite's MNIST feature network, 2000 samples vs held-out images) and the
importance-weighted NLL in nats. Prints the table, writes RUN/priors_table1.json and a sample
grid RUN/samples.png, and times sampling 1000 images from the diffusion-prior VAE against the
pixel-space `vdm` method at the same number of steps (when `vdm` is registered).

    python benchmarks/priors_table1.py --steps 3000 --out runs/priors-table1
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch

from diffrep.data import load_dataset, to_model_input
from diffrep.methods import METHODS, build_method

PRIORS = ("gaussian", "flow", "diffusion")
PRIOR_ARGS = {"gaussian": {}, "flow": {}, "diffusion": {"T": 1000, "hidden": 128, "depth": 2}}


def train_one(prior, latent, x_train, x_val, args):
    torch.manual_seed(0)
    vae = build_method(
        "vae", (1, 28, 28), latent_dim=latent, prior=prior, prior_args=PRIOR_ARGS[prior]
    )
    opt = torch.optim.Adam(vae.parameters(), lr=5e-4)
    g = torch.Generator().manual_seed(0)
    best, best_state = float("inf"), None
    for step in range(1, args.steps + 1):
        vae.train()
        idx = torch.randint(len(x_train), (64,), generator=g)
        loss = vae.loss({"x0": x_train[idx]})["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % args.eval_every == 0 or step == args.steps:
            vae.eval()
            with torch.no_grad():
                val = torch.cat([vae.elbo(xb)["total"] for xb in x_val.split(250)]).mean().item()
            if val < best:  # checkpoint selection on the validation split (seed 004 sec. 5)
                best, best_state = val, copy.deepcopy(vae.state_dict())
    vae.load_state_dict(best_state)
    return vae.eval(), best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--latents", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--n-samples", type=int, default=2000)
    # IW-NLL (k=16) examples: the diffusion prior sums all T steps per latent sample
    ap.add_argument("--nll-examples", type=int, default=200)
    ap.add_argument("--out", default="runs/priors-table1")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    from diffrep.eval.fid import fid_from_features
    from diffrep.eval.fidnet import ensure_fidnet, load_fidnet

    train = load_dataset("mnist", "test[:8000]")
    held = load_dataset("mnist", "test[8000:]")
    x_train = to_model_input(torch.from_numpy(train.images))
    x_held = to_model_input(torch.from_numpy(held.images))
    x_val, x_test = x_held[:1000], x_held[1000:]
    fidnet, sha = load_fidnet(ensure_fidnet(train))

    def feats(x):
        with torch.no_grad():
            return torch.cat([fidnet.features(b) for b in x.split(500)]).numpy()

    real = feats(x_held)
    table, grids = {}, {}
    for prior in PRIORS:
        for latent in args.latents:
            t0 = time.time()
            vae, val = train_one(prior, latent, x_train, x_val, args)
            g = torch.Generator().manual_seed(1)
            samples = torch.cat(
                [vae.sample(500, generator=g) for _ in range(args.n_samples // 500)]
            )
            fid = fid_from_features(real, feats(samples))
            nll = vae.nll_iw(x_test[: args.nll_examples], k=16).mean().item()
            table[(prior, latent)] = {"fid": fid, "nll_iw_nats": nll, "val_neg_elbo": val}
            grids[(prior, latent)] = samples[:16]
            print(
                f"{prior:9s} Z={latent:3d} FID {fid:7.2f} NLL {nll:8.2f} ({time.time() - t0:.0f}s)"
            )

    print("\nFID (domain net) / IW-NLL nats; rows priors, columns latent sizes")
    print("prior      " + "".join(f"{f'Z={z}':>20s}" for z in args.latents))
    for prior in PRIORS:
        cells = [table[(prior, z)] for z in args.latents]
        print(
            f"{prior:10s} " + "".join(f"{c['fid']:9.2f} / {c['nll_iw_nats']:8.1f}" for c in cells)
        )

    ratio = sampling_ratio(vae if prior == "diffusion" else None, args)
    report = {
        "fid_feature_net_sha256": sha,
        "steps_per_run": args.steps,
        "table": {f"{p}/{z}": v for (p, z), v in table.items()},
        "sampling_speedup_vs_vdm": ratio,
    }
    (out / "priors_table1.json").write_text(json.dumps(report, indent=2))
    save_grid(grids, args.latents, out / "samples.png")
    print(f"wrote {out / 'priors_table1.json'} and {out / 'samples.png'}")


def sampling_ratio(diffusion_vae, args, n: int = 1000, steps: int = 1000):
    """Wall time of n images from the pixel-space vdm / from the diffusion-prior VAE."""
    if diffusion_vae is None or "vdm" not in METHODS:
        print("sampling ratio: skipped (no diffusion-prior VAE or no `vdm` method registered)")
        return None
    t0 = time.time()
    diffusion_vae.sample(n, generator=torch.Generator().manual_seed(0))
    t_latent = time.time() - t0
    vdm = build_method("vdm", (1, 28, 28)).eval()
    t0 = time.time()
    with torch.no_grad():  # time 10 images at `steps` steps and scale: the UNet is the cost
        vdm.sample(10, generator=torch.Generator().manual_seed(0), steps=steps)
    t_pixel = (time.time() - t0) * n / 10
    ratio = t_pixel / t_latent
    print(
        f"sampling {n} images at {steps} steps: latent {t_latent:.2f}s, pixel vdm "
        f"{t_pixel:.1f}s (extrapolated from 10) -> {ratio:.0f}x faster (target >= 100x)"
    )
    return {"latent_s": t_latent, "pixel_s": t_pixel, "ratio": ratio}


def save_grid(grids, latents, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(PRIORS), len(latents), figsize=(3 * len(latents), 9))
    axes = np.atleast_2d(axes)
    for r, prior in enumerate(PRIORS):
        for c, z in enumerate(latents):
            x = ((grids[(prior, z)] + 1) / 2).clamp(0, 1)[:, 0]  # [16, 28, 28]
            tile = x.view(4, 4, 28, 28).permute(0, 2, 1, 3).reshape(112, 112).numpy()
            axes[r, c].imshow(tile, cmap="gray")
            axes[r, c].set_title(f"{prior}, Z={z}")
            axes[r, c].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
