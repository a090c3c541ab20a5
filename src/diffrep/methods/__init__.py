"""Methods register themselves on import; one line per method below."""

from diffrep.methods import vae  # noqa: F401,E402
from diffrep.methods.base import METHODS, Method, build_method  # noqa: F401
