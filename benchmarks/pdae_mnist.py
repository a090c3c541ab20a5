"""PDAE (seed 002) on MNIST under fixed CPU budgets: a DDPM, then PDAE on the frozen DDPM.

Issue 13's acceptance run: train `ddpm` on MNIST test[:8000] (configs/ddpm-mnist.yaml), or reuse
a run with --ddpm-run, then `pdae` on it (configs/pdae-mnist.yaml), and measure on test[8000:].

Budgets are steps (--ddpm-steps, --steps): on a shared machine a step budget compares fairly, a
time budget measures the neighbours too. The defaults, 6000 DDPM and 9000 PDAE steps, are sized
to about 40 minutes with the evaluation on this project's 2-core machine at 2 threads (DDPM 9,
PDAE 6.1 steps/s). --minutes gives wall-clock shares instead. The measurements:

- the posterior-mean gap per t bin, frozen DPM alone and with z (target: lower with z in every bin);
- reconstruction (DDIM inversion + regeneration, same steps) with z against the unconditional
  DDIM round trip of the frozen DPM (target: lower MSE with z);
- the critical-stage grid of mixed sampling (figure), scored by a domain classifier trained on
  test[:8000] (its test accuracy printed beside);
- a linear probe and a 100-label probe of z (target: linear probe >= 0.97);
- pictures: reconstructions, interpolation (slerp x_T, lerp z), attribute manipulation along a
  linear probe's direction, and samples with z from a latent DPM fitted to the codes.

    python benchmarks/pdae_mnist.py                         # ~40 minutes, 2 threads
    python benchmarks/pdae_mnist.py --ddpm-steps 2000 --steps 1500 --gap-n 200 --recon-n 100
    python benchmarks/pdae_mnist.py --ddpm-run RUN_DIR --steps 500   # reuse a DDPM

Everything lands in the PDAE run directory: eval.json, figures/, report.html (`diffrep report`)
and pdae_mnist.md with the table as printed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/vdm_mnist.py

import numpy as np  # noqa: E402
import torch  # noqa: E402

from diffrep.config import load_config  # noqa: E402
from diffrep.data import to_model_input  # noqa: E402
from diffrep.diffusion import editing  # noqa: E402
from diffrep.eval import guidance as G  # noqa: E402
from diffrep.eval import plots as P  # noqa: E402
from diffrep.eval import probes  # noqa: E402
from diffrep.eval.batching import encode_features, to_uint8_np, to_unit  # noqa: E402
from diffrep.eval.fidnet import ensure_fidnet, load_fidnet  # noqa: E402
from diffrep.eval.recon import psnr, ssim  # noqa: E402
from diffrep.eval.suite import write_eval  # noqa: E402
from diffrep.runs import load_run, train_from_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def train(config: Path, out: Path, minutes: float, steps: int, sets: list[str]) -> Path:
    budget = [f"train.steps={steps}", "train.max_minutes=0"] if steps else [
        "train.steps=100000000", f"train.max_minutes={minutes}"
    ]  # fmt: skip
    cfg = load_config(config, [*sets, *budget])
    t0 = time.perf_counter()
    s = train_from_config(cfg, out, log=lambda m: print(m, flush=True), progress=False)
    print(f"  {cfg.method_name}: {s['step']} steps in {time.perf_counter() - t0:.0f} s", flush=True)
    return out


@torch.no_grad()
def recon_scores(model, x0: torch.Tensor, steps: int, use_z: bool, batch: int = 100) -> dict:
    outs = [model.reconstruct(xb, steps=steps, use_z=use_z) for xb in x0.split(batch)]
    x_hat = torch.cat(outs)
    a, b = to_unit(x0), to_unit(x_hat)
    return {
        "mse": float(((a - b) ** 2).flatten(1).mean(1).mean()),
        "psnr": float(psnr(a, b).mean()),
        "ssim": float(ssim(a, b).mean()),
        "x_hat": x_hat,
    }


def probe_direction(feats: np.ndarray, labels: np.ndarray, a: int, b: int) -> np.ndarray:
    """Unit direction from class a to class b of a logistic regression on raw z."""
    from sklearn.linear_model import LogisticRegression

    keep = (labels == a) | (labels == b)
    clf = LogisticRegression(max_iter=2000).fit(feats[keep], labels[keep] == b)
    w = clf.coef_[0]
    return w / np.linalg.norm(w)


def main() -> None:
    ap = argparse.ArgumentParser(description="PDAE on MNIST under CPU budgets")
    ap.add_argument("--ddpm-run", default=None, help="reuse this trained ddpm run directory")
    ap.add_argument("--ddpm-steps", type=int, default=6000, help="DDPM training steps")
    ap.add_argument("--steps", type=int, default=9000, help="PDAE training steps")
    ap.add_argument(
        "--minutes", type=float, default=None,
        help="a wall-clock budget instead of steps: DDPM 50%%, PDAE 30%% (60%% with --ddpm-run)",
    )  # fmt: skip
    ap.add_argument("--set", action="append", default=[], help="pdae config override K=V")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gap-n", type=int, default=500, help="test images for the gap curve")
    ap.add_argument("--recon-n", type=int, default=200, help="test images reconstructed")
    ap.add_argument("--recon-steps", type=int, default=25, help="DDIM steps of both round trips")
    ap.add_argument("--stage-n", type=int, default=100, help="source images per (t1, t2)")
    ap.add_argument("--stage-grid", type=int, default=5)
    ap.add_argument("--stage-steps", type=int, default=20)
    ap.add_argument("--prior-steps", type=int, default=1500, help="latent DPM fitting steps")
    ap.add_argument("--out", default="/tmp/pdae_mnist")
    args = ap.parse_args()
    if not args.minutes and min(args.steps, args.ddpm_steps) < 1:
        ap.error("--steps and --ddpm-steps must be >= 1 (or give --minutes)")
    if args.ddpm_run:  # a missing or unusable run fails here, before anything is written
        from diffrep.frozen import load_frozen

        load_frozen(f"run:{Path(args.ddpm_run).resolve()}")
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    out = Path(args.out) / time.strftime("run-%Y%m%d-%H%M%S")
    # Shares of the budget: DDPM 50 %, PDAE 30 %, evaluation the rest (measured, not enforced).
    if args.minutes:
        args.ddpm_steps = args.steps = 0  # train() takes a time budget where steps are 0
        ddpm_min, pdae_min = (0.0, 0.6 * args.minutes) if args.ddpm_run else (
            0.5 * args.minutes, 0.3 * args.minutes
        )  # fmt: skip
        budget = f"{args.minutes:g} min budget"
    else:
        ddpm_min = pdae_min = 0.0
        ddpm = f"DDPM {args.ddpm_run}" if args.ddpm_run else f"{args.ddpm_steps} DDPM steps"
        budget = f"{ddpm}, {args.steps} PDAE steps"
    print(f"pdae_mnist: {budget}, {args.threads} threads -> {out}", flush=True)

    ddpm_dir = Path(args.ddpm_run) if args.ddpm_run else train(
        REPO / "configs" / "ddpm-mnist.yaml", out / "ddpm", ddpm_min, args.ddpm_steps, []
    )  # fmt: skip
    run = train(
        REPO / "configs" / "pdae-mnist.yaml", out / "pdae", pdae_min, args.steps,
        [f"method.base=run:{ddpm_dir.resolve()}", *args.set],
    )  # fmt: skip
    model, cfg = load_run(run)
    train_data = cfg.data.load(cfg.data.train_split)
    test = cfg.data.load(cfg.data.eval_split)
    t_eval = time.perf_counter()
    gen = torch.Generator().manual_seed(0)
    n = min(args.recon_n, len(test))

    # posterior-mean gap, with and without z
    gap = G.gap_curve(model, test.images[: args.gap_n], bins=10, generator=gen)
    P.save_figure(run, "posterior_gap", G.gap_figure(gap), "Posterior-mean gap", "Diffusion")

    # reconstruction: DDIM inversion + regeneration at the same steps, with z and without
    x0 = to_model_input(torch.as_tensor(test.images[:n]))
    rz = recon_scores(model, x0, args.recon_steps, True)
    ru = recon_scores(model, x0, args.recon_steps, False)
    rows = np.concatenate([test.images[:8], to_uint8_np(rz["x_hat"][:8])])
    rows = np.concatenate([rows, to_uint8_np(ru["x_hat"][:8])])
    caption = "Rows: test images; with z; the frozen DDPM alone (DDIM round trips)."
    png = P.image_grid(rows, nrow=8)
    P.save_figure(run, "reconstructions", png, "Reconstructions", "Reconstructions", caption)

    # critical stage of mixed sampling, scored by a domain classifier
    net, _ = load_fidnet(ensure_fidnet(train_data))
    clf_acc = G.classifier_accuracy(net, test.images, test.labels)
    m = min(args.stage_n, len(test))
    stage = G.critical_stage(
        model, test.images[:m], test.labels[:m], G.classifier(net), args.stage_grid,
        args.stage_steps,
    )  # fmt: skip
    stage["classifier_test_acc"] = clf_acc
    P.save_figure(run, "critical_stage", G.stage_figure(stage), "Critical stage", "Diffusion")

    # representation: linear and 100-label probes of z on test[8000:]
    f_tr = encode_features(model, train_data.images, 256)
    f_te = encode_features(model, test.images, 256)
    lin = probes.linear_probe(f_tr, train_data.labels, f_te, test.labels)
    few = probes.few_label_probe(f_tr, train_data.labels, f_te, test.labels, sizes=(100,))

    # pictures: interpolation, manipulation along a probe direction (3 -> 8), latent-DPM samples
    xa, xb = x0[:4], x0[4:8]
    interp = editing.interpolate(model, xa, xb, n=8, steps=args.recon_steps).flatten(0, 1)
    P.save_figure(run, "interpolation", P.image_grid(to_uint8_np(interp), nrow=8),
                  "Interpolation (slerp x_T, lerp z)", "Samples")  # fmt: skip
    d = torch.from_numpy(probe_direction(f_tr, train_data.labels, 3, 8)).float()
    src = x0[torch.from_numpy(test.labels[:n] == 3)][:4]
    scale = float(np.std(f_tr @ d.numpy().astype(np.float64)))
    amounts = [scale * a for a in (0, 1, 2, 3, 4, 5)]
    manip = editing.manipulate(model, src, d, amounts, steps=args.recon_steps).flatten(0, 1)
    P.save_figure(run, "manipulation", P.image_grid(to_uint8_np(manip), nrow=len(amounts)),
                  "Moving z along a 3-vs-8 linear probe direction", "Samples")  # fmt: skip
    from diffrep.priors import build_prior
    from diffrep.priors.fit import fit_prior

    torch.manual_seed(0)
    model.prior = build_prior("diffusion", model.latent_dim)
    fit_prior(model.prior, torch.from_numpy(f_tr).float(), args.prior_steps, progress=False)
    model.prior.eval()
    samples = model.sample(36, torch.Generator().manual_seed(1), steps=args.recon_steps)
    P.save_figure(run, "samples", P.image_grid(to_uint8_np(samples), nrow=6),
                  "Samples (z from a latent DPM fitted to the codes)", "Samples")  # fmt: skip
    eval_s = time.perf_counter() - t_eval

    # the table
    best = stage["shortest"]
    lines = [
        f"PDAE on MNIST: {cfg.data.train_split} -> {cfg.data.eval_split}; "
        f"DDPM {ddpm_dir}; {args.threads} threads",
        "",
        f"posterior-mean gap ||mu - mu~||^2 per dim ({gap['n']} test images, one t per bin)",
        "   t bin   DPM alone      with z    ratio",
    ]
    for t, a, b in zip(gap["t"], gap["alone"], gap["with_z"]):
        lines.append(f"   {t:5.2f}   {a:9.3e}   {b:9.3e}   {b / a:6.3f}")
    lines += [
        f"with z lower in every bin: {gap['with_z_lower_in_every_bin']}",
        "",
        f"reconstruction ({n} images, DDIM inversion + regeneration, {args.recon_steps} steps)",
        "                     MSE     PSNR   SSIM",
        f"  PDAE (with z)   {rz['mse']:.5f}  {rz['psnr']:6.2f}  {rz['ssim']:.3f}",
        f"  DDPM alone      {ru['mse']:.5f}  {ru['psnr']:6.2f}  {ru['ssim']:.3f}",
        f"with z better: {rz['mse'] < ru['mse']}",
        "",
        f"critical stage: agreement of source label and sample class ({m} images, "
        f"{args.stage_steps} ancestral steps; classifier test acc {clf_acc:.3f})",
        "  t1 \\ t2 " + " ".join(f"{k / args.stage_grid:5.1f}" for k in range(args.stage_grid)),
    ]
    k = args.stage_grid
    table = {(round(c["t1"] * k), round(c["t2"] * k)): c["agreement"] for c in stage["cells"]}
    for i in range(1, k + 1):
        row = [f"{table[i, j]:5.2f}" if (i, j) in table else "     " for j in range(k)]
        lines.append(f"  {i / k:5.1f}   " + " ".join(row))
    lines += [
        f"  unguided {stage['unguided']:.2f}, full range {stage['full_range']:.2f}; shortest stage "
        f"within {stage['tolerance']}: t in [{best['t2']:.1f}, {best['t1']:.1f}] "
        f"(agreement {best['agreement']:.2f})",
        "",
        f"probes of z ({f_tr.shape[1]}-D) on {cfg.data.eval_split}: linear "
        f"{lin['linear_acc']:.4f}, 100 labels {few['few_label_acc']['100']:.4f}",
        f"evaluation {eval_s:.0f} s; total {time.perf_counter() - t_start:.0f} s",
    ]
    text = "\n".join(lines)
    print("\n" + text, flush=True)
    (run / "pdae_mnist.md").write_text("```\n" + text + "\n```\n")
    result = {
        "method": "PDAE",
        "posterior_gap": gap,
        "recon": {k: v for k, v in rz.items() if k != "x_hat"},
        "recon_unconditional": {k: v for k, v in ru.items() if k != "x_hat"},
        "critical_stage": stage,
        "probe": {**lin, **few},
        "figures": ["posterior_gap", "reconstructions", "critical_stage", "interpolation",
                    "manipulation", "samples"],
    }  # fmt: skip
    write_eval(run, result)
    from diffrep.report import write_report

    write_report(run)
    targets = {
        "gap_lower_every_bin": gap["with_z_lower_in_every_bin"],
        "recon_better": rz["mse"] < ru["mse"],
        "probe_ge_0.97": lin["linear_acc"] >= 0.97,
    }
    print(json.dumps({"benchmark": "pdae_mnist", "run_dir": str(run), "targets": targets}))


if __name__ == "__main__":
    from diffrep.errors import UserError

    try:
        main()
    except UserError as e:  # a user's mistake (a missing run, a bad budget): one line, exit 2
        print(f"pdae_mnist: error: {e}", file=sys.stderr)
        sys.exit(2)
