"""Evaluation suite: functions of a trained method and data that produce eval.json.

Each metric family lives in one module and is a plain function `(method, data, **options) -> dict`
that returns `{}` for what the method cannot do (`method.can("encode")`, ...):

    likelihood.py  bits per dim, named ELBO terms, importance-weighted NLL (Burda et al. 2016)
    probes.py      linear / kNN / few-label / per-factor probes, t-SNE
    fid.py         Frechet distance and KID on features of a domain network (fidnet.py)
    latents.py     KL per dimension, active units, I(x; z) under q
    recon.py       MSE, PSNR, SSIM of reconstructions
    collapse.py    code-conditioned diffusion decoders: latent health and the shuffle test
    codes.py       their reconstructions with the code fixed, DDIM regeneration, interpolation

`suite.py` assembles them: `evaluate(method, train_data, test_data, cfg)` returns the eval.json
dict (`context.py`: what each family sees, and the `EVALS` registry);
`diffrep.runs.run_eval(run_dir)` loads a run, evaluates it and writes RUN_DIR/eval.json.
`EvalConfig` is the `eval:` section of a config file; its defaults live here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Metric families `evaluate` knows; `EvalConfig.metrics` picks among them (plus any family
#: registered later in `diffrep.eval.suite.EVALS`).
DEFAULT_METRICS = ("likelihood", "probe", "latent", "recon", "fid")
# diffrep.eval.diffusion's families (each skips a method it does not apply to)
DEFAULT_METRICS += ("schedule", "ddim_steps", "memorisation", "loss_vs_t")
# diffrep.eval.collapse / codes: methods with a code-conditioned diffusion decoder (vae_vdm, drl)
DEFAULT_METRICS += ("collapse", "code_samples")
# diffrep.eval.guidance's families (code-guided diffusion: PDAE; others skip them)
DEFAULT_METRICS += ("posterior_gap", "critical_stage")
# diffrep.eval.attractors: denoiser iteration from noisy inputs (methods with denoise(x))
DEFAULT_METRICS += ("attractors",)


@dataclass(frozen=True)
class EvalConfig:
    """Options of `diffrep eval` (the `eval:` config section)."""

    metrics: tuple[str, ...] = DEFAULT_METRICS  # add "inception" for Inception FID / KID
    batch_size: int = 256
    seed: int = 0
    max_eval: int | None = 10000  # test examples used (random subset; None: all)
    max_train: int | None = 10000  # train examples for probes (random subset; None: all)
    # likelihood
    iw_samples: int = 64  # k of the importance-weighted NLL
    iw_max_examples: int = 1000  # the IW-NLL costs k forward passes per example
    # probes
    probe_C: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0, 10.0)
    probe_val_fraction: float = 0.2  # of train, held out to choose C
    knn_k: int = 20
    few_label_sizes: tuple[int, ...] = (10, 100, 1000)
    few_label_draws: int = 5
    tsne_points: int = 2000
    # noise levels t in [0, 1] at which to probe encode(x0, t) (methods with encode_takes_t)
    probe_t: tuple[float, ...] = ()
    # latents
    active_unit_bits: float = 0.5  # active: I_q(x; z_d) > this (posterior encoders)
    active_unit_threshold: float = 0.01  # codes without a posterior: Cov_x(code_d) > this
    mi_examples: int = 2000  # examples in the aggregate-posterior estimate of I(x; z)
    # collapse (code-conditioned diffusion decoders): the shuffle test
    shuffle_examples: int = 512  # test examples (2 decoder calls per example and t bin)
    shuffle_t_bins: int = 10
    # sample quality
    n_samples: int = 5000  # generated samples for FID / KID
    sample_kwargs: dict = field(default_factory=dict)  # passed to method.sample (e.g. steps)
    fidnet_path: str | None = None  # a weights file from `diffrep fidnet train`
    fidnet_cache: str | None = None  # else $DIFFREP_CACHE/fidnet, else ~/.cache/diffrep/fidnet
    fidnet_epochs: int = 3
    kid_subset_size: int = 1000
    kid_subsets: int = 50
    inception_weights: str | None = None  # pt_inception-2015-12-05 weights for "inception"
    ddim_steps: tuple[int, ...] = (10, 25, 50, 100)  # "ddim_steps": domain FID per step count
    # code-guided diffusion (diffrep.eval.guidance)
    gap_bins: int = 10  # "posterior_gap": equal t bins
    stage_grid: int = 5  # "critical_stage": (t1, t2) on the grid k / stage_grid
    stage_steps: int = 50  # ancestral steps per mixed sample
    stage_examples: int = 200  # source images per (t1, t2)
    # pictures
    grid_images: int = 64

    def __post_init__(self):
        positive = (
            "batch_size",
            "iw_samples",
            "knn_k",
            "few_label_draws",
            "tsne_points",
            "mi_examples",
            "shuffle_examples",
            "shuffle_t_bins",
            "n_samples",
            "fidnet_epochs",
            "kid_subset_size",
            "kid_subsets",
            "grid_images",
            "gap_bins",
            "stage_grid",
            "stage_steps",
            "stage_examples",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("n_samples", "kid_subset_size"):  # a covariance / an unbiased MMD^2
            if getattr(self, name) < 2:
                raise ValueError(
                    f"{name} must be >= 2 (FID and KID compare sets of samples), got "
                    f"{getattr(self, name)}; fix: e.g. {name}=1000"
                )
        for name in ("max_eval", "max_train", "iw_max_examples"):
            v = getattr(self, name)
            if v is not None and v < 2:
                raise ValueError(f"{name} must be >= 2 or null, got {v}")
        if not 0.0 < self.probe_val_fraction < 1.0:
            raise ValueError(f"probe_val_fraction must be in (0, 1), got {self.probe_val_fraction}")
        if not self.probe_C or any(c <= 0 for c in self.probe_C):
            raise ValueError(f"probe_C must be positive numbers, got {self.probe_C}")
        if any(not 0.0 <= t <= 1.0 for t in self.probe_t):
            raise ValueError(f"probe_t must be noise levels in [0, 1], got {self.probe_t}")
        if any(n < 1 for n in self.few_label_sizes):
            raise ValueError(f"few_label_sizes must be >= 1, got {self.few_label_sizes}")
        if self.active_unit_threshold < 0 or self.active_unit_bits < 0:
            raise ValueError("active_unit_threshold and active_unit_bits must be >= 0")
        if len(set(self.metrics)) != len(self.metrics):
            raise ValueError(f"metrics lists a family twice: {self.metrics}")
        # Names are checked against the EVALS registry in `evaluate`, where late registrations
        # (method-specific evaluations) are visible.


def evaluate(*args, **kwargs):
    """See `diffrep.eval.suite.evaluate` (imported lazily: torch is heavy)."""
    from diffrep.eval.suite import evaluate as _evaluate

    return _evaluate(*args, **kwargs)


__all__ = ["DEFAULT_METRICS", "EvalConfig", "evaluate"]
