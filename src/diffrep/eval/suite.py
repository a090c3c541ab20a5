"""`evaluate` assembles eval.json from metric families; `write_eval` writes RUN_DIR/eval.json
(`diffrep.runs.run_eval` does both for a run directory).

A metric family is a function `family(ctx: EvalContext) -> dict` registered in `EVALS` (see
`diffrep.eval.context`); its dict is deep-merged into eval.json and it may save pictures with
`ctx.figure(...)`. `EvalConfig.metrics` names the families to run. A method-specific
evaluation (DDIM steps against FID, a schedule plot) registers one more family, and the report
shows its numbers and figures without changes.

A family that fails with a `UserError` (e.g. Inception FID without the weights file), or whose
numbers come out NaN/inf (e.g. NaN weights), does not stop the others: its message goes into
eval.json["errors"][family] and none of its numbers are kept. `run_eval` merges the new results
into an existing eval.json (a failed or partial evaluation never erases earlier metrics), writes
it, then raises one UserError naming every failed family.

This module registers the general families (likelihood, probe, latent, recon, fid, inception);
`diffrep.eval.diffusion` (schedule, ddim_steps, memorisation), `collapse` and `codes` (code-
conditioned diffusion decoders) register theirs and are imported here so `evaluate` sees them.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from diffrep import atomic
from diffrep.errors import UserError
from diffrep.eval import EvalConfig

# method-specific families register themselves on import
from diffrep.eval import attractors as _attractors  # noqa: F401
from diffrep.eval import codes as _codes  # noqa: F401
from diffrep.eval import collapse as _collapse  # noqa: F401
from diffrep.eval import diffusion as _diffusion  # noqa: F401
from diffrep.eval import guidance as _guidance  # noqa: F401
from diffrep.eval import loss_curve as _loss_curve  # noqa: F401
from diffrep.eval import plots as P
from diffrep.eval.batching import subset_indices
from diffrep.eval.context import (  # noqa: F401  (EVALS, EvalContext, draw_samples re-exported)
    EVALS,
    EvalContext,
    draw_samples,
    encode_takes_t,
)
from diffrep.jsonutil import to_jsonable

# --------------------------------------------------------------------------- families


@EVALS.register("likelihood")
def _likelihood(ctx: EvalContext) -> dict:
    from diffrep.eval.likelihood import elbo_metrics, iw_nll

    out = elbo_metrics(ctx.method, ctx.test.images, ctx.cfg.batch_size)
    idx = subset_indices(len(ctx.test), ctx.cfg.iw_max_examples, ctx.cfg.seed)
    out.update(
        iw_nll(
            ctx.method,
            ctx.test.images[idx],
            ctx.cfg.iw_samples,
            ctx.cfg.batch_size,
            generator=ctx.generator(1),
        )
    )
    return out


@EVALS.register("probe")
def _probe(ctx: EvalContext) -> dict:
    from diffrep.eval import probes

    if not ctx.method.can("encode"):
        return {}
    cfg, tr, te = ctx.cfg, ctx.train, ctx.test
    f_tr, f_te = ctx.features("train"), ctx.features("test")
    out: dict = {"feature_dim": int(f_tr.shape[1])}
    if tr.labels is not None and te.labels is not None and len(np.unique(tr.labels)) > 1:
        y_tr, y_te = tr.labels, te.labels
        out.update(
            probes.linear_probe(
                f_tr, y_tr, f_te, y_te, cfg.probe_C, cfg.probe_val_fraction, cfg.seed
            )
        )
        out.update(probes.knn_probe(f_tr, y_tr, f_te, y_te, cfg.knn_k))
        out.update(
            probes.few_label_probe(
                f_tr, y_tr, f_te, y_te, cfg.few_label_sizes, cfg.few_label_draws, seed=cfg.seed
            )
        )
    if tr.factors is not None and te.factors is not None:
        out["factors"] = probes.factor_probes(
            f_tr, tr.factors, f_te, te.factors, tr.factor_names, tr.factor_kinds, seed=cfg.seed
        )
    if cfg.probe_t:
        out.update(_probe_at_t(ctx))
    idx = subset_indices(len(te), cfg.tsne_points, cfg.seed)
    if len(idx) >= 5:
        emb = probes.tsne_embed(f_te[idx], seed=cfg.seed)
        labels = te.labels[idx] if te.labels is not None else None
        png = P.scatter_2d(emb, labels, f"t-SNE of encode(x), {len(idx)} test points")
        ctx.figure("tsne", png, "t-SNE of the representation", "Representation", order=30)
    return {"probe": out}


def _probe_at_t(ctx: EvalContext) -> dict:
    """Linear and kNN accuracy of encode(x0, t) at each t of cfg.probe_t, and their curve."""
    from diffrep.eval import probes

    cfg, tr, te = ctx.cfg, ctx.train, ctx.test
    if not encode_takes_t(ctx.method):
        return {"at_t_skipped": "the method's encode takes no noise level (encode_takes_t)"}
    if tr.labels is None or te.labels is None or len(np.unique(tr.labels)) < 2:
        return {"at_t_skipped": "the data has no labels"}
    at_t = {}
    for t in sorted(set(cfg.probe_t)):
        f_tr, f_te = ctx.features("train", t), ctx.features("test", t)
        acc = probes.linear_probe(
            f_tr, tr.labels, f_te, te.labels, cfg.probe_C, cfg.probe_val_fraction, cfg.seed
        )
        acc.update(probes.knn_probe(f_tr, tr.labels, f_te, te.labels, cfg.knn_k))
        at_t[f"{t:g}"] = {"linear_acc": acc["linear_acc"], "knn_acc": acc["knn_acc"]}
    ts = [float(k) for k in at_t]
    png = P.line_plot(
        ts,
        {"linear": [v["linear_acc"] for v in at_t.values()],
         "kNN": [v["knn_acc"] for v in at_t.values()]},
        "Probe accuracy of encode(x0, t)", "noise level t", "test accuracy",
    )  # fmt: skip
    ctx.figure("probe_vs_t", png, "Probes against the noise level", "Representation", order=31)
    return {"at_t": at_t}


@EVALS.register("latent")
def _latent(ctx: EvalContext) -> dict:
    from diffrep.eval.latents import latent_health

    cfg = ctx.cfg
    out = latent_health(
        ctx.method,
        ctx.test.images,
        cfg.batch_size,
        cfg.active_unit_threshold,
        cfg.mi_examples,
        cfg.seed,
        cfg.active_unit_bits,
    )
    if not out:
        return {}
    if "kl_per_dim" in out:
        png = P.bars(out["kl_per_dim"], "KL(q(z_d|x) || N(0,1)) per dimension", "d", "nats")
        ctx.figure("kl_per_dim", png, "KL per latent dimension", "Latent health", order=40)
    active = f"{out['active_units']} of {out['latent_dim']} units active"
    if "unit_information" in out:
        png = P.bars(
            out["unit_information"],
            f"I_q(x; z_d) per dimension: {active}",
            "d",
            "nats",
            hline=out["active_unit_nats"],
        )
        caption = f"Active: more than {cfg.active_unit_bits:g} bits (the line)."
    else:
        png = P.bars(
            out["unit_variance"],
            f"Cov_x(code_d): {active}",
            "d",
            "variance",
            hline=cfg.active_unit_threshold,
        )
        caption = "Burda et al.'s activity statistic of a deterministic code."
    ctx.figure("active_units", png, "Active units", "Latent health", caption, order=41)
    return {"latent": out}


@EVALS.register("recon")
def _recon(ctx: EvalContext) -> dict:
    from diffrep.eval.recon import recon_metrics

    n = ctx.cfg.grid_images
    out, recons = recon_metrics(
        ctx.method, ctx.test.images, ctx.cfg.batch_size, generator=ctx.generator(2), keep=n
    )
    if recons is not None:
        png = P.recon_grid(ctx.test.images[: len(recons)], recons, ncol=8)
        caption = "Odd rows: test images; even rows: their reconstructions."
        ctx.figure("reconstructions", png, "Reconstructions", "Reconstructions", caption, order=20)
    return {"recon": out} if out else {}


def _feature_scores(ctx: EvalContext, features) -> tuple[dict, np.ndarray, np.ndarray]:
    """FID/KID of the shared samples against real test images in a feature space.

    `features(images_uint8) -> [N, F]`; returns (scores, samples, real images).
    """
    from diffrep.eval import fid

    cfg = ctx.cfg
    samples = ctx.samples()
    real = ctx.test.images[subset_indices(len(ctx.test), cfg.n_samples, cfg.seed)]
    s = fid.scores(
        features(real), features(samples), cfg.kid_subset_size, cfg.kid_subsets, cfg.seed
    )
    return s, samples, real


@EVALS.register("fid")
def _fid(ctx: EvalContext) -> dict:
    from diffrep.eval.fidnet import fidnet_features

    if not ctx.method.can("sample"):
        return {}
    cfg = ctx.cfg
    net, sha = ctx.fidnet()
    s, samples, real = _feature_scores(ctx, lambda x: fidnet_features(net, x, cfg.batch_size))
    common = {"feature_net_sha256": sha, "n_samples": len(samples), "n_real": len(real)}
    return {
        "fid": {"domain": s["fid"], **common},
        "kid": {"domain": s["kid"], "domain_std": s["kid_std"], **common},
    }


@EVALS.register("inception")
def _inception(ctx: EvalContext) -> dict:
    from diffrep.eval.inception import inception_features, load_inception

    if not ctx.method.can("sample"):
        return {}
    cfg = ctx.cfg
    net, sha = load_inception(cfg.inception_weights)
    s = _feature_scores(ctx, lambda x: inception_features(net, x, cfg.batch_size))[0]
    return {
        "fid": {"inception": s["fid"], "inception_sha256": sha},
        "kid": {"inception": s["kid"], "inception_std": s["kid_std"]},
    }


# --------------------------------------------------------------------------- assembly


def _merge(into: dict, new: dict) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v


def _non_finite(obj, path: str = "") -> list[str]:
    """Paths of NaN/inf floats in a family's result, e.g. ["bpd=nan"]."""
    if isinstance(obj, dict):
        return [b for k, v in obj.items() for b in _non_finite(v, f"{path}{k}.")]
    if isinstance(obj, (list, tuple)):
        return [b for i, v in enumerate(obj) for b in _non_finite(v, f"{path}{i}.")]
    if isinstance(obj, (float, np.floating)) and not math.isfinite(obj):
        return [f"{path[:-1]}={obj}"]
    if isinstance(obj, np.ndarray) and obj.dtype.kind == "f" and not np.isfinite(obj).all():
        return [f"{path[:-1]}=[non-finite]"]
    return []


