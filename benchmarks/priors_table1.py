"""Seed 004's Table 1 at CPU size: VAE priors x latent sizes on real MNIST.

For each prior (gaussian, flow, diffusion) and latent size (8, 16, 32) this trains the same VAE
(configs/priors-mnist.yaml: one conv encoder/decoder backbone, Adam at lr 5e-4, constant) on
MNIST test[:8000] with the same step budget, keeps the weights with the best validation -ELBO
(test[8000:9000], seed 004 sec. 5's checkpoint selection), and evaluates the chosen weights on
test[9000:] with the evaluation suite: domain FID (`diffrep.eval.fidnet`, n generated samples
against the held-out images) and the importance-weighted NLL in nats (Burda et al. 2016, eq. 8).
Each run is a normal run directory (OUT/<prior>-z<Z>: run.json, config.yaml, checkpoint/ with the
selected weights, metrics.jsonl with the validation curve, eval.json, figures/samples.png), so

    diffrep compare --layout priors OUT/*-z*          # the same table again
    diffrep sample OUT/diffusion-z32 -n 64            # more samples

work on them. The benchmark prints the table (`diffrep.report.table1`), writes one page with the
sample grids side by side (OUT/report.html, `diffrep.report.write_table1_report`), times sampling
1000 images from the diffusion-prior VAE against the pixel-space `vdm` (configs/vdm-mnist.yaml's
U-Net) at the same number of steps, and ends with one JSON line.

CPU sizing (defaults: the 9 runs in ~30-45 minutes on an idle 2-core machine):
- budget: --steps per run (500 by default, batch 64), the same for every prior and latent size:
  a step budget compares fairly on a shared machine, where a time budget measures the neighbours.
  --minutes M instead times the Gaussian VAE once and turns M minutes into a step count.
- backbone width 16 (configs/priors-mnist.yaml): width 32 costs ~3x more per step on a CPU.
- the diffusion prior uses T = 200 steps (--T), not the paper's 1000: its bound is an exact sum
  of T - 1 KL terms per latent and the IW-NLL needs it for k latents per image, T = 1000 costs 5x
  more in every evaluation. The linear schedule is rescaled by 1000 / T (DDPM betas x 5), so the
  chain still ends at N(0, I); the bound stays a valid bound at any T.

    python benchmarks/priors_table1.py                               # the full table
    python benchmarks/priors_table1.py --steps 100 --latents 8 16    # a quick end-to-end check
    python benchmarks/priors_table1.py --speed-only                  # only the sampling timing
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "priors-mnist.yaml"
VDM_CONFIG = REPO / "configs" / "vdm-mnist.yaml"
PRIORS = ("gaussian", "flow", "diffusion")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=500, help="training steps per run (batch 64)")
    ap.add_argument(
        "--minutes", type=float, help="a time budget per run instead, turned into steps once"
    )
    ap.add_argument("--latents", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--priors", nargs="+", default=list(PRIORS), choices=PRIORS)
    ap.add_argument("--T", type=int, default=200, help="diffusion prior steps (paper: 1000)")
    ap.add_argument("--validations", type=int, default=5, help="validation checks per run")
    ap.add_argument("--val-examples", type=int, default=500, help="of test[8000:9000]")
    ap.add_argument("--n-samples", type=int, default=2000, help="generated images for FID")
    ap.add_argument("--nll-examples", type=int, default=300, help="test images for the IW-NLL")
    ap.add_argument("--iw-k", type=int, default=16, help="importance samples per image")
    ap.add_argument("--speed-n", type=int, default=1000, help="images in the sampling timing")
    ap.add_argument(
        "--vdm-timed-steps",
        type=int,
        default=3,
        help="vdm steps actually run on speed-n images (its per-step cost is constant)",
    )
    ap.add_argument("--speed-only", action="store_true", help="only the sampling timing")
    ap.add_argument("--no-speed", action="store_true", help="skip the sampling timing")
    ap.add_argument("--reuse", action="store_true", help="keep runs of OUT that have eval.json")
    ap.add_argument("--overwrite", action="store_true", help="delete OUT's unfinished runs")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", default="runs/priors-table1")
    return ap.parse_args(argv)


# ---------------------------------------------------------------------------- config


def prior_args(prior: str, T: int) -> dict:
    # The diffusion prior's ResMLP is kept small (2 blocks of 128): it runs T times per sample.
    return {"T": T, "hidden": 128, "depth": 2} if prior == "diffusion" else {}


def run_config(prior: str, latent: int, steps: int, args):
    """configs/priors-mnist.yaml with this run's prior, latent size and budget."""
    from diffrep.config import config_from_dict, read_yaml

    raw = read_yaml(CONFIG)
    raw["method"].update(latent_dim=latent, prior=prior, prior_args=prior_args(prior, args.T))
    raw["train"].update(
        steps=steps,
        eval_every=max(1, steps // max(1, args.validations)),
        ckpt_every=0,  # only the final (selected) weights are written
        tensorboard=False,
    )
    return config_from_dict(raw)


def eval_config(fidnet_path: Path, args):
    from diffrep.eval import EvalConfig

    return EvalConfig(
        metrics=("likelihood", "fid"),
        max_eval=None,  # all of test[9000:]
        iw_samples=args.iw_k,
        iw_max_examples=args.nll_examples,
        n_samples=args.n_samples,
        fidnet_path=str(fidnet_path),
        kid_subsets=20,
    )


def steps_for_minutes(minutes: float, x_train: torch.Tensor) -> tuple[int, float]:
    """Steps that fit `minutes` of training, timed on the Gaussian VAE of the shared backbone."""
    from diffrep.methods import build_method

    cfg = run_config("gaussian", 16, 1, argparse.Namespace(T=200, validations=1))
    vae = build_method("vae", tuple(x_train.shape[1:]), **cfg.method_args)
    opt = torch.optim.Adam(vae.parameters(), lr=cfg.train.lr)
    bs = cfg.train.batch_size
    times = []
    for i in range(8):
        t0 = time.perf_counter()
        loss = vae.loss({"x0": x_train[i * bs : (i + 1) * bs]})["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    per_step = sorted(times[2:])[len(times[2:]) // 2]  # median after warm-up
    return max(10, int(minutes * 60 / per_step)), per_step


# ---------------------------------------------------------------------------- one run


def train_and_select(cfg, train_data, x_val: torch.Tensor, run_dir: Path):
    """Train into run_dir; the checkpoint ends up holding the best-validation weights."""
    from diffrep.checkpoint import save_checkpoint
    from diffrep.methods import build_method
    from diffrep.runs import write_run_info
    from diffrep.train import seed_everything, train

    write_run_info(run_dir, cfg, train_data.shape)
    seed_everything(cfg.train.seed)
    method = build_method(cfg.method_name, train_data.shape, **cfg.method_args)
    best = {"val": math.inf, "step": 0, "state": None}

    def validate(m, step):  # eval mode, no_grad; the trainer restores its RNG afterwards
        torch.manual_seed(1234)  # the same q(z|x) draws for every check
        val = torch.cat([m.elbo(xb)["total"] for xb in x_val.split(250)]).mean().item()
        if val < best["val"]:
            best.update(val=val, step=step)
            best["state"] = {k: v.detach().clone() for k, v in m.state_dict().items()}
        return {"val_neg_elbo": val}

    summary = train(method, train_data, run_dir, cfg.train, eval_hook=validate, progress=False)
    method.load_state_dict(best["state"])
    extra = {
        "selected_on": "val_neg_elbo",
        "val_neg_elbo": best["val"],
        "trained_steps": int(summary["step"]),
    }
    save_checkpoint(run_dir / "checkpoint", method.eval(), None, None, best["step"], extra)
    return method, best, summary


def run_one(prior, latent, steps, data, fidnet_path, args):
    from diffrep.eval.suite import evaluate, write_eval

    run_dir = Path(args.out) / f"{prior}-z{latent}"
    if args.reuse and (run_dir / "eval.json").is_file():
        print(f"{run_dir.name}: reusing its eval.json", flush=True)
        return run_dir, json.loads((run_dir / "eval.json").read_text()), None
    if run_dir.exists():
        if not args.overwrite:
            # a user's mistake: one line, exit 2
            print(
                f"{run_dir} exists; pass --reuse (keep evaluated runs), --overwrite or --out",
                file=sys.stderr,
            )
            sys.exit(2)
        shutil.rmtree(run_dir)
    train_data, x_val, test_data = data
    t0 = time.perf_counter()
    method, best, summary = train_and_select(
        run_config(prior, latent, steps, args), train_data, x_val, run_dir
    )
    t_train = time.perf_counter() - t0
    ev = evaluate(method, train_data, test_data, eval_config(fidnet_path, args), run_dir=run_dir)
    ev["selection"] = {"best_step": best["step"], "val_neg_elbo": best["val"]}
    write_eval(run_dir, ev)
    t_eval = time.perf_counter() - t0 - t_train
    print(
        f"{run_dir.name:13s} steps {summary['step']} (best val -ELBO {best['val']:.1f} at "
        f"{best['step']}) FID {ev.get('fid', {}).get('domain', math.nan):.2f} "
        f"NLL {ev.get('nll_iw_nats', math.nan):.1f} nats; "
        f"train {t_train:.0f}s, eval {t_eval:.0f}s",
        flush=True,
    )
    return run_dir, ev, {"train_s": t_train, "eval_s": t_eval}


# ---------------------------------------------------------------------------- sampling speed


def sampling_speed(latent: int, args) -> dict:
    """Wall time of args.speed_n images: diffusion-prior VAE vs pixel-space vdm, same steps.

    Both models are freshly built: the cost of sampling does not depend on the weights. The VAE
    is timed end to end (T ancestral MLP steps over z, then one decoder pass). The vdm U-Net runs
    speed_n images for --vdm-timed-steps steps and is scaled to T steps: each step is one U-Net
    pass over the same batch, so its cost is the same at every step.
    """
    from diffrep.config import read_yaml
    from diffrep.methods import build_method

    n, T = args.speed_n, args.T
    cfg = run_config("diffusion", latent, 1, args)
    vae = build_method("vae", (1, 28, 28), **cfg.method_args).eval()
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    with torch.no_grad():
        vae.sample(n, generator=g)
    t_latent = time.perf_counter() - t0

    vdm_args = {k: v for k, v in read_yaml(VDM_CONFIG)["method"].items() if k != "name"}
    vdm = build_method("vdm", (1, 28, 28), **vdm_args).eval()
    timed = min(args.vdm_timed_steps, T)
    t0 = time.perf_counter()
    with torch.no_grad():
        vdm.sample(n, generator=torch.Generator().manual_seed(0), steps=timed)
    t_pixel = (time.perf_counter() - t0) * T / timed
    ratio = t_pixel / t_latent
    print(
        f"sampling {n} images at {T} steps: diffusion-prior VAE (Z={latent}) {t_latent:.1f}s "
        f"measured; pixel-space vdm {t_pixel:.0f}s ({timed} steps measured, x{T / timed:.0f}) "
        f"-> {ratio:.0f}x faster (target >= 100x)",
        flush=True,
    )
    return {
        "n": n,
        "steps": T,
        "latent_dim": latent,
        "latent_s": t_latent,
        "pixel_s": t_pixel,
        "pixel_steps_measured": timed,
        "ratio": ratio,
    }


# ---------------------------------------------------------------------------- main


def load_data(args):
    from diffrep.data import load_dataset, to_model_input
    from diffrep.errors import UserError

    try:
        train = load_dataset("mnist", "test[:8000]")
        held = load_dataset("mnist", "test[8000:]")
    except UserError as e:
        print(f"skipped: MNIST is not available ({e})")
        return None
    val = held.subset(list(range(min(args.val_examples, 1000))))
    test = held.subset(list(range(1000, len(held))))
    x_val = to_model_input(torch.from_numpy(val.images))
    return train, x_val, test


def findings(cells, priors, latents) -> list[str]:
    """Where the learned priors' FID beats the Gaussian's (seed 004's claim), stated plainly."""
    out = []
    for z in latents:
        g = cells.get(("gaussian", z))
        if g is None or g["fid"] is None:
            continue
        for p in priors:
            c = cells.get((p, z))
            if p == "gaussian" or c is None or c["fid"] is None:
                continue
            verdict = "better" if c["fid"] < g["fid"] else "not better"
            out.append(
                f"Z={z}: {p} FID {c['fid']:.2f} vs gaussian {g['fid']:.2f} -> {verdict}; "
                f"NLL {c['nll']:.1f} vs {g['nll']:.1f}"
            )
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.steps < 1 or (args.minutes is not None and args.minutes <= 0):
        print("priors_table1: --steps must be >= 1 and --minutes > 0; fix: e.g. --steps 500")
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    from diffrep.report import table1, table1_cells, write_table1_report

    result: dict = {
        "benchmark": "priors_table1",
        "T": args.T,
        "torch_threads": torch.get_num_threads(),
    }
    if args.speed_only:
        result["sampling"] = sampling_speed(max(args.latents), args)
        print(json.dumps(result))
        return 0
    data = load_data(args)
    if data is None:
        print(json.dumps({**result, "skipped": "mnist not found"}))
        return 0
    from diffrep.data import to_model_input
    from diffrep.eval.fidnet import ensure_fidnet

    t_start = time.perf_counter()
    # The suite's FID network for test[:8000] (cached; the same file `diffrep eval` would use).
    fidnet_path = ensure_fidnet(data[0], epochs=3, seed=0)
    if args.minutes is None:
        steps, per_step = args.steps, None
    else:
        x_train = to_model_input(torch.from_numpy(data[0].images[:512]))
        steps, per_step = steps_for_minutes(args.minutes, x_train)
        print(
            f"budget: {args.minutes:g} min/run at {per_step * 1000:.0f} ms/step "
            f"-> {steps} steps per run (batch 64)",
            flush=True,
        )
    Path(args.out).mkdir(parents=True, exist_ok=True)
    run_dirs, timings = [], {}
    for prior in args.priors:
        for latent in args.latents:
            run_dir, _, t = run_one(prior, latent, steps, data, fidnet_path, args)
            run_dirs.append(run_dir)
            timings[run_dir.name] = t

    md = table1(run_dirs)
    report = write_table1_report(
        run_dirs,
        Path(args.out) / "report.html",
        title=f"Seed 004 Table 1 on MNIST (CPU size: {steps} steps per run, diffusion T={args.T})",
    )
    priors, latents, cells = table1_cells(run_dirs)
    print(f"\nMNIST test[:8000], {steps} steps/run; rows priors, columns latent sizes\n")
    print(md)
    print("\nlearned priors vs Gaussian (FID, lower is better):")
    for line in findings(cells, priors, latents):
        print("  " + line)
    print(f"wrote {report}")
    result.update(
        steps_per_run=steps,
        minutes_per_run=args.minutes,
        ms_per_step=None if per_step is None else per_step * 1000,
        n_samples=args.n_samples,
        nll_examples=args.nll_examples,
        iw_k=args.iw_k,
        table={
            f"{p}/{z}": {k: c[k] for k in ("fid", "nll", "nll_is_bound")}
            for (p, z), c in cells.items()
        },
        timings=timings,
        report=str(report),
    )
    if not args.no_speed:
        result["sampling"] = sampling_speed(max(args.latents), args)
    result["total_s"] = time.perf_counter() - t_start
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
