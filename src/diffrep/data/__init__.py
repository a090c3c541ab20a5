"""Datasets as uint8 arrays, the split grammar, and the map to model space.

    data = load_dataset("mnist", "test[:8000]")      # ImageData: images uint8 [N, C, H, W]
    batch = make_batch(data.images[:64], data.labels[:64])   # {"x0": float32, "y": int64}

Registered datasets (`DATASETS`): digits, mnist, fashion-mnist, cifar10, shapes, folder, npz.
Model space and the dequantisation convention for bits per dim: `diffrep.data.modelspace`.
Nothing here downloads; `fetch(name, root)` does, when the user runs `diffrep data fetch`.
"""

from diffrep.data import cifar, digits, files, idx, shapes  # noqa: F401  (register datasets)
from diffrep.data.core import (
    DATASETS,
    ImageData,
    clear_cache,
    data_roots,
    default_cache_dir,
    holdout_indices,
    load_dataset,
)
from diffrep.data.describe import describe_dataset, describe_datasets
from diffrep.data.download import fetch
from diffrep.data.modelspace import (
    LOG_BIN,
    bits_per_dim,
    dequantise,
    make_batch,
    to_model_input,
    to_uint8,
)
from diffrep.data.splits import parse_split, resolve_slice

__all__ = [
    "DATASETS",
    "LOG_BIN",
    "ImageData",
    "bits_per_dim",
    "clear_cache",
    "data_roots",
    "default_cache_dir",
    "dequantise",
    "describe_dataset",
    "describe_datasets",
    "fetch",
    "holdout_indices",
    "load_dataset",
    "make_batch",
    "parse_split",
    "resolve_slice",
    "to_model_input",
    "to_uint8",
]
