"""The quickstart behind `make demo`: seed 004's comparison of VAE priors, sized for a laptop CPU.

Three VAEs with the same encoder and decoder, differing only in their prior (Gaussian, masked
autoregressive flow, DDPM over z), are trained on scikit-learn's embedded 8x8 digits, evaluated
and reported; the demo's own report ends with the comparison table and the three sample grids.
Ctrl-C (or SIGTERM) stops the whole demo after saving the current model's checkpoint; running
the demo again resumes every unfinished model to its full length, evaluates what changed and
skips what is done.
"""

from __future__ import annotations

import sys
from pathlib import Path

PRIORS = ("gaussian", "flow", "diffusion")
# CPU sizing of the latent DDPM: its exact bound (used by evaluation) costs T network passes
# per latent, so the demo uses T = 200 and a narrower MLP; the prior's default is T = 1000.
PRIOR_ARGS = {"diffusion": {"T": 200, "hidden": 128}}


def demo_config(prior: str, steps: int, device: str | None):
    from diffrep.config import config_from_dict

    raw = {
        "data": {"name": "digits"},
        "method": {
            "name": "vae",
            "latent_dim": 16,
            "width": 16,
            "prior": prior,
            "prior_args": PRIOR_ARGS.get(prior, {}),
        },
        "train": {"steps": steps, "log_every": 50, "ckpt_every": steps},
        "eval": {
            "n_samples": 2000,
            "iw_samples": 16,
            "iw_max_examples": 200,
            "kid_subset_size": 300,  # KID subsets within the 359 test images
        },
    }
    if device:
        raw["train"]["device"] = device
    return config_from_dict(raw)


def run_demo(
    out: str | Path = "runs/demo",
    steps: int = 1500,
    device: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Train (or resume, or reuse) the three priors' VAEs under OUT, evaluate, compare.

    A finished model is reused and an unfinished one resumed; `overwrite` retrains every model
    from scratch, replacing what OUT holds (also what blocks a run: files without a checkpoint).
    """
    from diffrep.checkpoint import checkpoint_step, has_checkpoint
    from diffrep.errors import Interrupted
    from diffrep.report import compare, write_comparison_report, write_report
    from diffrep.runs import run_eval, train_from_config

    out = Path(out)
    run_dirs = []
    for i, prior in enumerate(PRIORS, 1):
        run_dir = out / prior
        run_dirs.append(run_dir)
        say(f"[{i}/{len(PRIORS)}] VAE with a {prior} prior -> {run_dir}")
        cfg = demo_config(prior, steps, device)
        resume = not overwrite and has_checkpoint(run_dir / "checkpoint")
        trained = False
        done = checkpoint_step(run_dir / "checkpoint") if resume else 0
        if done < steps:
            if resume:
                say(f"resuming the unfinished run from step {done}")
            summary = train_from_config(cfg, run_dir, resume=resume, log=say, overwrite=overwrite)
            if summary.get("interrupted"):
                raise Interrupted(
                    f"{run_dir} saved at step {summary['step']} of {steps}; run the demo again "
                    "to resume it"
                )
            trained = True
        if trained or not (run_dir / "eval.json").is_file():
            run_eval(run_dir, device=cfg.train.device if cfg.train.device != "auto" else "cpu")
        write_report(run_dir)
    table = compare(run_dirs, headline_only=True)
    print(table)
    report = write_comparison_report(
        run_dirs,
        out / "report.html",
        title="diffrep demo: VAE priors on the embedded digits (seed 004, CPU-sized)",
    )
    say(f"\nreport: {report.resolve()}")
    say("per-run reports: " + ", ".join(str(d / "report.html") for d in run_dirs))
    return report


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
