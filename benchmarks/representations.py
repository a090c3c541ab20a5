"""Representations on MNIST: DRL / VDRL / E(x0, t) (seed 001) against VAE, DAE, raw pixels.

Every method row trains through diffrep's trainer on MNIST test[:8000] for the same number of
steps (same batch, optimiser and schedule); the probes are fitted on the codes of test[:8000]
(`diffrep.eval.probes`: logistic regression with C chosen on a validation split of the training
codes, kNN k = 20 cosine, few-label logistic regression with 10 / 100 / 1000 class-balanced
labels, mean of 5 draws) and scored on test[8000:]. Active units: Cov_x(E[z_d]) > 0.01 on the
test codes. Bits/dim: the -ELBO on test[8000:] where the method has a bound (VAE, VDRL). Raw
pixels (x in [0, 1], 784 features) go through the same probes.

Rows: drl (eps weighting "high-noise" = sigmoid(gamma), the code also given to the U-Net as a
spatial map, and in training the encoder sees a random view of x0, shifted, turned and scaled by
--view, while the U-Net restores x0 itself: the best DRL of our diagnosis, see README),
drl-no-view (the same without the view: eq. 2 as in the seed), drl-simple (the seed's lambda =
sigma^2), drl-low-noise (sigmoid(-gamma): with drl, the granularity pair), drl variational
(eq. 3), drl time-dependent (eq. 4, probed at the t with the best validation accuracy and at a
fixed t), vae, dae, vae_vdm (seed 000, beta = 1, no mitigation) and vae_vdm-aux (vae_vdm_collapse's
`drl-aux` mitigation: free bits, the encoder at 0.2 of the learning rate on drl's view, and a DRL
term on the posterior mean through its own U-Net), all with the same code size and encoder
width. The drl-* rows other than drl-no-view share drl's view.

Granularity: linear probe and reconstruction error (the code fixed, x_T ~ N(0, I), DDIM; mean
squared error in [0, 1] units) of the high- and low-noise codes, and where along t each code
helps: ||eps - eps_hat||^2 with the image's own code against another image's code (the shuffle
test per t). E(x0, t): linear probe (test) and the one-step denoising error ||x0 - x0_hat||^2 of
x_t given E(x0, t) against t. Generation: VDRL samples (z ~ N(0, I), then the conditional
diffusion), reconstructions with the code fixed and several seeds, DDIM inversion and
regeneration (own code / another image's code), interpolation between two codes. Everything
goes to OUT/report.html; each row is a normal run directory (OUT/<row>).

    python benchmarks/representations.py                       # default: 7500 steps per method
    python benchmarks/representations.py --steps 300 --rows drl vae    # a quick check

The budget is steps, the same for every row: 7500 by default, about 20 minutes per method on this
machine's cores (the drl row, the costliest, runs ~6.5 steps/s). A step budget compares fairly
on a shared machine, where a time budget measures the neighbours too; --minutes M instead turns
M minutes into one step count by timing the drl row. 2 CPU threads by default.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/vdm_mnist.py

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROWS = (
    "drl", "drl-no-view", "drl-simple", "drl-low-noise", "drl-variational", "drl-time", "vae", "dae"
)  # fmt: skip
OPTIONAL_ROWS = ("vae_vdm", "vae_vdm-aux")  # run when the method is registered


DEFAULT_VIEW = "shift=2,rotate=15,scale=0.15"


def parse_view(text: str) -> dict:
    """'shift=2,rotate=15' -> {"shift": 2, "rotate": 15.0}; 'none' -> {}."""
    if text.strip().lower() in ("none", ""):
        return {}
    try:
        view = {k.strip(): float(v) for k, v in (kv.split("=") for kv in text.split(","))}
        view = {k: int(v) if k == "shift" else v for k, v in view.items()}
        from diffrep.data.views import build_view

        build_view(view)
    except Exception as e:  # noqa: BLE001  (argparse prints one line and exits 2)
        raise argparse.ArgumentTypeError(f"{text!r}: {e}; e.g. shift=2,rotate=15 or none") from None
    return view


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=7500, help="training steps per method")
    ap.add_argument(
        "--minutes", type=float, help="a time budget per method instead, turned into steps once"
    )
    ap.add_argument("--rows", nargs="+", default=None, help=f"subset of {ROWS + OPTIONAL_ROWS}")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--code-dim", type=int, default=32)
    ap.add_argument("--width", type=int, default=16, help="encoder (and VAE/DAE decoder) width")
    ap.add_argument("--unet-width", type=int, default=16, help="DRL U-Net base channels")
    ap.add_argument(
        "--cond-map",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="DRL U-Nets also get the code as a spatial map (nets.unet cond_map; default on)",
    )
    ap.add_argument(
        "--weighting",
        default="high-noise",
        help="lambda(t) of the drl, -variational and -time rows (diffusion.weighting.WEIGHTINGS)",
    )
    ap.add_argument(
        "--view",
        type=parse_view,
        default=DEFAULT_VIEW,
        help="the encoder's random view in training for the drl rows (data.views.RandomView), "
        "e.g. shift=2,rotate=15,scale=0.15, or none; the drl-no-view row never has one "
        f"(default {DEFAULT_VIEW})",
    )
    ap.add_argument("--fixed-t", type=float, default=0.5, help="E(x0, t)'s fixed probe t")
    ap.add_argument("--t-grid", type=int, default=9, help="t values of the per-t curves")
    ap.add_argument("--recon-n", type=int, default=200, help="test images reconstructed")
    ap.add_argument("--sample-steps", type=int, default=25, help="DDIM steps (recon, figures)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reuse", action="store_true", help="keep rows of OUT already evaluated")
    ap.add_argument(
        "--only",
        choices=("rows", "raw"),
        help="rows: train and evaluate --rows, nothing else; raw: only the raw-pixel probes "
        "(parallel workers on one OUT; a last run with --reuse prints the table and the page)",
    )
    ap.add_argument("--out", default="runs/representations")
    return ap.parse_args(argv)


# ---------------------------------------------------------------------------- rows


def row_spec(name: str, args) -> tuple[str, dict]:
    """(method name, constructor arguments) of a row: one code size and width for all."""
    z, w = args.code_dim, args.width
    unet = {"base_channels": args.unet_width, "channel_mults": [1, 2, 2], "cond_mode": "film"}
    if args.cond_map:
        unet["cond_map"] = True
    plain = dict(
        code_dim=z, width=w, unet=unet, sample_steps=args.sample_steps, weighting=args.weighting
    )
    drl = {**plain, "view": args.view} if args.view else plain
    specs = {
        "drl": ("drl", drl),
        "drl-no-view": ("drl", plain),
        "drl-variational": ("drl", {**drl, "variational": True}),
        "drl-time": ("drl", {**drl, "time_dependent": True, "encode_t": args.fixed_t}),
        "drl-simple": ("drl", {**drl, "weighting": "simple"}),
        "drl-low-noise": ("drl", {**drl, "weighting": "low-noise"}),
        "vae": ("vae", dict(latent_dim=z, width=w)),
        "dae": ("dae", dict(code_dim=z, width=w)),
    }
    if name in specs:
        return specs[name]
    # vae_vdm (another helper's method): the same sizes under whichever names it takes
    from diffrep.methods import METHODS

    method = name.split("-")[0]
    params = inspect.signature(METHODS.get(method)).parameters
    wanted = {"latent_dim": z, "code_dim": z, "width": w, "encoder_width": w, "unet": unet}
    wanted["sample_steps"] = args.sample_steps
    margs = {k: v for k, v in wanted.items() if k in params}
    if name == "vae_vdm-aux":  # the collapse benchmark's mitigation, on this table's sizes
        aux = _vae_vdm_aux()
        margs.update(aux, view=args.view or aux["view"])
    return method, margs


def _vae_vdm_aux() -> dict:
    """vae_vdm_collapse.py's `drl-aux` settings but its decoder (the U-Net here is this table's)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from vae_vdm_collapse import DRL_AUX

    return {k: v for k, v in DRL_AUX.items() if k != "unet"}


