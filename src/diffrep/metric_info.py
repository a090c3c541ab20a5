"""What each eval.json metric is, for the pages: its group, which way is better, its unit.

Groups, in page order: likelihood, samples, representation, latent health, reconstruction,
other (families this table does not know yet), bookkeeping (hashes, counts, flags, settings:
kept on the pages, last, and out of every headline). `info(key)` takes a flattened key
("probe.linear_acc"); exact entries win over the pattern rules, which are tried in order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

GROUPS = (
    "likelihood",
    "samples",
    "representation",
    "latent health",
    "reconstruction",
    "other",
    "bookkeeping",
)


@dataclass(frozen=True)
class MetricInfo:
    group: str
    better: str  # "lower" | "higher" | "" (no direction: a diagnostic or a setting)
    unit: str = ""

    @property
    def arrow(self) -> str:
        return {"lower": "↓", "higher": "↑"}.get(self.better, "")


_EXACT = {
    "bpd": MetricInfo("likelihood", "lower", "bits/dim"),
    "elbo_nats": MetricInfo("likelihood", "lower", "nats"),
    "nll_iw_nats": MetricInfo("likelihood", "lower", "nats"),
    "nll_iw_bpd": MetricInfo("likelihood", "lower", "bits/dim"),
    "nll_iw_se_nats": MetricInfo("likelihood", "", "nats (standard error)"),
    "elbo_terms.total": MetricInfo("likelihood", "lower", "nats"),
    "elbo_terms.recon": MetricInfo("likelihood", "lower", "nats"),
    # the two KLs sit side by side: the rate against the model's own prior (the ELBO's term),
    # and against N(0, I) (the same number for a Gaussian prior; for a learned prior only a
    # collapse diagnostic, large when the prior is far from N(0, I))
    "elbo_terms.kl": MetricInfo("latent health", "", "nats, KL to own prior"),
    "latent.kl_total": MetricInfo("latent health", "", "nats, KL to N(0, I)"),
    "latent.active_units": MetricInfo("latent health", "higher", "units"),
    "latent.mi": MetricInfo("latent health", "higher", "nats"),
    "latent.mi_max": MetricInfo("latent health", "", "nats, the most mi can show (log N)"),
    "recon.mse": MetricInfo("reconstruction", "lower", "[0, 1] scale"),
    "recon.psnr": MetricInfo("reconstruction", "higher", "dB"),
    "recon.ssim": MetricInfo("reconstruction", "higher", "in [0, 1]"),
    "probe.linear_acc": MetricInfo("representation", "higher", "accuracy"),
    "probe.knn_acc": MetricInfo("representation", "higher", "accuracy"),
    "memorisation.copy_fraction": MetricInfo("samples", "lower", "fraction"),
    "train_steps": MetricInfo("bookkeeping", "", "steps"),
}

_RULES: tuple[tuple[str, MetricInfo], ...] = (
    (r"sha256$", MetricInfo("bookkeeping", "")),
    (
        r"(^|\.)(n_\w+|num_\w+|feature_dim|latent_dim|nll_iw_k|linear_C|\w+_examples|quantile|"
        r"copy_threshold|active_unit_nats)$",
        MetricInfo("bookkeeping", ""),
    ),
    (r"(^bound_is_valid|_is_bound|latent_chain|learnable|kind)$", MetricInfo("bookkeeping", "")),
    (r"^probe\.few_label_acc\.\d+$", MetricInfo("representation", "higher", "accuracy")),
    (r"^probe\.factors\..*\.acc$", MetricInfo("representation", "higher", "accuracy")),
    (r"^probe\.factors\..*\.r2$", MetricInfo("representation", "higher", "R^2")),
    (r"^probe\.", MetricInfo("representation", "")),
    (r"^(fid|kid)\..*_std$", MetricInfo("samples", "")),
    (r"^(fid|kid)\.", MetricInfo("samples", "lower")),
    (r"^ddim_steps\.", MetricInfo("samples", "lower", "FID")),
    (r"^memorisation\.", MetricInfo("samples", "")),
    (r"^elbo_terms\.", MetricInfo("likelihood", "", "nats")),
    (r"^(latent|collapse)\.", MetricInfo("latent health", "")),
    (r"^recon\.", MetricInfo("reconstruction", "")),
)


def info(key: str) -> MetricInfo:
    """Group, direction and unit of a flattened eval.json key (module docstring)."""
    if key in _EXACT:
        return _EXACT[key]
    for pattern, mi in _RULES:
        if re.search(pattern, key):
            return mi
    return MetricInfo("other", "")


def grouped(keys) -> list[tuple[str, list[str]]]:
    """[(group, keys in their given order)] in GROUPS order, empty groups left out."""
    by_group: dict[str, list[str]] = {g: [] for g in GROUPS}
    for k in keys:
        by_group[info(k).group].append(k)
    return [(g, ks) for g, ks in by_group.items() if ks]


def describe(key: str) -> str:
    """ "higher is better, nats" style text for a table cell (empty for bookkeeping)."""
    mi = info(key)
    parts = [f"{mi.better} is better"] if mi.better else []
    if mi.unit:
        parts.append(mi.unit)
    return ", ".join(parts)
