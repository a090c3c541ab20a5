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
The terms are `diffrep.diffusion.objectives`' (step_kl, gaussian_decoder_nll, prior_kl) on the
schedule's gamma table; this module only chooses which steps to evaluate.
Training uses an unbiased one-sample estimate (one i ~ U{2..T} per example, times T - 1, plus
L_0 and L_T); evaluation (`eval()` mode or `exact=True`) sums all T - 1 KL terms, batched over i.

Importance weights (`log_p_hat`): L(z0) is E_q[-log w] for the path weight

    w(z_{1:T}) = p(z_{0:T}) / q(z_{1:T} | z0),   z_{1:T} ~ q(z_{1:T} | z0),   E_q[w] = p(z0),

so one path per importance sample gives an unbiased estimate of p(z0), which is what the
importance-weighted NLL of a VAE needs (Burda et al. 2016 on the extended latent z_{0:T}).
exp(-L_hat(z0)) of the step-wise KL estimate is not: its expectation exceeds p(z0).
"""

from __future__ import annotations

from typing import Literal

import torch

from diffrep.diffusion import samplers
from diffrep.diffusion.objectives import gaussian_decoder_nll, prior_kl, step_kl
from diffrep.diffusion.process import (
    log_alpha2_sigma2,
    posterior_coefficients,
    q_sample,
    x0_from_eps,
)
from diffrep.diffusion.schedules import SCHEDULES, Schedule
from diffrep.errors import UserError
from diffrep.nets.mlp import ResMLP
from diffrep.priors.base import LOG_2PI, PRIORS, Prior


def ddpm_schedule(T: int, schedule: str) -> Schedule:
    """The DDPM noise schedule from `diffrep.diffusion.schedules` (gamma(0) = -inf: z0 clean).

    "linear" is DDPM's beta_i = linspace(1e-4, 0.02) for T = 1000, scaled by 1000 / T for other
    T so that the chain still ends near N(0, I) (Nichol & Dhariwal 2021 sec. 3); "cosine" is
    their eq. 17 (independent of T) with beta_i <= 0.5.
    """
    if schedule == "linear":
        if T < 21:
            raise UserError(f"the linear schedule needs T >= 21 (got {T}); fix: raise T")
        scale = 1000.0 / T
        return SCHEDULES.build("ddpm-linear", T=T, beta_1=1e-4 * scale, beta_T=0.02 * scale)
    # max_beta 0.5, not 0.999: L_{i-1} weighs ||eps - eps_hat||^2 by ~beta_i / (2 alpha_i),
    # which explodes (as does the sampler's 1 / sqrt(alpha_i)) on the last clipped steps.
    return SCHEDULES.build("cosine", T=T, max_beta=0.5)


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
            variance: sigma_i^2 of the reverse steps in the bound, beta_i (Ho et al.; exact for
                N(0, I) data) or the posterior beta_tilde_i (exact for a point mass).
                sigma_1^2 = beta_1 either way (L_0).
            hidden, depth, emb_dim: the ResMLP denoiser.
            eval_chunk: rows (examples x steps) per denoiser call when summing all steps.
        """
        super().__init__(dim)
        if T < 2:
            raise UserError(f"diffusion prior: T={T}; fix: use T >= 2 (e.g. 1000)")
        self.T = int(T)
        self.objective = objective
        self.bound_is_valid = objective == "bound"
        self.reverse_var = "beta" if variance == "beta" else "posterior"
        self.eval_chunk = int(eval_chunk)
        self.schedule = ddpm_schedule(self.T, schedule)
        self.eps_model = ResMLP(dim, hidden=hidden, depth=depth, emb_dim=emb_dim)
        with torch.no_grad():  # gamma_i at t_i = i / T, float64 [T + 1], gamma_0 = -inf
            self.register_buffer("gammas", self.schedule.table(self.T), persistent=False)

    # ------------------------------------------------------------------ the bound

    def _eps_error(self, z0: torch.Tensor, i: torch.Tensor):
        """z_i ~ q(z_i | z0) at integer steps i [N] -> (z_i, eps_hat, ||eps - eps_hat||^2 [N])."""
        eps = torch.randn_like(z0)
        z_i = q_sample(z0, self.gammas[i], eps)
        eps_hat = self.eps_model(z_i, i.to(z0.dtype) / self.T)  # the net sees t = i / T
        return z_i, eps_hat, (eps - eps_hat).pow(2).sum(-1)

    def _decoder_nll(self, z0, z_1, eps_hat) -> torch.Tensor:
        """L_0 = -log N(z0; mu_theta(z_1, 1), sigma_1^2 I), sigma_1^2 = beta_1 [B]."""
        g1 = self.gammas[1].expand(len(z0))
        return gaussian_decoder_nll(z0, z_1, g1, lambda: eps_hat)

    def _step_kls(self, i: torch.Tensor, sq_err: torch.Tensor) -> torch.Tensor:
        """L_{i-1} for steps i >= 2 [N] from ||eps - eps_hat||^2 (closed-form Gaussian KL)."""
        return step_kl(self.gammas[i - 1], self.gammas[i], sq_err, self.dim, self.reverse_var)

    def nll_terms(self, z: torch.Tensor, exact: bool | None = None) -> dict[str, torch.Tensor]:
        """Bound on -log p(z) [B] in nats: {"total", "L_T", "L_0", "diffusion"}.

        exact=None: the full sum over steps in eval() mode, the one-step unbiased estimate in
        train() mode. With objective="simple" in training, "total" is Ho et al.'s L_simple
        ||eps - eps_hat||^2 at a random step, which is not a bound.
        """
        self.check_latent(z)
        exact = (not self.training) if exact is None else exact
        B = len(z)
        ones = torch.ones(B, dtype=torch.long, device=z.device)
        if self.training and self.objective == "simple" and not exact:
            i = 1 + self._stratified(B, self.T, z.device)
            simple = self._eps_error(z, i)[2]
            return {"total": simple, "simple": simple}
        L_T = prior_kl(z, self.gammas[-1].expand(B)).to(z.dtype)
        if exact:
            z_1, eps_hat, _ = self._eps_error(z, ones)
            L_0 = self._decoder_nll(z, z_1, eps_hat)
            diffusion = self._sum_step_kls(z)
        else:  # L_0 plus one i ~ U{2..T} per example scaled by T - 1: unbiased; one net call
            i = 2 + self._stratified(B, self.T - 1, z.device)
            z_i, eps_hat, sq = self._eps_error(z.repeat(2, 1), torch.cat([ones, i]))
            L_0 = self._decoder_nll(z, z_i[:B], eps_hat[:B])
            diffusion = (self.T - 1) * self._step_kls(i, sq[B:])
        return {"total": L_T + diffusion + L_0, "L_T": L_T, "diffusion": diffusion, "L_0": L_0}

    @staticmethod
    def _stratified(B: int, n: int, device) -> torch.Tensor:
        """B draws from U{0..n-1}, each exactly uniform, jointly spread over the range.

        floor((perm_b + u) n / B) with a random permutation and one u ~ U[0, 1): every example's
        step is uniform (the estimate stays unbiased per example) while the batch covers all
        steps evenly, which lowers the variance of the batch loss.
        """
        u = torch.rand((), device=device)
        perm = torch.randperm(B, device=device)
        return ((perm + u) * n / B).floor().long().clamp(max=n - 1)

    def _sum_step_kls(self, z0: torch.Tensor) -> torch.Tensor:
        """sum_{i=2..T} L_{i-1}(z0) [B], one eps per (example, step), many steps per net call
        (`objectives.ddpm_bound(exact=True)` computes the same sum with one call per step)."""
        B, steps = len(z0), torch.arange(2, self.T + 1, device=z0.device)
        per_chunk = max(1, self.eval_chunk // max(B, 1))
        total = torch.zeros(B, device=z0.device, dtype=z0.dtype)
        for start in range(0, len(steps), per_chunk):
            i = steps[start : start + per_chunk].repeat_interleave(B)  # step-major [S*B]
            sq = self._eps_error(z0.repeat(len(i) // B, 1), i)[2]
            total = total + self._step_kls(i, sq).view(-1, B).sum(0)
        return total

    # ------------------------------------------------------------------ importance weights

    def log_p_hat(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z_{0:T}) - log q(z_{1:T} | z0) [B] on one path z_{1:T} ~ q(z_{1:T} | z0).

        exp of it is an unbiased estimate of p(z0) (module docstring); its expectation is
        -L(z0), the bound `nll_terms` sums. The path is drawn backwards, z_T ~ q(z_T | z0), then
        z_{i-1} ~ q(z_{i-1} | z_i, z0), and each step contributes the log-ratio of the reverse
        model to that posterior on the same z_{i-1} (small per step, so the T-term sum keeps
        its precision; float64 throughout). T network calls per example, batched over steps.
        """
        self.check_latent(z)
        f64, B, Z, T = torch.float64, len(z), self.dim, self.T
        g = self.gammas.to(f64)  # [T + 1], g[0] = -inf
        z0 = z.to(f64)  # [B, Z]
        eps = torch.randn_like(z0)
        z_t = q_sample(z0, g[T], eps)  # z_T
        # log N(z_T; 0, I) - log N(z_T; alpha_T z0, sigma_T^2 I)
        log_s2_T = log_alpha2_sigma2(g[T])[1]
        logw = 0.5 * (eps.pow(2).sum(-1) - z_t.pow(2).sum(-1) + Z * log_s2_T)
        per_chunk = max(1, self.eval_chunk // max(B, 1))
        top = T
        while top >= 1:
            steps = list(range(top, max(top - per_chunk, 0), -1))  # top, top - 1, ...
            zs, es = [], []
            for i in steps:  # draw the path down through this block of steps
                zs.append(z_t)
                if i >= 2:
                    c_z, c_x, var_q = posterior_coefficients(g[i - 1], g[i])
                    es.append(torch.randn_like(z0))
                    z_t = c_z * z_t + c_x * z0 + var_q.sqrt() * es[-1]
                else:
                    z_t = z0
            t_in = torch.tensor(steps, device=z.device).repeat_interleave(B).to(z.dtype) / T
            eps_hat = self.eps_model(torch.cat(zs).to(z.dtype), t_in).to(f64).view(-1, B, Z)
            for j, i in enumerate(steps):
                x0_hat = x0_from_eps(zs[j], g[i], eps_hat[j])  # [B, Z]
                if i == 1:  # log p(z0 | z_1) = log N(z0; x0_hat, sigma_1^2 I)
                    log_s2 = log_alpha2_sigma2(g[1])[1]
                    sq = (z0 - x0_hat).pow(2).sum(-1)
                    logw = logw - 0.5 * (sq * torch.exp(-log_s2) + Z * (LOG_2PI + log_s2))
                    continue
                _, c_x, var_q = posterior_coefficients(g[i - 1], g[i])
                if self.reverse_var == "posterior":
                    var_p = var_q
                else:  # beta_i = 1 - alpha_i^2 / alpha_{i-1}^2
                    la = log_alpha2_sigma2(g[i - 1 : i + 1])[0]
                    var_p = -torch.expm1(la[1] - la[0])
                # z_{i-1} - mu_p = (z_{i-1} - mu_q) + c_x (z0 - x0_hat), mu_q - mu_p exact
                diff = var_q.sqrt() * es[j] + c_x * (z0 - x0_hat)
                logw = logw + (
                    0.5 * es[j].pow(2).sum(-1)
                    - 0.5 * diff.pow(2).sum(-1) / var_p
                    - 0.5 * Z * torch.log(var_p / var_q)
                )
            top = steps[-1] - 1
        return logw  # float64

    # ------------------------------------------------------------------ sampling

    @torch.no_grad()
    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        sampler: Literal["ancestral", "ddim"] = "ancestral",
        steps: int | None = None,
        eta: float = 0.0,
        progress=None,
        **kw,
    ) -> torch.Tensor:
        """z0 [n, Z] from z_T ~ N(0, I) (eqs. 13-14) with `diffrep.diffusion.samplers`:
        "ancestral" (Ho et al. Alg. 2) or "ddim" (Song et al. 2021 eq. 12, eta = 0:
        deterministic) on `steps` evenly spaced steps (default T). Only the MLP over z runs.
        """
        if sampler not in ("ancestral", "ddim"):
            raise UserError(f"diffusion prior: sampler {sampler!r}; use 'ancestral' or 'ddim'")
        steps = self.T if steps is None else int(steps)
        z_T = self.standard_normal(n, generator)
        if sampler == "ancestral":
            return samplers.ancestral(
                self.eps_model, self.schedule, z_T, steps, generator=generator, progress=progress
            )
        return samplers.ddim(
            self.eps_model,
            self.schedule,
            z_T,
            steps,
            eta=eta,
            generator=generator,
            progress=progress,
        )