def evaluate(
    method,
    train_data,
    test_data,
    cfg: EvalConfig | None = None,
    run_dir: str | Path | None = None,
) -> dict:
    """Run the families in cfg.metrics; return the eval.json dict (figures go to run_dir)."""
    cfg = cfg or EvalConfig()
    for name in cfg.metrics:
        EVALS.get(name)  # UserError naming the valid families
    method.eval()
    torch.manual_seed(cfg.seed)  # methods' own Monte Carlo (ELBO noise) is reproducible too
    ctx = EvalContext(
        method=method,
        train=train_data.subset(subset_indices(len(train_data), cfg.max_train, cfg.seed)),
        test=test_data.subset(subset_indices(len(test_data), cfg.max_eval, cfg.seed + 1)),
        cfg=cfg,
        run_dir=Path(run_dir) if run_dir is not None else None,
        full_train=train_data,
    )
    result: dict = {
        "method": type(method).__name__,
        "capabilities": method.capabilities(),
        "bound_is_valid": bool(method.bound_is_valid),
        "n_train": len(ctx.train),
        "n_test": len(ctx.test),
        "dataset": getattr(test_data, "name", ""),
        "eval_config": asdict(cfg),
        "seconds": {},
    }
    errors: dict[str, str] = {}
    for name in cfg.metrics:
        t0 = time.perf_counter()
        try:
            out = EVALS.get(name)(ctx)
            bad = _non_finite(out)
            if bad:
                raise UserError(
                    f"non-finite results ({', '.join(bad[:4])}); the weights or the data hold "
                    "NaN/inf; fix: evaluate a run whose checkpoint trained to a finite loss"
                )
            _merge(result, out)
        except UserError as e:
            errors[name] = str(e)
        result["seconds"][name] = round(time.perf_counter() - t0, 3)
    result["figures"] = ctx.figures
    if errors:
        result["errors"] = errors
    return to_jsonable(result)


def write_eval(run_dir: str | Path, result: dict) -> Path:
    """Write `result` as RUN_DIR/eval.json (strict JSON, NaN as null, atomically)."""
    path = Path(run_dir) / "eval.json"
    atomic.write_json(path, result)
    return path


def read_eval(run_dir: str | Path) -> dict:
    """RUN_DIR/eval.json, or {} when there is none (or it cannot be read)."""
    try:
        old = json.loads((Path(run_dir) / "eval.json").read_text())
    except (OSError, ValueError):
        return {}
    return old if isinstance(old, dict) else {}


def merge_eval(old: dict, new: dict, errors: dict, ran) -> dict:
    """`new` merged over `old`: families that failed now keep their earlier numbers;
    "errors" lists the current failures and earlier ones of families not run now."""
    merged = json.loads(json.dumps(old))  # a deep copy
    _merge(merged, new)
    merged["figures"] = list(dict.fromkeys([*old.get("figures", []), *new.get("figures", [])]))
    kept = {k: v for k, v in (old.get("errors") or {}).items() if k not in ran}
    merged.pop("errors", None)
    if kept or errors:
        merged["errors"] = {**kept, **errors}
    return merged