def selected_rows(args) -> list[str]:
    from diffrep.methods import METHODS

    rows = list(ROWS) + [r for r in OPTIONAL_ROWS if r.split("-")[0] in METHODS]
    if args.rows:
        unknown = set(args.rows) - set(ROWS) - set(OPTIONAL_ROWS)
        if unknown:
            # a user's mistake: one line, exit 2
            print(
                f"unknown rows {sorted(unknown)}; choose from {ROWS + OPTIONAL_ROWS}",
                file=sys.stderr,
            )
            sys.exit(2)
        rows = [r for r in rows if r in args.rows]
    return rows


def run_config(name: str, steps: int, args):
    from diffrep.config import config_from_dict

    method, margs = row_spec(name, args)
    return config_from_dict(
        {
            "data": {"name": "mnist", "train_split": "test[:8000]", "eval_split": "test[8000:]"},
            "method": {"name": method, **margs},
            "train": {
                "steps": steps,
                "batch_size": args.batch_size,
                "lr": args.lr,
                "lr_schedule": "cosine",
                "min_lr": args.lr / 10,
                "warmup": min(100, steps // 10),
                "ema": 0.999,
                "seed": args.seed,
                "log_every": max(1, min(50, steps // 20)),
                "ckpt_every": 0,
                "tensorboard": False,
                "device": "cpu",
            },
        }
    )


def steps_for_minutes(minutes: float, x: torch.Tensor, args) -> tuple[int, float]:
    """Steps that fit `minutes` of training, timed on the drl row (the costliest per step)."""
    from diffrep.methods import build_method

    method, margs = row_spec("drl", args)
    m = build_method(method, tuple(x.shape[1:]), **margs)
    opt = torch.optim.AdamW(m.parameters(), lr=args.lr)
    bs, times = args.batch_size, []
    for i in range(6):
        t0 = time.perf_counter()
        loss = m.loss({"x0": x[i * bs : (i + 1) * bs]})["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    per_step = float(np.median(times[2:]))
    return max(10, int(minutes * 60 / per_step)), per_step


# ---------------------------------------------------------------------------- features


def codes(method, images: np.ndarray, t: float | None = None) -> np.ndarray:
    """encode(x0) (or E(x0, t)) of uint8 images -> float64 [N, Z]."""
    from diffrep.eval.batching import encode_features

    return encode_features(method, images, 500, None if t is None else float(t))


def probe_row(f_tr, y_tr, f_te, y_te, seed: int) -> dict:
    from diffrep.eval import probes

    row = probes.linear_probe(f_tr, y_tr, f_te, y_te, seed=seed)
    row.update(probes.knn_probe(f_tr, y_tr, f_te, y_te))
    row.update(probes.few_label_probe(f_tr, y_tr, f_te, y_te, seed=seed))
    return row


def fixed_c_accuracies(f_tr: np.ndarray, y_tr: np.ndarray, f_te, y_te, seed: int):
    """(validation, test) accuracy of logistic regression at C = 1: validation fits 80% of the
    training codes and scores the rest (chooses E(x0, t)'s t without the test split); test
    fits all training codes. Two fits per t keep the probe-vs-t curve cheap."""
    from diffrep.eval import probes

    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(y_tr))
    a, b = perm[: int(0.8 * len(perm))], perm[int(0.8 * len(perm)) :]
    xa, xb = probes._standardise(f_tr[a], f_tr[b])
    val = probes._fit(probes._logreg(1.0, seed), xa, y_tr[a]).score(xb, y_tr[b])
    xs_tr, xs_te = probes._standardise(f_tr, f_te)
    test = probes._fit(probes._logreg(1.0, seed), xs_tr, y_tr).score(xs_te, y_te)
    return float(val), float(test)


@torch.no_grad()
def recon_error(method, images: np.ndarray, seed: int) -> tuple[float, np.ndarray]:
    """Mean squared error in [0, 1] units of reconstruct(x0) (one seed) and the uint8 recons."""
    from diffrep.eval.batching import model_input, to_uint8_np, to_unit

    x0 = model_input(images, method.device)
    x_hat = method.reconstruct(x0, generator=torch.Generator().manual_seed(seed))
    mse = float((to_unit(x0) - to_unit(x_hat)).pow(2).flatten(1).mean(1).mean())
    return mse, to_uint8_np(x_hat)


@torch.no_grad()
def per_t_curves(method, images: np.ndarray, ts: np.ndarray, seed: int) -> dict:
    """Per t: ||eps - eps_hat||^2 with the image's code and with another image's (shuffled), and
    the one-step x0 error ||x0 - x0_hat||^2 given the code (mean over images, per pixel)."""
    from diffrep.diffusion.process import q_sample, x0_from_eps
    from diffrep.eval.batching import model_input

    g = torch.Generator().manual_seed(seed)
    x0 = model_input(images, method.device)
    perm = torch.roll(torch.arange(len(x0)), 1)  # every image gets its neighbour's code
    out = {"t": ts.tolist(), "mse_code": [], "mse_shuffled": [], "x0_mse": []}
    sched = method.diffusion.schedule
    for t in ts:
        tt = torch.full((len(x0),), float(t), dtype=torch.float64)
        eps = torch.randn(x0.shape, generator=g)
        den = method.denoiser_for(x0)
        if method.encode_takes_t:  # E(x0, t) at this t; the shuffled code also at this t
            code = method.encode(x0, t=float(t))
        else:
            code = method.encode(x0)
        own = method.diffusion.per_t_loss(x0, tt, cond=code, eps=eps)
        shuf = method.diffusion.per_t_loss(x0, tt, cond=code[perm], eps=eps)
        gamma = sched(tt).to(x0.dtype)
        x_t = q_sample(x0, gamma, eps)
        x0_hat = x0_from_eps(x_t, gamma, den(x_t, tt.to(x0.dtype))).clamp(-1, 1)
        d = x0[0].numel()
        out["mse_code"].append(float(own.mean()) / d)
        out["mse_shuffled"].append(float(shuf.mean()) / d)
        out["x0_mse"].append(float(((x0_hat - x0) / 2).pow(2).flatten(1).mean(1).mean()))
    return out


# ---------------------------------------------------------------------------- one row


def train_row(name: str, steps: int, args) -> Path:
    from diffrep.checkpoint import has_checkpoint
    from diffrep.runs import train_from_config

    run_dir = Path(args.out) / name
    if has_checkpoint(run_dir / "checkpoint"):
        if args.reuse:
            return run_dir
        # a user's mistake: one line, exit 2
        print(f"{run_dir} holds a trained run; pass --reuse or another --out", file=sys.stderr)
        sys.exit(2)
    t0 = time.perf_counter()
    summary = train_from_config(run_config(name, steps, args), run_dir, log=print, progress=False)
    print(
        f"{name}: {summary['step']} steps in {time.perf_counter() - t0:.0f}s, "
        f"final loss {summary['loss']:.2f}",
        flush=True,
    )
    return run_dir


def evaluate_row(name: str, run_dir: Path, data, args) -> dict:
    """The row's numbers (and the per-t / granularity extras) -> OUT/<row>/representation.json."""
    from diffrep.eval.latents import latent_health
    from diffrep.eval.likelihood import elbo_metrics
    from diffrep.runs import load_run

    cached = run_dir / "representation.json"
    if args.reuse and cached.is_file():
        return json.loads(cached.read_text())
    train, test = data
    method, _ = load_run(run_dir, ema=True)
    torch.manual_seed(args.seed)
    res: dict = {"row": name, "steps": _trained_steps(run_dir)}
    f_tr, f_te = codes(method, train.images), codes(method, test.images)
    res["probe"] = probe_row(f_tr, train.labels, f_te, test.labels, args.seed)
    res["active_units"] = latent_health(method, test.images)["active_units"]
    if method.can("elbo") and method.bound_is_valid:
        res["bpd"] = elbo_metrics(method, test.images)["bpd"]
    if method.can("reconstruct"):
        res["recon_mse"], _ = recon_error(method, test.images[: args.recon_n], args.seed)
    if getattr(method, "diffusion", None) is not None and name.startswith("drl"):
        ts = np.linspace(0.05, 0.95, args.t_grid)
        res["per_t"] = per_t_curves(method, test.images[: args.recon_n], ts, args.seed)
    if getattr(method, "encode_takes_t", False):
        res.update(time_dependent_rows(method, data, args))
    cached.write_text(json.dumps(res, indent=1))
    return res


def time_dependent_rows(method, data, args) -> dict:
    """E(x0, t): the probe-vs-t curve (C = 1); full probes at the best validation t and at the
    fixed t."""
    train, test = data
    ts = np.round(np.linspace(0.05, 0.95, args.t_grid), 4)
    curve = {"t": ts.tolist(), "val_acc": [], "linear_acc": []}
    for t in ts:
        f_tr, f_te = codes(method, train.images, t), codes(method, test.images, t)
        val, acc = fixed_c_accuracies(f_tr, train.labels, f_te, test.labels, args.seed)
        curve["val_acc"].append(val)
        curve["linear_acc"].append(acc)
    best_t = float(ts[int(np.argmax(curve["val_acc"]))])
    out = {"probe_curve": curve, "best_t": best_t, "at_t": {}}
    for t in (best_t, args.fixed_t):
        f_tr, f_te = codes(method, train.images, t), codes(method, test.images, t)
        out["at_t"][str(t)] = probe_row(f_tr, train.labels, f_te, test.labels, args.seed)
    return out


def _trained_steps(run_dir: Path) -> int:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x]
    return max((r.get("step", 0) for r in rows), default=0)


def raw_pixel_row(data, seed: int, cache: Path) -> dict:
    """The probes on x in [0, 1] (784 features); cached in OUT (they do not depend on a run)."""
    if cache.is_file():
        return json.loads(cache.read_text())
    train, test = data
    f_tr = train.images.reshape(len(train), -1) / 255.0
    f_te = test.images.reshape(len(test), -1) / 255.0
    res = {"row": "raw pixels", "probe": probe_row(f_tr, train.labels, f_te, test.labels, seed)}
    cache.write_text(json.dumps(res, indent=1))
    return res


# ---------------------------------------------------------------------------- table


COLUMNS = ("linear", "kNN", "10-label", "100-label", "1000-label", "AU", "bits/dim", "recon MSE")


def _cells(label: str, probe: dict, res: dict) -> list[str]:
    def f(v, fmt="{:.3f}"):
        return "-" if v is None else fmt.format(v)

    few = probe.get("few_label_acc", {})
    return [
        label,
        f(probe.get("linear_acc")),
        f(probe.get("knn_acc")),
        f(few.get("10")),
        f(few.get("100")),
        f(few.get("1000")),
        f(res.get("active_units"), "{}"),
        f(res.get("bpd")),
        f(res.get("recon_mse"), "{:.4f}"),
    ]


def table(results: list[dict]) -> str:
    lines = []
    for res in results:
        if "at_t" in res:  # E(x0, t): one line per probed t
            for t, probe in res["at_t"].items():
                kind = "best val t" if float(t) == res["best_t"] else "fixed t"
                lines.append(_cells(f"{res['row']} @ t={float(t):g} ({kind})", probe, res))
        else:
            lines.append(_cells(res["row"], res["probe"], res))
    head = "| " + " | ".join(("row",) + COLUMNS) + " |"
    sep = "|---" + "|---:" * len(COLUMNS) + "|"
    return "\n".join([head, sep] + ["| " + " | ".join(c) + " |" for c in lines])


# ---------------------------------------------------------------------------- figures


def _line_plot(series: dict[str, tuple[list, list]], title: str, ylabel: str, log=False) -> bytes:
    from matplotlib.figure import Figure

    from diffrep.eval.plots import _png

    fig = Figure(figsize=(5.5, 3.6), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    for name, (x, y) in series.items():
        ax.plot(x, y, marker="o", ms=3, label=name)
    ax.set(title=title, xlabel="t (noise level; gamma(t) = -logSNR increases with t)")
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


@torch.no_grad()
def generation_figures(out: Path, data, args) -> list:
    """VDRL samples; drl reconstructions over seeds, inversion/regeneration, interpolation;
    the granularity pair's reconstructions over seeds."""
    from diffrep.eval.batching import model_input, to_uint8_np
    from diffrep.eval.plots import image_grid
    from diffrep.runs import load_run

    _, test = data
    figs = []
    x0 = model_input(test.images[:8], "cpu")
    seeds = range(4)

    def load(row):
        d = out / row
        return load_run(d, ema=True)[0] if (d / "representation.json").is_file() else None

    vdrl = load("drl-variational")
    if vdrl is not None:
        s = vdrl.sample(32, generator=torch.Generator().manual_seed(0), sampler="ddim")
        figs.append((image_grid(to_uint8_np(s), 8), "VDRL samples", "z ~ N(0, I), then DDIM"))
    for row in ("drl", "drl-simple", "drl-low-noise", "drl-time"):
        m = load(row)
        if m is None:
            continue
        rec = [m.reconstruct(x0, generator=torch.Generator().manual_seed(s)) for s in seeds]
        grid = to_uint8_np(torch.cat([x0, *rec]))
        cap = "top row: test images; below: the code fixed, 4 seeds of x_T (DDIM)"
        figs.append((image_grid(grid, 8), f"{row}: reconstructions over seeds", cap))
        if row != "drl":
            continue
        x_T = m.invert(x0)
        regen = m.reconstruct(x0, x_T=x_T)
        swap = m.reconstruct(torch.roll(x0, 1, 0), x_T=x_T)  # x_T of image i, code of i - 1
        grid = to_uint8_np(torch.cat([x0, regen, swap]))
        cap = "rows: x0; DDIM(x_T = inversion of x0, own code); same x_T, the previous image's code"
        figs.append((image_grid(grid, 8), "drl: DDIM inversion and regeneration", cap))
        za, zb = m.encode(x0[:4]), m.encode(x0[4:])
        lam = torch.linspace(0, 1, 8)
        xa = x_T[:4]  # the noise of the first image of each pair, fixed along the row
        rows = []
        for i in range(4):
            z = (1 - lam[:, None]) * za[i] + lam[:, None] * zb[i]  # [8, Z]
            den_x = xa[i : i + 1].expand(8, -1, -1, -1)
            rows.append(m.sample(8, cond=z, x_T=den_x.contiguous(), sampler="ddim"))
        cap = "each row: the code moves linearly from image i to image i + 4, x_T fixed"
        figs.append((image_grid(to_uint8_np(torch.cat(rows)), 8), "drl: interpolation", cap))
    return figs


# ---------------------------------------------------------------------------- main


def load_data():
    from diffrep.data import load_dataset
    from diffrep.errors import UserError

    try:
        return load_dataset("mnist", "test[:8000]"), load_dataset("mnist", "test[8000:]")
    except UserError as e:
        print(f"skipped: MNIST is not available ({e})")
        return None


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.steps < 1 or (args.minutes is not None and args.minutes <= 0):
        print("representations: --steps must be >= 1 and --minutes > 0; fix: e.g. --steps 3000")
        return 2
    torch.set_num_threads(args.threads)
    data = load_data()
    if data is None:
        print(json.dumps({"benchmark": "representations", "skipped": "mnist not found"}))
        return 0
    from diffrep.data import to_model_input
    from diffrep.report import write_page

    t_start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.minutes is None:
        steps, per_step = args.steps, None
    else:
        x = to_model_input(torch.from_numpy(data[0].images[: 6 * args.batch_size]))
        steps, per_step = steps_for_minutes(args.minutes, x, args)
        print(f"budget {args.minutes:g} min/method at {per_step:.2f} s/step (drl) -> {steps} steps")
    rows = [] if args.only == "raw" else selected_rows(args)
    results = []
    failed = {}
    for name in rows:
        try:  # one failing row (e.g. another helper's method) must not cost the others
            run_dir = train_row(name, steps, args)
            t0 = time.perf_counter()
            res = evaluate_row(name, run_dir, data, args)
        except Exception as e:  # noqa: BLE001
            failed[name] = f"{type(e).__name__}: {e}"
            print(f"{name}: FAILED ({failed[name]})", flush=True)
            continue
        print(f"{name}: evaluated in {time.perf_counter() - t0:.0f}s", flush=True)
        results.append(res)
    if args.only == "rows":
        print(
            json.dumps({"benchmark": "representations", "rows_done": [r["row"] for r in results]})
        )
        return 0
    results.append(raw_pixel_row(data, args.seed, out / "raw-pixels.json"))
    if args.only == "raw":
        return 0

    md = table(results)
    header = (
        f"MNIST: trained on test[:8000], probes fitted on its codes, scored on test[8000:]; "
        f"{steps} steps x batch {args.batch_size} per method, {args.threads} threads; "
        f"code size {args.code_dim}"
    )
    print(f"\n{header}\n\n{md}\n")
    by_row = {r["row"]: r for r in results}
    lines = []
    for a, b in (("drl", "drl-low-noise"),):  # drl: --weighting, high-noise by default
        if a in by_row and b in by_row:
            for r in (a, b):
                lines.append(
                    f"granularity {r} ({row_spec(r, args)[1]['weighting']}): linear probe "
                    f"{by_row[r]['probe']['linear_acc']:.3f}, "
                    f"recon MSE {by_row[r].get('recon_mse', math.nan):.4f}"
                )
    if "drl-time" in by_row:
        c = by_row["drl-time"]["probe_curve"]
        pairs = ", ".join(f"{t:g}: {a:.3f}" for t, a in zip(c["t"], c["linear_acc"]))
        lines.append(f"E(x0, t) linear probe (C = 1) vs t: {pairs}")
    if "drl" in by_row:
        p = by_row["drl"]["probe"]
        lines.append(
            f"drl vs targets: linear {p['linear_acc']:.3f} (>= 0.975; goal 0.985), "
            f"100-label {p['few_label_acc']['100']:.3f} (>= 0.90; goal 0.92)"
        )
    print("\n".join(lines))

    sections = [("Table", [header + "\n\n" + md + "\n\n" + "\n".join(lines)])]
    curves = []
    if "drl-time" in by_row:
        c = by_row["drl-time"]["probe_curve"]
        curves.append(
            (
                _line_plot(
                    {"linear probe, C = 1 (test)": (c["t"], c["linear_acc"]),
                     "validation accuracy (C = 1)": (c["t"], c["val_acc"])},
                    "E(x0, t): linear probe against t", "accuracy",
                ),
                "E(x0, t): which noise levels hold the class", "",
            )
        )  # fmt: skip
        pt = by_row["drl-time"]["per_t"]
        curves.append(
            (
                _line_plot({"x0 error given E(x0, t)": (pt["t"], pt["x0_mse"])},
                           "E(x0, t): one-step reconstruction error", "MSE [0,1] units", log=True),
                "E(x0, t): reconstruction error against t",
                "||x0 - x0_hat(x_t, t, E(x0, t))||^2 per pixel",
            )
        )  # fmt: skip
    gap = {}  # row -> (t, increase of the eps error when codes are shuffled)
    for r in ("drl", "drl-simple", "drl-low-noise", "drl-variational"):
        if r in by_row:
            pt = by_row[r]["per_t"]
            gap[r] = (pt["t"], [s - c for s, c in zip(pt["mse_shuffled"], pt["mse_code"])])
    if gap:
        curves.append(
            (
                _line_plot(gap, "what the code is worth at each t", "eps MSE increase"),
                "Granularity: shuffle test per t",
                "||eps - eps_hat||^2 per pixel with another image's code minus with its own",
            )
        )
    sections.append(("Granularity and E(x0, t)", curves))
    try:
        sections.append(("Generation", generation_figures(out, data, args)))
    except Exception as e:  # noqa: BLE001
        failed["generation figures"] = f"{type(e).__name__}: {e}"
        print(f"generation figures FAILED ({failed['generation figures']})", flush=True)
    page = write_page(out / "report.html", "diffrep: representations on MNIST (seed 001)", sections)
    print(f"wrote {page}")
    summary = {
        "benchmark": "representations",
        "steps": steps,
        "s_per_step_drl": per_step,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "rows": {
            r["row"]: {
                "linear": r["probe"]["linear_acc"],
                "knn": r["probe"]["knn_acc"],
                "few_label": r["probe"]["few_label_acc"],
                **{k: r[k] for k in ("active_units", "bpd", "recon_mse", "best_t") if k in r},
            }
            for r in results
        },
        "failed": failed,
        "total_s": round(time.perf_counter() - t_start, 1),
        "report": str(page),
    }
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
