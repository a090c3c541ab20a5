"""Methods register themselves on import; one line per method below."""

from diffrep.methods import (
    dae,  # noqa: F401,E402
    ddpm,  # noqa: F401,E402
    drl,  # noqa: F401,E402
    ideal,  # noqa: F401,E402
    latent_prior,  # noqa: F401,E402
    pdae,  # noqa: F401,E402
    svd,  # noqa: F401,E402
    vae,  # noqa: F401,E402
    vae_vdm,  # noqa: F401,E402
    vdm,  # noqa: F401,E402
)
from diffrep.methods.base import METHODS, Method, build_method  # noqa: F401
