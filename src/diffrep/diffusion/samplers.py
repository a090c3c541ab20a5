"""Samplers: short pure functions of a denoiser eps_model(z_t, t, cond=None) and a schedule.

`sampler(eps_model, schedule, x_T, steps, *, cond=None, generator=None, progress=None, ...)`
runs `steps` steps on the uniform grid t = 1, 1 - 1/steps, ..., 0 (any number of steps,
independent of training) and returns x at t = 0 in data scale, z_0 / alpha_0 (for DDPM schedules
alpha_0 = 1, z_0 is x itself). x_T is z_1 ~ N(0, I). The grid's gammas come from the schedule
in float64. `cond` [B, K] is passed to every denoiser call (a code-conditioned decoder); None
calls the denoiser without one, so a denoiser that ignores its code samples bit-identically
either way.
A denoiser may offer `on_grid(t)`, itself on the whole grid at once (see `_on_grid`).

- `ancestral`: z_s ~ p(z_s | z_t) = q(z_s | z_t, x0_hat) (Ho et al. 2020 alg. 2; VDM eq. 33).
- `ddim`: z_s = alpha_s x0_hat + sqrt(sigma_s^2 - s_eta^2) eps_hat + s_eta noise with
  s_eta^2 = eta^2 Var q(z_s | z_t, x0) (Song et al. 2021a eq. 12); eta = 1 is ancestral.
- `ode_sample`: the probability-flow ODE in x_bar = z / alpha and sigma_bar = sigma / alpha =
  e^(gamma/2), where it reads dx_bar / dsigma_bar = eps_hat (Song et al. 2021a eq. 14), solved
  by Heun's method (Karras et al. 2022 alg. 1; Euler on the last step when sigma_bar(0) = 0).
  DDIM with eta = 0 is Euler on the same ODE.
- `ddim_invert` / `ode_invert`: the same ODE run from x0 (t = 0) to z_1 (deterministic encoding).
  `fixed_point_iters` makes each DDIM inversion step the exact inverse of the DDIM step.

progress: None (a tqdm bar when stderr is a terminal), False (silent), or a callable
progress(done, total) called after each step.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Iterator

import torch

from diffrep.diffusion.denoiser import Denoiser, call
from diffrep.diffusion.process import _bc, alpha_sigma, posterior_coefficients
from diffrep.diffusion.schedules import Schedule
from diffrep.errors import UserError
from diffrep.registry import Registry

EpsModel = Denoiser
Progress = Callable[[int, int], None] | bool | None
GridDenoiser = Callable[..., torch.Tensor]  # eps_at(k, z, cond=None): the denoiser at grid time k
F64 = torch.float64


def _steps(n: int, progress: Progress, desc: str) -> Iterator[int]:
    if callable(progress):
        for k in range(n):
            yield k
            progress(k + 1, n)
        return
    from tqdm import tqdm

    quiet = progress is False or (progress is None and not sys.stderr.isatty())
    yield from tqdm(range(n), desc=desc, disable=quiet, leave=False)


def _grid(schedule: Schedule, steps: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, gamma) float64 [steps + 1] on the grid 1 -> 0."""
    if steps < 1:
        raise UserError(f"a sampler needs steps >= 1, got {steps}; fix: e.g. steps=100")
    t = torch.linspace(1, 0, steps + 1, dtype=F64)
    with torch.no_grad():
        g = schedule(t.to(schedule.device)).to(device)
    return t.to(device), g


def _randn(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    dev = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=dev, dtype=x.dtype).to(x.device)


def _on_grid(eps_model: EpsModel, t: torch.Tensor) -> GridDenoiser:
    """eps_at(k, z, cond) = eps_model(z, t[k], cond) on the grid t [S + 1]. A network whose
    time conditioning is worth preparing for the whole grid at once offers `on_grid(t)`
    (`nets.mlp.ResMLP`: a latent prior's small steps); any other denoiser is called per step."""
    on_grid = getattr(eps_model, "on_grid", None)
    if on_grid is not None:
        return on_grid(t)
    return lambda k, z, cond=None: call(eps_model, z, t[k].to(z.dtype).expand(z.shape[0]), cond)


