"""Diffusion prior: a DDPM over the latent z0 (seed 004 sec. 3, eqs. 13-20).

    z_T ~ N(0, I),  z_{i-1} ~ p(z_{i-1} | z_i) = N(mu_theta(z_i, i), sigma_i^2 I)   (eqs. 13-14)

with the forward process q(z_i | z0) = N(sqrt(abar_i) z0, (1 - abar_i) I) for i = 1..T and a
ResMLP eps-predictor, mu_theta = (z_i - beta_i / sqrt(1 - abar_i) eps_hat) / sqrt(alpha_i)
(Ho et al. 2020, eq. 11). -log p(z0) is bounded by the DDPM variational bound (seed 004 eq. 11):

    L(z0) = L_T + sum_{i=2..T} L_{i-1} + L_0
    L_T     = KL(q(z_T | z0) || N(0, I))
    L_{i-1} = KL(q(z_{i-1} | z_i, z0) || p(z_{i-1} | z_i))               (i = 2..T)
            = beta_i^2 / (2 sigma_i^2 alpha_i (1 - abar_i)) ||eps - eps_hat||^2
              + Z/2 (r - 1 - log r),  r = beta_tilde_i / sigma_i^2
    L_0     = -log N(z0; mu_theta(z_1, 1), sigma_1^2 I)   (continuous: z is real-valued)
            = beta_1 / (2 alpha_1 sigma_1^2) ||eps - eps_hat||^2 + Z/2 log(2 pi sigma_1^2)

every term in nats and per example, so plugged into the VAE (eq. 17) it gives a valid ELBO.
Training uses an unbiased one-sample estimate (one i ~ U{2..T} per example, times T - 1, plus
L_0 and L_T); evaluation (`eval()` mode or `exact=True`) sums all T - 1 KL terms, batched over i.
"""

from __future__ import annotations

import math
import sys
from typing import Literal

import torch
from tqdm import tqdm

from diffrep.diffusion.schedules import SCHEDULES
from diffrep.errors import UserError
from diffrep.nets.mlp import ResMLP
from diffrep.priors.base import LOG_2PI, PRIORS, Prior


def ddpm_alpha_bar(T: int, schedule: str) -> torch.Tensor:
    """abar_i = alpha_i^2 = sigmoid(-gamma_i) for i = 0..T from `diffrep.diffusion.schedules`,
    float64 [T + 1], abar_0 = 1 (z_0 is the clean latent).

    "linear" is DDPM's beta_i = linspace(1e-4, 0.02) for T = 1000, scaled by 1000 / T for other
    T so that the chain still ends near N(0, I) (Nichol & Dhariwal 2021 sec. 3); "cosine" is
    their eq. 17 (independent of T) with beta_i <= 0.5.
    """
    if schedule == "linear":
        if T < 21:
            raise UserError(f"the linear schedule needs T >= 21 (got {T}); fix: raise T")
        scale = 1000.0 / T
        sched = SCHEDULES.build("ddpm-linear", T=T, beta_1=1e-4 * scale, beta_T=0.02 * scale)
    else:
        # max_beta 0.5, not 0.999: L_{i-1} weighs ||eps - eps_hat||^2 by ~beta_i / (2 alpha_i),
        # which explodes (as does the sampler's 1 / sqrt(alpha_i)) on the last clipped steps.
        sched = SCHEDULES.build("cosine", T=T, max_beta=0.5)
    with torch.no_grad():
        return torch.sigmoid(-sched.table(T))


