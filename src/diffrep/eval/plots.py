"""Pictures as PNG bytes (matplotlib, Agg, no pyplot state) and the run's figure store.

Figure store (the hook reports read): an evaluation saves a picture with

    save_figure(run_dir, "tsne", png_bytes, title="t-SNE of encode(x)", section="Representation")

which writes RUN_DIR/figures/tsne.png and a sidecar RUN_DIR/figures/tsne.json
{"title", "section", "caption", "order"}. `diffrep report` shows every PNG in figures/, grouped
by section, so a new evaluation (a schedule plot, DDIM steps against FID, a priors comparison)
adds figures without touching the report. A PNG without a sidecar is shown under "Figures".
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from diffrep import atomic

FIGURES_DIR = "figures"


def _figure(width: float = 6.0, height: float = 4.0):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def grid_array(images_uint8: np.ndarray, nrow: int, pad: int = 1, min_cell: int = 28) -> np.ndarray:
    """uint8 [N, C, H, W] -> one [rows*H', nrow*W', 3] uint8 tiling (small images upscaled)."""
    x = np.asarray(images_uint8)
    if x.ndim != 4:
        raise ValueError(f"expected images [N, C, H, W], got shape {x.shape}")
    n, c, h, w = x.shape
    scale = max(1, -(-min_cell // max(h, w)))  # nearest-neighbour upscale tiny (8x8) images
    x = x.repeat(scale, axis=2).repeat(scale, axis=3)
    x = np.repeat(x, 3, axis=1) if c == 1 else x[:, :3]
    h, w = x.shape[2], x.shape[3]
    rows = -(-n // nrow)
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, 3), 255, np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[top : top + h, left : left + w] = x[i].transpose(1, 2, 0)
    return grid


def image_grid(images_uint8: np.ndarray, nrow: int = 8) -> bytes:
    """PNG bytes of a grid of uint8 images [N, C, H, W]."""
    from matplotlib.image import imsave

    buf = io.BytesIO()
    imsave(buf, grid_array(images_uint8, nrow), format="png")
    return buf.getvalue()


def recon_grid(originals: np.ndarray, recons: np.ndarray, ncol: int = 8) -> bytes:
    """Rows alternate originals / reconstructions, `ncol` images per row."""
    n = min(len(originals), len(recons)) // ncol * ncol or min(len(originals), len(recons))
    ncol = min(ncol, n)
    pairs = []
    for s in range(0, n, ncol):
        pairs += [originals[s : s + ncol], recons[s : s + ncol]]
    return image_grid(np.concatenate(pairs), nrow=ncol)


def scatter_2d(points: np.ndarray, labels: np.ndarray | None, title: str) -> bytes:
    """2-D scatter, one colour and legend entry per label (up to 20 labels; else a colour bar)."""
    fig = _figure(5.5, 5.0)
    ax = fig.add_subplot()
    classes = np.unique(labels) if labels is not None else []
    if labels is None:
        ax.scatter(points[:, 0], points[:, 1], s=3, c="tab:blue")
    elif len(classes) <= 20:
        cmap = "tab10" if len(classes) <= 10 else "tab20"
        colours = _colormap(cmap)(np.arange(len(classes)))
        for c, col in zip(classes, colours):
            m = labels == c
            ax.scatter(points[m, 0], points[m, 1], s=3, color=col, label=str(c))
        ax.legend(markerscale=3, fontsize=7, loc="best", title="label", title_fontsize=7)
    else:
        sc = ax.scatter(points[:, 0], points[:, 1], s=3, c=labels, cmap="viridis")
        fig.colorbar(sc, ax=ax, label="label")
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    return _png(fig)


def _colormap(name: str):
    from matplotlib import colormaps

    return colormaps[name]


def bars(values: list[float], title: str, xlabel: str, ylabel: str, hline: float | None = None):
    fig = _figure(6.0, 3.0)
    ax = fig.add_subplot()
    ax.bar(np.arange(len(values)), values, color="tab:blue")
    if hline is not None:
        ax.axhline(hline, color="tab:red", lw=1, ls="--")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    return _png(fig)


def line_plot(x: list[float], ys: dict[str, list[float]], title: str, xlabel: str, ylabel: str):
    """Several named lines against one x axis, with markers (few points: each is a measurement)."""
    fig = _figure(5.0, 3.2)
    ax = fig.add_subplot()
    for name, y in ys.items():
        ax.plot(x, y, marker="o", lw=1.5, label=name)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.legend(fontsize=8)
    return _png(fig)


def _panels(n: int, height: float):
    """A figure for n small panels, up to 3 per row: (fig, rows, cols)."""
    cols = min(3, max(1, n))
    rows = -(-n // cols) if n else 1
    return _figure(4.0 * cols, height * rows), rows, cols


def curves(series: dict[str, tuple[list[float], list[float]]], title: str = "") -> bytes:
    """One small panel per named series {name: (steps, values)}."""
    names = list(series)
    fig, rows, cols = _panels(len(names), 2.6)
    for i, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, i + 1)
        steps, values = series[name]
        ax.plot(steps, values, lw=1)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title)
    return _png(fig)


def grouped_bars(table: dict[str, dict[str, float]], title: str = "") -> bytes:
    """One panel per metric, one bar per run: table = {metric: {run: value}}."""
    metrics = list(table)
    fig, rows, cols = _panels(len(metrics), 2.8)
    for i, m in enumerate(metrics):
        ax = fig.add_subplot(rows, cols, i + 1)
        runs = list(table[m])
        ax.bar(range(len(runs)), [table[m][r] for r in runs], color="tab:blue")
        # >= 10 px text at 100 dpi even when the page scales the picture down a little
        ax.set_xticks(range(len(runs)), runs, rotation=30, ha="right", fontsize=10)
        ax.tick_params(axis="y", labelsize=10)
        ax.set_title(m, fontsize=11)
    if title:
        fig.suptitle(title)
    return _png(fig)


def save_figure(
    run_dir: str | Path,
    name: str,
    png: bytes,
    title: str,
    section: str = "Figures",
    caption: str = "",
    order: int = 100,
) -> Path:
    """Write RUN_DIR/figures/<name>.png and its sidecar <name>.json (see module docstring)."""
    if not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"figure name must be alphanumeric with - or _, got {name!r}")
    d = Path(run_dir) / FIGURES_DIR
    d.mkdir(parents=True, exist_ok=True)
    atomic.write_bytes(d / f"{name}.png", png)
    meta = {"title": title, "section": section, "caption": caption, "order": order}
    atomic.write_json(d / f"{name}.json", meta)
    return d / f"{name}.png"


def list_figures(run_dir: str | Path) -> list[dict]:
    """Every PNG in RUN_DIR/figures with its metadata, sorted by (order, name)."""
    d = Path(run_dir) / FIGURES_DIR
    out = []
    for png in sorted(d.glob("*.png")) if d.is_dir() else []:
        meta = {
            "title": png.stem.replace("_", " "),
            "section": "Figures",
            "caption": "",
            "order": 100,
        }
        side = png.with_suffix(".json")
        if side.is_file():
            try:
                meta.update(json.loads(side.read_text()))
            except (json.JSONDecodeError, TypeError):
                pass  # a broken sidecar costs the title, not the figure
        out.append({"name": png.stem, "path": png, **meta})
    return sorted(out, key=lambda f: (f["order"], f["name"]))