def _coefficients(g: torch.Tensor) -> dict[str, list[float]]:
    """Per-grid-point alpha, sigma and, per step k -> k + 1, q(z_s | z_t, x0)'s (c_z, c_x, var):
    computed once in float64 and handed to the loop as Python floats, so a step costs a few
    tensor ops on z (and no host-device sync on a GPU), not a dozen on 0-d coefficients."""
    a, s = alpha_sigma(g)
    c_z, c_x, var = posterior_coefficients(g[1:], g[:-1])
    names = ("a", "s", "c_z", "c_x", "var")
    return {n: v.tolist() for n, v in zip(names, (a, s, c_z, c_x, var))}


def _x0_eps(eps_at: GridDenoiser, k: int, z, a: float, s: float, clip_x0: bool, cond=None):
    """(x0_hat, eps_hat) at (z, t[k]) with z = a x0 + s eps; clip_x0 clamps x0_hat to [-1, 1]
    and makes eps consistent."""
    eps_hat = eps_at(k, z, cond)
    x0_hat = (z - s * eps_hat) / a
    if clip_x0:
        x0_hat = x0_hat.clamp(-1, 1)
        eps_hat = (z - a * x0_hat) / s
    return x0_hat, eps_hat


def _to_data(z: torch.Tensor, gamma_0: torch.Tensor) -> torch.Tensor:
    return z / _bc(alpha_sigma(gamma_0)[0], z)


@torch.no_grad()
def ancestral(
    eps_model: EpsModel,
    schedule: Schedule,
    x_T: torch.Tensor,
    steps: int,
    *,
    cond: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    progress: Progress = None,
    clip_x0: bool = False,
) -> torch.Tensor:
    """Ancestral sampling z_s ~ q(z_s | z_t, x0_hat(z_t)) from t = 1 to 0 (DDPM and VDM)."""
    t, g = _grid(schedule, steps, x_T.device)
    c, eps_at = _coefficients(g), _on_grid(eps_model, t)
    z = x_T
    for k in _steps(steps, progress, "ancestral"):
        x0_hat, _ = _x0_eps(eps_at, k, z, c["a"][k], c["s"][k], clip_x0, cond)
        z = c["c_z"][k] * z + c["c_x"][k] * x0_hat
        if c["var"][k] > 0:
            z = z + c["var"][k] ** 0.5 * _randn(z, generator)
    return _to_data(z, g[-1])


@torch.no_grad()
def ddim(
    eps_model: EpsModel,
    schedule: Schedule,
    x_T: torch.Tensor,
    steps: int,
    *,
    eta: float = 0.0,
    cond: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    progress: Progress = None,
    clip_x0: bool = False,
) -> torch.Tensor:
    """DDIM (Song et al. 2021a eq. 12): eta = 0 deterministic, eta = 1 ancestral."""
    if eta < 0:
        raise UserError(f"ddim: eta must be >= 0, got {eta}; fix: 0 (deterministic) to 1")
    t, g = _grid(schedule, steps, x_T.device)
    c, eps_at = _coefficients(g), _on_grid(eps_model, t)
    z = x_T
    for k in _steps(steps, progress, "ddim"):
        x0_hat, eps_hat = _x0_eps(eps_at, k, z, c["a"][k], c["s"][k], clip_x0, cond)
        var_eta = eta**2 * c["var"][k]
        z = c["a"][k + 1] * x0_hat + max(c["s"][k + 1] ** 2 - var_eta, 0.0) ** 0.5 * eps_hat
        if var_eta > 0:
            z = z + var_eta**0.5 * _randn(z, generator)
    return _to_data(z, g[-1])


def _sigma_bar(g: torch.Tensor) -> torch.Tensor:
    return torch.exp(0.5 * g)  # sigma / alpha; 0 at gamma = -inf


def _ode(eps_model, t, g, xbar, heun: bool, progress, desc, cond=None) -> torch.Tensor:
    """Integrate dx_bar / dsigma_bar = eps_hat(alpha x_bar, t) along the grid (t, g)."""
    sb, a = _sigma_bar(g).tolist(), alpha_sigma(g)[0].tolist()  # floats: see _coefficients
    eps_at = _on_grid(eps_model, t)
    for k in _steps(len(t) - 1, progress, desc):
        h = sb[k + 1] - sb[k]
        d = eps_at(k, a[k] * xbar, cond)
        x_next = xbar + h * d
        if heun and sb[k + 1] > 0:  # the denoiser is not used at sigma = 0 (Karras alg. 1)
            d2 = eps_at(k + 1, a[k + 1] * x_next, cond)
            x_next = xbar + h * 0.5 * (d + d2)
        xbar = x_next
    return xbar