@PRIORS.register("diffusion")
class DiffusionPrior(Prior):
    """DDPM prior over z [B, Z] with a ResMLP eps-predictor (seed 004)."""

    exact = False

    def __init__(
        self,
        dim: int,
        T: int = 1000,
        schedule: Literal["linear", "cosine"] = "linear",
        objective: Literal["bound", "simple"] = "bound",
        variance: Literal["beta", "beta_tilde"] = "beta",
        hidden: int = 256,
        depth: int = 3,
        emb_dim: int = 128,
        eval_chunk: int = 65536,
    ):
        """
        Args:
            T: number of diffusion steps.
            schedule: "linear" (DDPM) or "cosine" noise schedule.
            objective: "bound" trains on the true variational bound (a valid ELBO); "simple" on
                Ho et al.'s unweighted ||eps - eps_hat||^2 (not a bound: bound_is_valid=False).
            variance: sigma_i^2 of the reverse steps, beta_i or the posterior beta_tilde_i
                (sigma_1^2 = beta_1 either way: beta_tilde_1 = 0 would make L_0 singular).
            hidden, depth, emb_dim: the ResMLP denoiser.
            eval_chunk: rows (examples x steps) per denoiser call when summing all steps.
        """
        super().__init__(dim)
        if T < 2:
            raise UserError(f"diffusion prior: T={T}; fix: use T >= 2 (e.g. 1000)")
        self.T = int(T)
        self.schedule = schedule
        self.objective = objective
        self.bound_is_valid = objective == "bound"
        self.eval_chunk = int(eval_chunk)
        self.eps_model = ResMLP(dim, hidden=hidden, depth=depth, emb_dim=emb_dim)

        abar = ddpm_alpha_bar(self.T, schedule)  # [T+1] float64
        alpha = torch.cat([torch.ones(1, dtype=torch.float64), abar[1:] / abar[:-1]])
        beta = 1 - alpha
        beta_tilde = beta * (1 - torch.roll(abar, 1)) / (1 - abar).clamp(min=1e-300)
        beta_tilde[:2] = beta[:2]  # i = 0 unused; i = 1: sigma_1^2 = beta_1 (see above)
        sigma2 = beta.clone() if variance == "beta" else beta_tilde.clone()
        sigma2[1] = beta[1]
        r = beta_tilde / sigma2.clamp(min=1e-300)
        # Every term of the bound is w_i ||eps - eps_hat(z_i, i)||^2 + Z c_i, z_i = q_sample(z0):
        #   i >= 2, L_{i-1}: z0 - ... gives mu_tilde - mu_theta = beta_i / sqrt(alpha_i (1 -
        #     abar_i)) (eps_hat - eps), so w_i = beta_i^2 / (2 sigma_i^2 alpha_i (1 - abar_i)),
        #     c_i = (r - 1 - log r) / 2 (the variance mismatch, r = beta_tilde_i / sigma_i^2);
        #   i = 1, L_0: z0 - mu_theta(z_1, 1) = -sqrt(beta_1 / alpha_1) (eps - eps_hat), so
        #     w_1 = beta_1 / (2 alpha_1 sigma_1^2), c_1 = log(2 pi sigma_1^2) / 2.
        # Written in eps rather than as differences of means: no float32 cancellation.
        w = beta**2 / (2 * sigma2 * alpha * (1 - abar).clamp(min=1e-300))
        c = 0.5 * (r - 1 - torch.log(r.clamp(min=1e-300)))
        w[1] = beta[1] / (2 * alpha[1] * sigma2[1])
        c[1] = 0.5 * (LOG_2PI + torch.log(sigma2[1]))
        w[0], c[0] = 0.0, 0.0  # i = 0 is z0 itself: no term
        tables = {
            "sqrt_abar": abar.sqrt(),
            "sqrt_1m_abar": (1 - abar).sqrt(),
            "sqrt_alpha": alpha.sqrt(),
            "eps_coef": beta / (1 - abar).clamp(min=1e-300).sqrt(),  # beta_i / sqrt(1 - abar_i)
            "sigma": sigma2.sqrt(),
            "term_weight": w,
            "term_const": c,
        }
        for name, table in tables.items():  # float64 maths, stored float32 [T+1]
            self.register_buffer(name, table.float(), persistent=False)
        self._abar_T = float(abar[-1])

    # ------------------------------------------------------------------ pieces

    def eps_hat(self, z_i: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        """The denoiser at integer steps i [B] (the network sees t = i / T in [0, 1])."""
        return self.eps_model(z_i, i.float() / self.T)

    def _gather(self, name: str, i: torch.Tensor) -> torch.Tensor:
        return getattr(self, name)[i][:, None]  # [B, 1]

    def reverse_mean(self, z_i: torch.Tensor, i: torch.Tensor, eps_hat: torch.Tensor):
        """mu_theta(z_i, i) = (z_i - beta_i / sqrt(1 - abar_i) eps_hat) / sqrt(alpha_i)."""
        return (z_i - self._gather("eps_coef", i) * eps_hat) / self._gather("sqrt_alpha", i)

    def prior_kl(self, z0: torch.Tensor) -> torch.Tensor:
        """L_T = KL(N(sqrt(abar_T) z0, (1 - abar_T) I) || N(0, I)) [B], closed form."""
        a, v = self._abar_T, 1 - self._abar_T
        return 0.5 * (a * z0.pow(2).sum(-1) + z0.shape[1] * (v - 1 - math.log(v)))

    def terms_at(self, z0: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        """Term i of the bound [B]: L_0 for i = 1, L_{i-1} for i >= 2, one fresh eps each."""
        eps = torch.randn_like(z0)
        z_i = self._gather("sqrt_abar", i) * z0 + self._gather("sqrt_1m_abar", i) * eps
        err = (eps - self.eps_hat(z_i, i)).pow(2).sum(-1)
        return self.term_weight[i] * err + z0.shape[1] * self.term_const[i]

    # ------------------------------------------------------------------ the bound

    def nll_terms(self, z: torch.Tensor, exact: bool | None = None) -> dict[str, torch.Tensor]:
        """Bound on -log p(z) [B] in nats: {"total", "L_T", "L_0", "diffusion"}.

        exact=None: the full sum over steps in eval() mode, the one-step unbiased estimate in
        train() mode. With objective="simple" in training, "total" is Ho et al.'s L_simple
        ||eps - eps_hat||^2 at a random step, which is not a bound.
        """
        self.check_latent(z)
        exact = (not self.training) if exact is None else exact
        B = len(z)
        if self.training and self.objective == "simple" and not exact:
            i = torch.randint(1, self.T + 1, (B,), device=z.device)
            eps = torch.randn_like(z)
            z_i = self._gather("sqrt_abar", i) * z + self._gather("sqrt_1m_abar", i) * eps
            simple = (eps - self.eps_hat(z_i, i)).pow(2).sum(-1)
            return {"total": simple, "simple": simple}
        L_T = self.prior_kl(z)
        if exact:
            L_0 = self.terms_at(z, torch.ones(B, dtype=torch.long, device=z.device))
            diffusion = self._sum_step_kls(z)
        else:  # L_0 plus one i ~ U{2..T} per example scaled by T - 1: unbiased; one net call
            ones = torch.ones(B, dtype=torch.long, device=z.device)
            i = torch.randint(2, self.T + 1, (B,), device=z.device)
            both = self.terms_at(z.repeat(2, 1), torch.cat([ones, i])).view(2, B)
            L_0, diffusion = both[0], (self.T - 1) * both[1]
        return {"total": L_T + diffusion + L_0, "L_T": L_T, "diffusion": diffusion, "L_0": L_0}

    def _sum_step_kls(self, z0: torch.Tensor) -> torch.Tensor:
        """sum_{i=2..T} L_{i-1}(z0) [B], one eps per (example, step), in chunks of rows."""
        B, steps = len(z0), torch.arange(2, self.T + 1, device=z0.device)
        per_chunk = max(1, self.eval_chunk // max(B, 1))  # steps per denoiser call
        total = torch.zeros(B, device=z0.device, dtype=z0.dtype)
        for start in range(0, len(steps), per_chunk):
            s = steps[start : start + per_chunk]  # [S]
            kl = self.terms_at(z0.repeat(len(s), 1), s.repeat_interleave(B))  # step-major
            total = total + kl.view(len(s), B).sum(0)
        return total

    # ------------------------------------------------------------------ sampling

    @torch.no_grad()
    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        sampler: Literal["ancestral", "ddim"] = "ancestral",
        steps: int | None = None,
        eta: float = 0.0,
        progress: bool | None = None,
        **kw,
    ) -> torch.Tensor:
        """z0 [n, Z]: ancestral sampling through all T steps (eqs. 13-14), or DDIM (Song et al.
        2021, eq. 12) on `steps` evenly spaced steps with stochasticity eta (0: deterministic).
        """
        if sampler not in ("ancestral", "ddim"):
            raise UserError(f"diffusion prior: sampler {sampler!r}; use 'ancestral' or 'ddim'")
        z = self.standard_normal(n, generator)  # z_T
        show = sys.stderr.isatty() if progress is None else progress
        if sampler == "ancestral":
            if steps not in (None, self.T):
                raise UserError(
                    f"ancestral sampling runs all T={self.T} steps (got steps={steps}); "
                    "fix: use sampler=ddim for fewer steps"
                )
            for i in tqdm(range(self.T, 0, -1), desc="prior", disable=not show):
                idx = torch.full((n,), i, dtype=torch.long, device=z.device)
                z = self.reverse_mean(z, idx, self.eps_hat(z, idx))
                if i > 1:  # the last step returns the mean (Ho et al. 2020, Alg. 2)
                    z = z + self.sigma[i] * self.standard_normal(n, generator)
            return z
        return self._ddim(z, steps or self.T, eta, generator, show)

    def _ddim(self, z, steps, eta, generator, show):
        if not 1 <= steps <= self.T:
            raise UserError(f"ddim steps={steps}; fix: choose 1 <= steps <= T={self.T}")
        abar = self.sqrt_abar.double() ** 2
        grid = torch.linspace(self.T, 0, steps + 1).round().long().tolist()  # T ... 0
        for i, j in tqdm(list(zip(grid[:-1], grid[1:])), desc="prior", disable=not show):
            idx = torch.full((len(z),), i, dtype=torch.long, device=z.device)
            eps = self.eps_hat(z, idx)
            a_i, a_j = abar[i].item(), abar[j].item()
            x0 = (z - math.sqrt(1 - a_i) * eps) / math.sqrt(a_i)
            sig = eta * math.sqrt((1 - a_j) / (1 - a_i) * (1 - a_i / a_j)) if j > 0 else 0.0
            z = math.sqrt(a_j) * x0 + math.sqrt(max(1 - a_j - sig**2, 0.0)) * eps
            if sig > 0:
                z = z + sig * self.standard_normal(len(z), generator)
        return z
