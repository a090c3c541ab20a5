"""Text for `diffrep data list` and `diffrep data info NAME` (the CLI prints these)."""

from __future__ import annotations

import numpy as np

from diffrep.data.core import DATASETS, INFO, data_roots, load_dataset
from diffrep.errors import UserError


def describe_datasets() -> str:
    """One row per registered dataset: name, image shape, splits, description, files."""
    rows = [("name", "shape", "splits", "description")]
    for name in DATASETS.names():
        info = INFO[name]
        rows.append((name, info.shape, ",".join(info.splits), info.description))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3] for r in rows]
    lines.append("")
    lines.append("where files are looked for (R = each data root):")
    for name in DATASETS.names():
        fetch = "  [diffrep data fetch " + name + "]" if INFO[name].fetchable else ""
        lines.append(f"  {name}: {INFO[name].files}{fetch}")
    lines.append("data roots, in order: " + ", ".join(str(r) for r in data_roots()))
    lines.append("(an explicit data.root / --root replaces them; DIFFREP_DATA adds one first)")
    return "\n".join(lines)


def describe_dataset(name: str, root=None, **options) -> str:
    """Shape, size of every split, classes, factors and where each split was found."""
    return dataset_report(name, root, **options)[0]


def dataset_report(name: str, root=None, **options) -> tuple[str, list[str]]:
    """(describe_dataset's text, the splits that were not found)."""
    info = INFO.get(name) or DATASETS.get(name)  # DATASETS.get raises the UserError
    missing: list[str] = []
    lines = [f"{name}: {info.description}"]
    roots = [str(r) for r in data_roots(root)]
    lines.append(f"searched roots: {', '.join(roots)}" if info.fetchable else info.files)
    first = None
    for split in info.splits:
        try:
            d = load_dataset(name, split, root=root, **options)
        except UserError as e:
            lines.append(f"  {split}: MISSING: {e}")
            missing.append(split)
            continue
        if first is None:
            first = d
        counts = ""
        if d.labels is not None and len(d):
            counts = ", per class " + " ".join(str(c) for c in np.bincount(d.labels))
        lines.append(f"  {split}: {len(d)} images {'x'.join(map(str, d.shape))}"
                     f" from {d.source}{counts}")  # fmt: skip
    if first is not None:
        if first.num_classes:
            names = ", ".join(first.class_names) if first.class_names else "unnamed"
            lines.append(f"classes: {first.num_classes} ({names})")
        else:
            lines.append("classes: none (unlabelled)")
        if first.factor_names:
            fs = ", ".join(f"{n} ({k})" for n, k in zip(first.factor_names, first.factor_kinds))
            lines.append(f"factors: {fs}")
    return "\n".join(lines), missing