@torch.no_grad()
def ode_sample(
    eps_model: EpsModel,
    schedule: Schedule,
    x_T: torch.Tensor,
    steps: int,
    *,
    cond: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    progress: Progress = None,
    heun: bool = True,
) -> torch.Tensor:
    """Probability-flow ODE from z_1 = x_T to x (Heun in sigma_bar; 2 denoiser calls a step).

    Deterministic: `generator` is accepted for a uniform sampler signature and not used.
    """
    t, g = _grid(schedule, steps, x_T.device)
    xbar = x_T / _bc(alpha_sigma(g[0])[0], x_T)
    return _ode(eps_model, t, g, xbar, heun, progress, "ode", cond)


@torch.no_grad()
def ode_invert(
    eps_model: EpsModel,
    schedule: Schedule,
    x0: torch.Tensor,
    steps: int,
    *,
    cond: torch.Tensor | None = None,
    progress: Progress = None,
    heun: bool = True,
) -> torch.Tensor:
    """The probability-flow ODE from data x0 (t = 0) to z_1 (t = 1), Heun's method."""
    t, g = _grid(schedule, steps, x0.device)
    t, g = t.flip(0), g.flip(0)
    xbar = _ode(eps_model, t, g, x0, heun, progress, "ode-invert", cond)
    return xbar * _bc(alpha_sigma(g[-1])[0], xbar)


@torch.no_grad()
def ddim_invert(
    eps_model: EpsModel,
    schedule: Schedule,
    x0: torch.Tensor,
    steps: int,
    *,
    cond: torch.Tensor | None = None,
    fixed_point_iters: int = 0,
    progress: Progress = None,
) -> torch.Tensor:
    """Deterministic DDIM inversion x0 -> z_1 (x_T) on the same grid as `ddim`.

    Each step s -> t uses x_bar_t = x_bar_s + (sigma_bar_t - sigma_bar_s) eps_hat. The classic
    inversion takes eps_hat at (z_s, s), which is only approximately undone by DDIM's step
    (it takes eps_hat at (z_t, t)): the round trip errs by O(1 / steps). With
    fixed_point_iters = k, eps_hat is re-evaluated at the current estimate of z_t k times
    (k more denoiser calls a step), solving DDIM's own step backwards.
    """
    t, g = _grid(schedule, steps, x0.device)
    t, g = t.flip(0), g.flip(0)
    sb, a = _sigma_bar(g).tolist(), alpha_sigma(g)[0].tolist()  # floats: see _coefficients
    eps_at = _on_grid(eps_model, t)
    xbar = x0
    for k in _steps(steps, progress, "ddim-invert"):
        h = sb[k + 1] - sb[k]
        x_next = xbar + h * eps_at(k, a[k] * xbar, cond)
        for _ in range(fixed_point_iters):
            x_next = xbar + h * eps_at(k + 1, a[k + 1] * x_next, cond)
        xbar = x_next
    return xbar * a[-1]


SAMPLERS: Registry[torch.Tensor] = Registry("sampler")
SAMPLERS.register("ancestral")(ancestral)
SAMPLERS.register("ddim")(ddim)
SAMPLERS.register("ode")(ode_sample)


def sample(
    eps_model: EpsModel,
    schedule: Schedule,
    shape: tuple[int, ...],
    *,
    sampler: str = "ancestral",
    steps: int = 100,
    generator: torch.Generator | None = None,
    progress: Progress = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    x_T: torch.Tensor | None = None,
    cond: torch.Tensor | None = None,
    **kw,
) -> torch.Tensor:
    """Run the named sampler from x_T (drawn ~ N(0, I) of `shape` from `generator` if None)."""
    fn = SAMPLERS.get(sampler)
    options = [n for n, p in inspect.signature(fn).parameters.items() if p.kind is p.KEYWORD_ONLY]
    unknown = sorted(set(kw) - set(options))
    if unknown:
        raise UserError(
            f"sampler {sampler!r} has no option {', '.join(unknown)}; its options: "
            f"{', '.join(o for o in options if o not in ('generator', 'progress'))}"
        )
    if x_T is None:
        gdev = generator.device if generator is not None else device
        x_T = torch.randn(shape, generator=generator, device=gdev, dtype=dtype).to(device)
    elif tuple(x_T.shape) != tuple(shape):
        raise UserError(f"x_T has shape {tuple(x_T.shape)}, expected {tuple(shape)}")
    return fn(
        eps_model, schedule, x_T, steps, cond=cond, generator=generator, progress=progress, **kw
    )
