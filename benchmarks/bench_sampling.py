"""sampling: samples/s of pixel-space diffusion against the diffusion-prior VAE (latent space) at
equal steps, and diffrep's DDIM loop against diffusers' DDIMScheduler loop around the same network.

1. Pixel vs latent: a `vdm` with the U-Net of configs/vdm-mnist.yaml (28x28) and a `vae` with a
   `diffusion` prior (T = 200, the README's CPU setting) over a 16-dim z, both untrained (speed
   does not depend on the weights), sampling the same 256 images (the batch in which
   `diffrep eval` draws its FID samples, `EvalConfig.batch_size`) with ancestral steps over the
   prior's whole chain (200) and with DDIM-50, the same step count for both. The VAE's time
   includes decoding z to images: one decoder pass costs 1/2.5 to 1/3 of a U-Net step (its
   upsampling convs run as folded transposed convs, `nets.layers.UpConv`), so the ratio grows
   with the step count towards (U-Net step) / (prior step) and is smallest for few steps.
   The two run in turn inside one pixel sampling call: its per-step progress callback makes a
   latent call every steps / 10 steps and times it apart, and the pixel time is the call's total
   less those. A pixel call lasts 15-70 s, a latent one 0.1-0.5 s: whole calls in turn, the
   earlier design, let a minute of load from a neighbour land on one side only (one pass printed
   144x where its parts predicted 109x).
   The ratio depends on the batch: the prior's steps on a [B, 16] z are a few dozen small ops,
   whose fixed per-op cost dominates at small B, while the conv nets' cost grows with B. So the
   U-Net step, the decoder pass and the prior's 50 DDIM steps are also timed apart, in turns, at
   batches 64 to 512, and the record plots the DDIM-50 ratio these parts predict at each.
2. Sampler overhead: the same U-Net (a `ddpm`'s, T = 1000) sampled with 50 DDIM steps by
   `diffrep.diffusion.samplers.ddim` and by a loop around diffusers' DDIMScheduler.step, in
   lockstep: our sampler's progress callback takes the diffusers loop's next step and times it
   apart. The network calls are identical, so the ratio is the cost of the sampler code itself.

    python benchmarks/bench_sampling.py --quick
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as H  # noqa: E402

VDM_UNET = {"base_channels": 16, "channel_mults": (1, 2, 4), "fourier_exponents": (6, 7, 8)}


def g() -> torch.Generator:
    """The same seed for every sampling call, so both sides draw the same noise each time."""
    return torch.Generator().manual_seed(0)


def run(quick: bool, device: torch.device) -> dict:
    from diffrep.eval import EvalConfig
    from diffrep.methods import build_method

    rec = H.record(
        "sampling",
        "samples/s: pixel-space VDM vs a VAE with a latent diffusion prior at equal steps; "
        "diffrep DDIM vs a diffusers DDIMScheduler loop around the same U-Net",
        device,
    )
    n = EvalConfig.batch_size  # what `diffrep eval` samples at a time (256)
    torch.manual_seed(0)
    vdm = build_method("vdm", (1, 28, 28), unet=VDM_UNET).to(device).eval()
    vae = build_method(
        "vae", (1, 28, 28), latent_dim=16, width=16, prior="diffusion",
        prior_args={"T": 200, "hidden": 128, "depth": 2},
    ).to(device).eval()  # fmt: skip
    # (quick: one ancestral call, ~70 s, with its 10 latent calls inside: that ratio is ~2x
    # its target, and a second call would take a tenth of the quick pass)
    for sampler, steps, repeats in (
        ("ancestral", 200, 1 if quick else 3),
        ("ddim", 50, 2 if quick else 3),
    ):

        def latent(s=sampler, k=steps):
            vae.sample(n, g(), sampler=s, steps=k)

        def pixel(progress, s=sampler, k=steps):
            vdm.sample(n, g(), sampler=s, steps=k, progress=progress)

        latent()  # warm-up: the first call builds the conv primitives (the pixel side: none)
        pixel_sec, latent_sec = [], []
        for _ in range(repeats):
            p, inner = H.inside(pixel, latent, every=steps // 10, device=device)
            pixel_sec.append(p)
            latent_sec.extend(inner)
        sec = {"pixel vdm": statistics.median(pixel_sec),
               "latent vae": statistics.median(latent_sec)}  # fmt: skip
        for k, v in sec.items():
            rec["rows"].append(
                {"compare": "pixel vs latent", "sampler": sampler, "steps": steps,
                 "model": k, "images": n, "samples_per_s": n / v}
            )  # fmt: skip
        key = f"latent / pixel samples/s ({sampler}, {steps} steps)"
        rec["ratios"][key] = sec["pixel vdm"] / sec["latent vae"]
        rec["targets"][key] = ">= 100"
    rec["notes"].append(
        "Pixel and latent sampling take turns inside each pixel call: its progress callback "
        "makes a latent call every steps / 10 steps, timed apart; medians over all calls."
    )
    parts(rec, vdm, vae, n, quick, device)
    rec.update(overhead=sampler_overhead(quick, device))
    o = rec["overhead"]
    rec["rows"].extend(o["rows"])
    rec["ratios"]["diffrep DDIM / diffusers DDIM loop, samples/s"] = o["ratio"]
    rec["notes"].append(
        "The DDIM overhead comparison runs the same network the same number of times, the two "
        "loops' steps in turn; a ratio near 1 means the sampler code costs nothing next to the "
        "network."
    )
    return rec


def parts(rec: dict, vdm, vae, n: int, quick: bool, device: torch.device) -> None:
    """What bounds the DDIM-50 ratio, at batches 64 to 512: one U-Net step, one decoder pass and
    the prior's 50 steps, all timed in turns. Even with a free prior, latent / pixel at k steps
    is at most k * (U-Net step) / (decoder pass); when the prior's k steps cost p decoder passes,
    it is that divided by (1 + p)."""
    batches = sorted({64, 128, 256, 512, n})  # (n: the measured calls' batch)
    fns = {}
    for b in batches:
        x, z = torch.randn(b, 1, 28, 28, device=device), torch.randn(b, 16, device=device)
        t = torch.full((b,), 0.5, device=device)
        fns |= {
            f"unet {b}": lambda x=x, t=t: vdm.eps_model(x, t),
            f"decoder {b}": lambda z=z: vae.decode(z),
            f"prior {b}": lambda b=b: vae.prior.sample(b, g(), sampler="ddim", steps=50),
        }
    with torch.no_grad():
        sec = H.interleaved(fns, device, reps=3 if quick else 5)
    predicted = {}
    for b in batches:
        unet, decoder, prior = sec[f"unet {b}"], sec[f"decoder {b}"], sec[f"prior {b}"]
        predicted[b] = 50 * unet / (decoder + prior)
        rec["rows"].append(
            {"compare": "parts", "images": b, "U-Net step ms": 1e3 * unet,
             "decoder pass ms": 1e3 * decoder, "prior 50 DDIM steps ms": 1e3 * prior,
             "predicted latent / pixel (DDIM-50)": predicted[b]}
        )  # fmt: skip
    step_per_decode = sec[f"unet {n}"] / sec[f"decoder {n}"]
    prior_per_decode = sec[f"prior {n}"] / sec[f"decoder {n}"]
    rec["ratios"]["U-Net step / VAE decoder pass"] = step_per_decode
    rec["ratios"]["latent prior's 50 DDIM steps / VAE decoder pass"] = prior_per_decode
    rec["notes"].append(
        f"At {n} images one U-Net step costs {step_per_decode:.2f} decoder passes, so even a free "
        f"prior would give at most {50 * step_per_decode:.0f}x at DDIM-50 "
        f"({200 * step_per_decode:.0f}x at 200 steps). The prior's 50 steps cost "
        f"{prior_per_decode:.2f} decoder passes, so these parts predict {predicted[n]:.0f}x. "
        "By batch: " + ", ".join(f"{b} images {v:.0f}x" for b, v in predicted.items()) + "."
    )
    measured = rec["ratios"]["latent / pixel samples/s (ddim, 50 steps)"]
    rec["plots"].append({
        "title": "latent / pixel samples/s, DDIM-50",
        "x": {"parts predict": list(batches), "measured": [n]},
        "y": {"parts predict": list(predicted.values()),
              "measured": [measured]},
        "xlabel": "images per call", "ylabel": "ratio", "logx": True, "hlines": {"target": 100},
    })  # fmt: skip


def sampler_overhead(quick: bool, device: torch.device) -> dict:
    """diffrep.samplers.ddim vs diffusers' DDIMScheduler loop, same ddpm U-Net, 50 steps."""
    from diffusers import DDIMScheduler

    from diffrep.diffusion import samplers as S
    from diffrep.methods import build_method

    T, steps, n = 1000, 50, 8 if quick else 32
    torch.manual_seed(0)
    ddpm = build_method("ddpm", (1, 28, 28), T=T, unet={"base_channels": 16}).to(device).eval()
    sched = DDIMScheduler(
        num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
        clip_sample=False, set_alpha_to_one=True, timestep_spacing="leading",
    )  # fmt: skip
    x_T = torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(1)).to(device)

    @torch.no_grad()
    def lockstep() -> dict[str, float]:
        """Seconds of our DDIM and of the diffusers loop, one step of theirs after each of ours."""
        x = x_T
        t0 = time.perf_counter()
        sched.set_timesteps(steps)
        timesteps, setup = iter(sched.timesteps), time.perf_counter() - t0

        def their_step() -> None:
            nonlocal x
            t = next(timesteps)
            # diffusers' timestep k is diffrep's latent x_{k+1}, seen by the net as (k + 1) / T
            tt = torch.full((n,), (int(t) + 1) / T, device=device)
            x = sched.step(ddpm.eps_model(x, tt), t, x).prev_sample

        def ours(progress) -> None:
            S.ddim(ddpm.eps_model, ddpm.schedule, x_T, steps, progress=progress)

        sec, theirs = H.inside(ours, their_step, every=1, device=device)
        return {"diffrep ddim": sec, "diffusers DDIMScheduler": setup + sum(theirs)}

    lockstep()  # warm-up
    runs = [lockstep() for _ in range(5)]
    sec = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    rows = [
        {"compare": "DDIM loop", "sampler": "ddim", "steps": steps, "model": k,
         "samples_per_s": n / v}
        for k, v in sec.items()
    ]  # fmt: skip
    return {"rows": rows, "ratio": sec["diffusers DDIMScheduler"] / sec["diffrep ddim"]}


if __name__ == "__main__":
    H.cli(run, __doc__)
