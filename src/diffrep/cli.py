"""The `diffrep` command line. Imports nothing heavy until a command runs, so --help is instant.

Every user mistake surfaces as `UserError`: one message on stderr, exit code 2, no traceback.
A run stopped by Ctrl-C / SIGTERM saves its checkpoint and exits 130 (EXIT_INTERRUPTED).

On a shared machine, OpenMP worker threads that spin while waiting are descheduled behind other
jobs and make a run many times slower (benchmarks/bench_threads.py), so `main` asks for passive
waiting before torch loads (unless OMP_WAIT_POLICY is set) and runs on DEFAULT_THREADS threads
unless `--threads` says otherwise. It also keeps freed memory for the next tensor
(`diffrep.allocator`), which spares a page fault per 4 KiB of every large activation.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from diffrep import __version__
from diffrep.allocator import keep_freed_memory
from diffrep.errors import Interrupted, UserError

EPILOG = """examples:
  diffrep train configs/vae-digits.yaml --out runs/vae
  diffrep eval runs/vae && diffrep report runs/vae
  diffrep sample runs/vae -n 64                  # -> runs/vae/samples.png
  diffrep compare runs/vae runs/vdm --csv table.csv
  diffrep fit-prior runs/vae --prior flow        # two-stage prior -> runs/vae-flow
  diffrep data list

