"""Run directories: what `diffrep train` writes and every other command reads.

RUN_DIR/config.yaml   the resolved config
RUN_DIR/run.json      method name and arguments, data shape, dataset, diffrep version, and the
                      frozen bases the method uses ("dependencies": spec, path, sha256; see
                      `diffrep.frozen`), checked whenever the run is rebuilt
RUN_DIR/checkpoint/   weights (safetensors), EMA weights, trainer state
RUN_DIR/eval.json     `run_eval` (diffrep eval)

The commands' bodies that work on a run directory live here: `train_from_config`, `load_run`,
`run_eval`, `fit_prior_run`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from diffrep.atomic import write_json, write_text
from diffrep.errors import UserError


def write_run_info(
    run_dir: str | Path,
    cfg,
    data_shape: tuple[int, int, int],
    *,
    param_groups: list[dict] | None = None,
    dependencies: list[dict[str, Any]] | None = None,
) -> None:
    """Write config.yaml and run.json; `dependencies`: `diffrep.frozen.dependencies(method)`."""
    from diffrep import __version__
    from diffrep.config import dump_config

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, run_dir / "config.yaml")
    info = {
        "method": cfg.method_name,
        "method_args": cfg.method_args,
        "data_shape": list(data_shape),
        "dataset": cfg.data.name,
        "version": __version__,
    }
    if param_groups is not None:  # [{"name", "n_params", "lr_scale"}] (diffrep.train)
        info["param_groups"] = param_groups
    if dependencies:
        info["dependencies"] = dependencies
    write_json(run_dir / "run.json", info)


def read_run_info(run_dir: str | Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(
            f"run directory {str(run_dir)!r} does not exist; "
            "train one with `diffrep train CONFIG --out DIR`"
        )
    p = run_dir / "run.json"
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise UserError(
            f"{str(run_dir)!r} is not a diffrep run directory (no run.json); "
            "pass the --out directory of `diffrep train`"
        ) from None
    except json.JSONDecodeError as e:
        raise UserError(
            f"{p} is corrupt ({e}); re-run `diffrep train` into a new directory"
        ) from None


def load_run(run_dir: str | Path, ema: bool = True, device: str = "cpu"):
    """Rebuild the trained method of a run directory: returns (method, config).

    Frozen bases the run depends on are loaded from their recorded paths and must still have
    their recorded sha256 (else a UserError naming the base).
    """
    from diffrep.checkpoint import load_weights
    from diffrep.config import load_config
    from diffrep.frozen import expect_dependencies
    from diffrep.methods import build_method

    run_dir = Path(run_dir)
    info = read_run_info(run_dir)
    cfg = load_config(run_dir / "config.yaml")
    with expect_dependencies(info.get("dependencies"), str(run_dir)):
        method = build_method(info["method"], tuple(info["data_shape"]), **cfg.method_args)
    load_weights(run_dir / "checkpoint", method, ema=ema)
    method.to(device).eval()
    return method, cfg


def run_eval(run_dir: str | Path, cfg=None, device: str = "cpu", ema: bool = True) -> dict:
    """Evaluate the run in `run_dir` (its config's eval section unless `cfg`), write eval.json."""
    from diffrep.eval.suite import evaluate, merge_eval, read_eval, write_eval

    method, config = load_run(run_dir, ema=ema, device=device)
    cfg = cfg or config.eval
    d = config.data
    train = d.load(d.train_split)
    test = d.load(d.eval_split)
    result = evaluate(method, train, test, cfg, run_dir=run_dir)
    errors = result.pop("errors", {})
    old = read_eval(run_dir)  # merged into, never replaced: a failed family keeps its numbers
    merged = merge_eval(old, result, errors, ran=cfg.metrics)
    write_eval(run_dir, merged)
    if errors:
        msgs = "; ".join(f"{k}: {v}" for k, v in errors.items())
        kept = " (earlier results kept)" if old else ""
        raise UserError(f"eval.json written without new {', '.join(errors)}{kept} ({msgs})")
    return merged


# What `diffrep train` writes into a run directory (and `--overwrite` removes first).
RUN_FILES = ("config.yaml", "run.json", "metrics.jsonl", "eval.json", "report.html")
RUN_DIRS = ("checkpoint", "checkpoint.new", "checkpoint.old", "figures", "tb")


def check_writable(path: str | Path, what: str = "output") -> Path:
    """Refuse (UserError) before any work when `path` cannot be written: a file where a
    directory is needed, or no permission. `path` is a directory to create or fill; its
    missing parents are fine when the nearest existing one is writable."""
    import tempfile

    path = Path(path)
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise UserError(
            f"{what} {str(path)!r}: {str(probe)!r} is a file, not a directory; fix: another path"
        )
    try:  # a real probe: permissions, read-only mounts, quotas (os.access misses some)
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise UserError(
            f"{what} {str(path)!r} is not writable ({e.strerror or e}: {str(probe)!r}); "
            "fix: a directory you can write to"
        ) from None
    return path


def check_output_file(path: str | Path, suffixes: tuple[str, ...], what: str) -> Path:
    """An output file: its suffix names a format we write, and its directory is writable."""
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise UserError(
            f"{what} {str(path)!r}: diffrep writes {' or '.join(s[1:].upper() for s in suffixes)}"
            f" here; fix: name the file *{suffixes[0]}"
        )
    if path.is_dir():
        raise UserError(f"{what} {str(path)!r} is a directory; fix: a file name")
    check_writable(path.parent, what=f"{what} directory")
    return path


def holds_weights(run_dir: str | Path) -> bool:
    """True when run_dir has checkpoint files (complete or not): never replaced silently."""
    run_dir = Path(run_dir)
    return any(
        f.is_file() for d in ("checkpoint", "checkpoint.new", "checkpoint.old")
        for f in (run_dir / d).glob("*")
    )  # fmt: skip


def _check_resume(out: Path, cfg, data, method) -> None:
    """A resume continues the run in `out` as configured there: refuse (writing nothing) when
    the method, its arguments, the dataset or the data differ from what the checkpoint holds."""
    from diffrep.checkpoint import has_checkpoint, load_checkpoint

    if not has_checkpoint(out / "checkpoint"):
        if holds_weights(out):
            raise UserError(
                f"--resume: {out}/checkpoint holds weights but no complete checkpoint "
                "(manifest.json missing or the save was cut short), so it cannot be continued; "
                "fix: train into a new --out, or pass --overwrite (without --resume) to replace it"
            )
        raise UserError(f"--resume: {out} has no checkpoint/ to continue from; drop --resume")
    old = read_run_info(out)
    now = {
        "method": cfg.method_name,
        "data_shape": list(data.shape),
        "dataset": cfg.data.name,
        **{f"method.{k}": v for k, v in _plain(cfg.method_args).items()},
    }
    was = {
        "method": old.get("method"),
        "data_shape": list(old.get("data_shape", [])),
        "dataset": old.get("dataset"),
        **{f"method.{k}": v for k, v in _plain(old.get("method_args", {})).items()},
    }
    changed = [k for k in sorted(set(now) | set(was)) if now.get(k) != was.get(k)]
    if changed:
        diffs = ", ".join(f"{k}: {was.get(k)!r} in the run, {now.get(k)!r} now" for k in changed)
        raise UserError(
            f"--resume: {out} was trained with different settings ({diffs}); nothing was "
            "changed; fix: resume with the run's own config.yaml, or train into a new --out"
        )
    extra = load_checkpoint(out / "checkpoint", method)["extra"]  # verifies files and shapes
    n = int(extra.get("data", {}).get("n", len(data)))
    if n != len(data):
        raise UserError(
            f"--resume: {out} was trained on {n} images but the data has {len(data)}; nothing "
            "was changed; fix: resume with the run's own data config or train into a new --out"
        )


def _check_fresh(out: Path, overwrite: bool) -> None:
    """A fresh run never replaces weights, nor writes into a directory that is not a run,
    without --overwrite."""
    from diffrep.checkpoint import has_checkpoint

    if overwrite:
        return
    if has_checkpoint(out / "checkpoint"):
        raise UserError(
            f"{out} already holds a trained run; fix: --resume to continue it, a new --out, "
            "or --overwrite to replace it"
        )
    if holds_weights(out):
        raise UserError(
            f"{out}/checkpoint holds weights (an incomplete checkpoint); fix: a new --out, or "
            "--overwrite to replace them"
        )
    if out.is_dir() and not (out / "run.json").is_file():
        others = sorted(p.name for p in out.iterdir())
        if others:
            shown = ", ".join(others[:4]) + (", ..." if len(others) > 4 else "")
            raise UserError(
                f"{out} exists and is not a diffrep run directory (it holds {shown}); fix: a new "
                "or empty --out, or --overwrite to write the run's files into it anyway"
            )


def _clear_run(out: Path) -> None:
    import shutil

    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    for name in RUN_DIRS:
        shutil.rmtree(out / name, ignore_errors=True)


def _plain(obj: Any) -> Any:
    """Tuples -> lists, recursively (run.json's JSON view of method arguments)."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def train_from_config(
    cfg, out: str | Path, resume: bool = False, log=print, overwrite: bool = False, **train_kwargs
) -> dict:
    """Load the data, build the method, write the run info and train: `diffrep train`'s body.

    Every check (writable directory, nothing replaced without `overwrite`, a resume that fits
    the checkpoint) comes before anything is written. `overwrite` removes an earlier run's
    files and weights first. `train_kwargs` go to `diffrep.train.train` (progress, callback,
    eval_hook). The returned summary's "interrupted" is True when a signal stopped training.
    """
    from diffrep import distributed as dist_utils
    from diffrep.frozen import dependencies, expect_dependencies
    from diffrep.methods import build_method
    from diffrep.train import (
        check_data,
        describe_param_groups,
        param_groups,
        resolve_device,
        seed_everything,
        train,
    )

    out = Path(out)
    if resume and overwrite:
        raise UserError("--resume continues a run and --overwrite replaces it; pass one of them")
    check_writable(out, what="run directory")
    if not resume:
        _check_fresh(out, overwrite)
    resolve_device(cfg.train.device)  # a missing GPU is refused before anything is written
    d = cfg.data
    data = d.load(d.train_split)
    seed_everything(cfg.train.seed)  # reproducible initial weights
    # a resumed run continues on the very bases it started with
    recorded = read_run_info(out).get("dependencies") if resume else None
    with expect_dependencies(recorded, str(out)):
        method = build_method(cfg.method_name, data.shape, **cfg.method_args)
    if getattr(method, "closed_form", False):  # fitted, not trained (ideal, svd)
        if resume:
            raise UserError(
                f"{cfg.method_name} is fitted in closed form, there is nothing to resume; "
                "fix: drop --resume (and pass --overwrite to fit it again)"
            )
        if overwrite:
            _clear_run(out)
        return fit_closed_form(method, cfg, data, out, log)
    if resume:
        _check_resume(out, cfg, data, method)  # loads the weights train() will load anyway
    check_data(method, data, cfg.train, dist_utils.detect()[2])  # train()'s checks, up front
    if int(os.environ.get("RANK", "0")) == 0:
        if overwrite:
            _clear_run(out)
        groups = describe_param_groups(param_groups(method))
        write_run_info(out, cfg, data.shape, param_groups=groups, dependencies=dependencies(method))
        n_params = sum(p.numel() for p in method.parameters())
        log(
            f"training {cfg.method_name} ({n_params / 1e6:.2f}M parameters) on {d.name} "
            f"{d.train_split} ({len(data)} images {tuple(data.shape)}) -> {out}"
        )
        n_trained = sum(g["n_params"] for g in groups)
        if len(groups) > 1 or n_trained != n_params:
            log(
                "parameter groups: "
                + ", ".join(f"{g['name']} {g['n_params']} x lr {g['lr_scale']:g}" for g in groups)
                + f"; frozen: {n_params - n_trained}"
            )
    return train(method, data, out, cfg.train, resume=resume, **train_kwargs)


def fit_closed_form(method, cfg, data, out: Path, log=print) -> dict:
    """`diffrep train` for a method fitted in closed form (`closed_form = True`, `fit(x0)`: the
    ideal DAE stores the images, the subspace DAE takes an SVD): no gradient steps, the same run
    directory (config.yaml, run.json, checkpoint/ at step 0, metrics.jsonl with the fitted
    model's loss on the training split)."""
    import time

    import torch

    from diffrep.checkpoint import save_checkpoint
    from diffrep.data import to_model_input

    d = cfg.data
    write_run_info(out, cfg, data.shape)
    log(f"fitting {cfg.method_name} in closed form on {d.name} {d.train_split} "
        f"({len(data)} images {tuple(data.shape)}) -> {out}")  # fmt: skip
    t0 = time.perf_counter()
    x0 = to_model_input(data.images)
    method.fit(x0)
    method.eval()
    with torch.no_grad():  # the fitted model's cost on (at most 1000) training images
        g = torch.Generator().manual_seed(cfg.train.seed)
        idx = torch.randperm(len(x0), generator=g)[:1000]
        loss = float(method.loss({"x0": x0[idx], "y": torch.zeros(len(idx))})["loss"].mean())
    seconds = time.perf_counter() - t0
    save_checkpoint(out / "checkpoint", method, None, None, 0, {"closed_form": True})
    write_text(out / "metrics.jsonl", json.dumps({"step": 0, "loss": loss}) + "\n")
    return {"fitted_images": len(data), "loss": loss, "seconds": round(seconds, 2)}


def fit_prior_run(
    run_dir: str | Path,
    out: str | Path,
    prior: str,
    prior_args: dict | None = None,
    *,
    steps: int = 2000,
    lr: float = 1e-3,
    batch_size: int = 256,
    seed: int = 0,
    device: str = "cpu",
    log=print,
) -> Path:
    """Two-stage prior: fit `prior` to the codes of the method in `run_dir` (its EMA weights,
    on its training split) and write the result as a new run in `out`.

    The codes are the aggregate posterior q(z|x_i) where the method has one, else encode(x0).
    A method with a latent prior slot (vae, pdae) gets the new one swapped in; any other encoder
    becomes the base of a `latent_prior` method (encode unchanged; samples decode prior draws
    where the base can decode). `diffrep eval/sample/report OUT` then use the new prior.
    `out` gets config.yaml (the new method section), run.json, a checkpoint and
    metrics.jsonl with the prior's fitting loss.
    """
    import torch

    from diffrep.checkpoint import checkpoint_step, has_checkpoint, save_checkpoint
    from diffrep.config import config_from_dict
    from diffrep.data import to_model_input
    from diffrep.methods import build_method
    from diffrep.priors import PRIORS, build_prior
    from diffrep.priors.fit import aggregate_posterior, encode_all, fit_prior, swap_prior
    from diffrep.validate import check_kwargs

    run_dir, out = Path(run_dir), Path(out)
    if has_checkpoint(out / "checkpoint"):
        raise UserError(f"{out} already holds a trained run; fix: pass a new --out")
    if prior not in PRIORS:
        raise UserError(f"unknown prior {prior!r}; choose one of: {', '.join(PRIORS.names())}")
    prior_args = dict(prior_args or {})
    check_kwargs(PRIORS.get(prior), prior_args, where=f"prior {prior!r}")
    trained, cfg = load_run(run_dir, ema=True, device=device)
    if not trained.can("encode"):
        raise UserError(
            f"{run_dir} holds a {cfg.method_name!r} run, which does not encode; fit-prior fits a "
            "prior to a method's codes; fix: point it at a run of a method that encodes (vae, dae)"
        )
    d = cfg.data
    data = d.load(d.train_split)
    x0 = to_model_input(data.images)
    # q(z|x_i) where the method has a posterior (fresh z every step), else the codes themselves
    posterior = trained.can("posterior")
    z_data = aggregate_posterior(trained, x0) if posterior else encode_all(trained, x0)
    n, z_dim = (z_data[0] if posterior else z_data).shape
    log(
        f"fitting a {prior} prior to the {'aggregate posterior' if posterior else 'codes'} of "
        f"{n} {d.name} {d.train_split} images ({z_dim}-D), {steps} steps"
    )
    torch.manual_seed(seed)
    new_prior = build_prior(prior, z_dim, **prior_args).to(device)
    gen = torch.Generator().manual_seed(seed)
    losses = fit_prior(new_prior, z_data, steps, batch_size=batch_size, lr=lr, generator=gen)

    raw = cfg.to_dict()
    if hasattr(trained, "prior"):  # a latent prior slot (vae, pdae, latent_prior): swap in place
        model = swap_prior(trained, new_prior)
        raw["method"] = {**raw["method"], "prior": prior, "prior_args": prior_args}
        # Free bits shaped stage one's training only (and priors without a per-dim KL refuse them).
        raw["method"].pop("free_bits", None)
    else:  # any other encoder: its weights under a latent_prior with the fitted prior
        raw["method"] = {
            "name": "latent_prior", "base": cfg.method_name, "base_args": cfg.method_args,
            "code_dim": z_dim, "prior": prior, "prior_args": prior_args,
        }  # fmt: skip
        args = {k: v for k, v in raw["method"].items() if k != "name"}
        model = build_method("latent_prior", data.shape, **args)
        model.base.load_state_dict(trained.state_dict())
        model.prior = new_prior
    new_cfg = config_from_dict(raw)
    write_run_info(
        out, new_cfg, data.shape, dependencies=read_run_info(run_dir).get("dependencies")
    )
    step = checkpoint_step(run_dir / "checkpoint")
    source = {"from_run": str(run_dir), "prior": prior, "steps": steps, "lr": lr}
    save_checkpoint(out / "checkpoint", model, None, None, step, {"two_stage": source})
    every = max(1, steps // 200)
    rows = [
        json.dumps({"step": i + 1, "prior_fit_loss": sum(chunk) / len(chunk)})
        for i in range(every - 1, steps, every)
        for chunk in [losses[i + 1 - every : i + 1]]
    ]
    write_text(out / "metrics.jsonl", "\n".join(rows) + "\n")
    log(f"prior loss {losses[0]:.3f} -> {sum(losses[-every:]) / every:.3f} nats; wrote {out}")
    return out
