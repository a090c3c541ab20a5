"""diffrep: representation learning with diffusion models.

Kept import-light on purpose: `diffrep --help` and `diffrep --version` must not import torch.
"""

__version__ = "0.1.0"