exit status: 0 done, 2 a user error (one message, no traceback), 130 interrupted (Ctrl-C or
SIGTERM; a training run saved its checkpoint: continue it with --resume).
"""

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's convention; also used for SIGTERM
# Intra-op threads when --threads is not given (measured in benchmarks/bench_threads.py: the small
# CPU models diffrep's configs train are as fast on 1 thread as on 2 when the machine is idle,
# and several times faster when other jobs keep the cores busy).
DEFAULT_THREADS = 1


def _threads_parser() -> argparse.ArgumentParser:
    tp = argparse.ArgumentParser(add_help=False)
    tp.add_argument(
        "--threads",
        type=int,
        default=None,
        help=f"CPU threads for torch (default {DEFAULT_THREADS}; more helps larger models on an "
        "idle machine)",
    )
    return tp


def _parser() -> argparse.ArgumentParser:
    from diffrep.report import LAYOUTS  # stdlib only: --help stays instant

    th = [_threads_parser()]
    p = argparse.ArgumentParser(
        prog="diffrep",
        description="Representation learning with diffusion models.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"diffrep {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser("train", help="train a method from a YAML config", parents=th)
    t.add_argument("config", help="YAML config (see configs/); only what differs from defaults")
    t.add_argument("--out", help="run directory (default: runs/<config name>)")
    t.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.steps=500 (repeatable)",
    )
    t.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    t.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run (weights, metrics, eval) already in --out",
    )
    t.add_argument("--device", help="cpu, cuda, cuda:1, ... (overrides train.device)")

    e = sub.add_parser("eval", help="evaluate a run; writes RUN_DIR/eval.json", parents=th)
    e.add_argument("run_dir")
    e.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override an eval option, e.g. --set eval.iw_samples=128",
    )
    e.add_argument("--device", default=None)

    s = sub.add_parser("sample", help="draw samples from a trained run into a PNG grid", parents=th)
    s.add_argument("run_dir")
    s.add_argument("-n", type=int, default=64, help="number of samples (default 64)")
    s.add_argument("--out", help="PNG file (default RUN_DIR/samples.png)")
    s.add_argument("--sampler", help="diffusion sampler: ancestral, ddim, ode (where it applies)")
    s.add_argument("--steps", type=int, help="number of sampling steps (diffusion methods)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default=None)

    r = sub.add_parser("report", help="write RUN_DIR/report.html (self-contained)")
    r.add_argument("run_dir")

    c = sub.add_parser("compare", help="compare evaluated runs side by side")
    c.add_argument("run_dirs", nargs="+", help="run directories (other paths are skipped)")
    c.add_argument("--csv", help="also write the table as CSV to this file")
    c.add_argument("--format", choices=["markdown", "json"], default="markdown")
    c.add_argument("--plot", help="also write a bar chart of the headline metrics (PNG)")
    c.add_argument("--all", action="store_true", help="every metric, not only the headline ones")
    c.add_argument("--html", help="also write a comparison page with each run's samples")
    c.add_argument(
        "--layout",
        default="runs",
        help="; ".join(
            f"{name}: {LAYOUTS.get(name).__doc__.strip()}" for name in LAYOUTS.names()[::-1]
        ),
    )

    d = sub.add_parser("data", help="list, describe or download datasets")
    dsub = d.add_subparsers(dest="data_command", metavar="ACTION")
    dsub.add_parser("list", help="the registered datasets")
    di = dsub.add_parser("info", help="shape, sizes and location of one dataset")
    di.add_argument("name")
    di.add_argument("--root")
    df = dsub.add_parser("fetch", help="download a dataset (with sha256 checks)")
    df.add_argument("name")
    df.add_argument("--root", help="where to put it (default $DIFFREP_DATA or ./data)")

    fp = sub.add_parser(
        "fit-prior",
        help="two-stage prior: fit a prior to a trained method's codes (a new run)",
        parents=th,
    )
    fp.add_argument("run_dir", help="a trained run of a method that encodes (vae, dae, ...)")
    fp.add_argument("--prior", required=True, help="flow, diffusion or gaussian")
    fp.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a constructor argument of the prior, e.g. --set prior.T=200 (repeatable)",
    )
    fp.add_argument("--steps", type=int, default=2000, help="optimizer steps (default 2000)")
    fp.add_argument("--lr", type=float, default=1e-3)
    fp.add_argument("--batch-size", type=int, default=256)
    fp.add_argument("--seed", type=int, default=0)
    fp.add_argument("--out", help="new run directory (default: RUN_DIR-<prior>)")
    fp.add_argument("--device", default=None)

    q = sub.add_parser(
        "demo", help="the quickstart: three VAE priors on the embedded digits", parents=th
    )
    q.add_argument("--out", default="runs/demo")
    q.add_argument("--steps", type=int, default=1500, help="training steps per model")
    q.add_argument("--device", default=None)
    q.add_argument(
        "--overwrite", action="store_true", help="retrain every model, replacing what OUT holds"
    )

    f = sub.add_parser("fidnet", help="the domain feature network behind domain FID/KID")
    fsub = f.add_subparsers(dest="fidnet_command", metavar="ACTION")
    ft = fsub.add_parser("train", help="train (or reuse the cached) feature network", parents=th)
    ft.add_argument("dataset")
    ft.add_argument("--split", default="train")
    ft.add_argument("--root")
    ft.add_argument("--out", help="weights file (default: the cache)")
    return p


# ---------------------------------------------------------------------------- commands


def _device(name: str | None) -> str:
    import torch

    if name in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    from diffrep.train import resolve_device

    try:  # a device that is not there (cuda without CUDA, ...) is a user error, up front
        resolve_device(name)
    except (UserError, RuntimeError) as e:
        raise UserError(f"--device {name}: {str(e).split('; fix')[0]}; fix: --device cpu") from None
    return name


def resume_command(config: str, out: Path, overrides: list[str]) -> str:
    """The command that continues an interrupted run. With --set overrides, the run's own
    config.yaml (it holds them; the original file without them would not match the run)."""
    source = Path(out) / "config.yaml" if overrides else config
    return f"diffrep train {source} --out {out} --resume"


def cmd_train(args) -> int:
    from diffrep.config import load_config
    from diffrep.runs import train_from_config

    overrides = list(args.set) + ([f"train.device={args.device}"] if args.device else [])
    cfg = load_config(args.config, overrides)
    out = Path(args.out or Path("runs") / Path(args.config).stem)
    summary = train_from_config(
        cfg, out, resume=args.resume, overwrite=args.overwrite, log=_say
    )  # fmt: skip
    if int(os.environ.get("RANK", "0")) != 0 or not summary:
        return EXIT_INTERRUPTED if summary.get("interrupted") else 0
    if summary.get("interrupted"):
        _say(
            f"interrupted at step {summary['step']} of {cfg.train.steps}; continue with: "
            + resume_command(args.config, out, args.set)
        )
        return EXIT_INTERRUPTED
    _say("done: " + ", ".join(f"{k}={_fmt(v)}" for k, v in summary.items()))
    _say(f"next: diffrep eval {out} && diffrep report {out}")
    return 0


def cmd_fit_prior(args) -> int:
    import yaml

    from diffrep.runs import check_writable, fit_prior_run, read_run_info

    read_run_info(args.run_dir)  # a clear error for a wrong directory
    prior_args = {}
    for item in args.set:  # section.key like `train --set method.T=200`: here the section is prior
        key, eq, text = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not eq or section != "prior" or not dot or not name:
            raise UserError(
                f"--set {item!r}: expected prior.KEY=VALUE (the prior's constructor argument), "
                "e.g. --set prior.T=200"
            )
        try:
            prior_args[name] = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            prior_args[name] = text
    if args.steps < 1 or args.batch_size < 1 or not args.lr > 0:
        raise UserError("fit-prior: --steps and --batch-size must be >= 1 and --lr > 0")
    out = Path(args.out or f"{str(args.run_dir).rstrip('/')}-{args.prior}")
    check_writable(out, what="--out")
    fit_prior_run(
        args.run_dir, out, args.prior, prior_args, steps=args.steps, lr=args.lr,
        batch_size=args.batch_size, seed=args.seed, device=_device(args.device), log=_say,
    )  # fmt: skip
    _say(f"next: diffrep eval {out} && diffrep compare {args.run_dir} {out}")
    return 0


def cmd_eval(args) -> int:
    import json

    from diffrep.config import load_config
    from diffrep.runs import check_writable, read_run_info, run_eval

    read_run_info(args.run_dir)  # a clear error for a wrong directory
    for item in args.set:
        if not item.startswith("eval."):
            raise UserError(f"--set {item!r}: diffrep eval only takes eval.* options")
    cfg = load_config(Path(args.run_dir) / "config.yaml", list(args.set)).eval
    check_writable(args.run_dir, what="run directory")  # before minutes of evaluation
    result = run_eval(args.run_dir, cfg=cfg, device=_device(args.device))
    print(json.dumps(result, indent=2, default=_fmt))
    _say(f"wrote {Path(args.run_dir) / 'eval.json'}")
    return 0


def cmd_sample(args) -> int:
    import math

    import torch

    from diffrep import atomic
    from diffrep.data import to_uint8
    from diffrep.eval.plots import image_grid
    from diffrep.runs import check_output_file, load_run

    if args.n < 1:
        raise UserError("-n must be at least 1")
    # beside the run by default: a grid from one run should not land in whatever folder the
    # command happened to be typed in (or overwrite another run's there)
    out = check_output_file(args.out or Path(args.run_dir) / "samples.png", (".png",), what="--out")
    device = _device(args.device)
    method, cfg = load_run(args.run_dir, device=device)
    if not method.can("sample"):
        raise UserError(f"method {type(method).__name__} cannot sample")
    kw = {k: v for k, v in (("sampler", args.sampler), ("steps", args.steps)) if v is not None}
    unused = sorted(set(kw) - method.sample_options())
    if unused:
        raise UserError(
            f"--{' and --'.join(unused)}: a {cfg.method_name!r} run's sampling takes no such "
            f"option (it takes: {', '.join(sorted(method.sample_options())) or 'none'}); fix: "
            f"drop --{' and --'.join(unused)}"
        )
    gen = torch.Generator(device=device).manual_seed(args.seed)
    x = method.sample(args.n, generator=gen, **kw)
    images = to_uint8(x.cpu()).numpy()
    atomic.write_bytes(out, image_grid(images, nrow=max(1, math.isqrt(args.n - 1) + 1)))
    _say(f"wrote {args.n} samples to {out}")
    return 0


def cmd_report(args) -> int:
    from diffrep.report import write_report
    from diffrep.runs import check_writable, read_run_info

    read_run_info(args.run_dir)
    check_writable(args.run_dir, what="run directory")
    path = write_report(args.run_dir)
    _say(f"wrote {path}")
    return 0


def cmd_compare(args) -> int:
    from diffrep import atomic
    from diffrep.report import LAYOUTS, split_run_dirs
    from diffrep.runs import check_output_file

    for path, suffixes, what in (
        (args.csv, (".csv", ".txt"), "--csv"),
        (args.plot, (".png",), "--plot"),
        (args.html, (".html", ".htm"), "--html"),
    ):
        if path:
            check_output_file(path, suffixes, what=what)
    layout = LAYOUTS.build(args.layout)
    run_dirs, skipped = split_run_dirs(args.run_dirs)
    for path, why in skipped:
        _say(f"note: skipped {path}: {why}")
    if not run_dirs:
        raise UserError("no run directories among the paths; pass `diffrep train --out` folders")
    print(layout.text(run_dirs, args.format, args.csv, args.plot, headline_only=not args.all))
    if args.html:
        atomic.write_text(args.html, layout.html(run_dirs))
        _say(f"wrote {args.html}")
    return 0


def cmd_data(args) -> int:
    from diffrep import data

    if args.data_command == "list":
        print(data.describe_datasets())
    elif args.data_command == "info":
        from diffrep.data.describe import dataset_report

        text, missing = dataset_report(args.name, root=args.root)
        print(text)
        if missing:
            raise UserError(
                f"{args.name}: split(s) {', '.join(missing)} not found (see above); fix: "
                f"`diffrep data fetch {args.name}` or point --root at the files"
            )
    elif args.data_command == "fetch":
        for p in data.fetch(args.name, root=args.root):
            print(p)
    else:
        raise UserError("diffrep data needs an action: list, info NAME or fetch NAME")
    return 0


def cmd_demo(args) -> int:
    from diffrep.demo import run_demo
    from diffrep.runs import check_writable

    if args.steps < 1:
        raise UserError("--steps must be at least 1")
    check_writable(args.out, what="--out")
    if args.device:
        _device(args.device)
    run_demo(args.out, steps=args.steps, device=args.device, overwrite=args.overwrite)
    return 0


def cmd_fidnet(args) -> int:
    from diffrep.eval.fid import train_fidnet

    if args.fidnet_command != "train":
        raise UserError("diffrep fidnet needs an action: train DATASET")
    path = train_fidnet(args.dataset, split=args.split, root=args.root, out=args.out)
    print(path)
    return 0


COMMANDS = {
    "train": cmd_train,
    "fit-prior": cmd_fit_prior,
    "eval": cmd_eval,
    "sample": cmd_sample,
    "report": cmd_report,
    "compare": cmd_compare,
    "data": cmd_data,
    "fidnet": cmd_fidnet,
    "demo": cmd_demo,
}


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _set_threads(n: int | None) -> None:
    import torch

    if n is not None and n < 1:
        raise UserError(f"--threads {n}: need at least 1")
    torch.set_num_threads(n or DEFAULT_THREADS)


def main(argv: list[str] | None = None) -> int:
    # Before anything imports torch (libgomp reads it once): idle OpenMP threads sleep instead
    # of spinning, which on a busy machine otherwise costs several times the run time.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USER_ERROR
    try:
        keep_freed_memory()  # large tensors reuse freed heap blocks: no page faults per call
        if hasattr(args, "threads"):
            _set_threads(args.threads)
        return COMMANDS[args.command](args)
    except UserError as e:
        print(f"diffrep {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except (KeyboardInterrupt, Interrupted) as e:
        print(f"diffrep {args.command}: interrupted{f' ({e})' if str(e) else ''}", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
