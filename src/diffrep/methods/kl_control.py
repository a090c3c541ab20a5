"""KL control for variational methods: beta, KL warm-up and free bits per latent dimension.

The *training* term that replaces KL(q(z|x) || p(z)) in the loss, per example b (nats):

    beta_t  = beta * min(step / warmup_steps, 1)       (warm-up; beta_t = beta if warmup_steps = 0)
    KL_j    = mean_b KL_bj                             (dimension j's KL, averaged over the batch)
    term_b  = beta_t * sum_j ( KL_bj  if KL_j >= lambda  else  lambda )

so mean_b term_b = beta_t * sum_j max(KL_j, lambda): the "free bits" objective of Kingma et al.
2016 (IAF, appendix "free bits") with lambda = `free_bits` nats per dimension. A dimension whose
batch KL is under its floor contributes the constant lambda and no gradient, so the encoder is
not pushed to collapse it to the prior. Under DDP the batch mean is each process's own batch.
The evaluation ELBO always uses the true KL with beta = 1: this class only shapes training.

Usage (vae, vae_vdm, drl):

    self.kl_control = KLControl(beta=beta, warmup_steps=kl_warmup_steps, free_bits=free_bits)
    def on_step(self, step, total_steps): self.kl_control.on_step(step)
    loss = recon + self.kl_control.weight(kl_per_dim)      # kl_per_dim [B, Z] -> [B]
    loss = recon + self.kl_control.loss_term(terms, kl_dims)  # the same, from Prior.kl_terms

`weight` also takes a total KL [B] (a prior with no per-dimension split, e.g. a flow or a
diffusion prior, whose KL is a single-sample estimate of the whole): warm-up and beta apply,
free bits are refused (`check_per_dim` says so at construction, as a UserError).
"""

from __future__ import annotations

import math

import torch

from diffrep.errors import UserError


class KLControl:
    """beta, linear KL warm-up over `warmup_steps` and a free-bits floor (nats per dimension).

    State: only the step of the last `on_step` call (0 before any), so the schedule is a pure
    function of the training step and a resumed run is bit-exact. Holds no tensors.
    """

    def __init__(self, beta: float = 1.0, warmup_steps: int = 0, free_bits: float = 0.0):
        if not (math.isfinite(beta) and beta >= 0):
            raise UserError(f"method.beta={beta} must be a number >= 0 (1: the ELBO); fix: beta=1")
        if int(warmup_steps) != warmup_steps or warmup_steps < 0:
            raise UserError(
                f"method.kl_warmup_steps={warmup_steps} must be a whole number >= 0 (0: no "
                "warm-up); fix: e.g. kl_warmup_steps=1000"
            )
        if not (math.isfinite(free_bits) and free_bits >= 0):
            raise UserError(
                f"method.free_bits={free_bits} must be >= 0 nats per latent dimension (0: off); "
                "fix: e.g. free_bits=0.1"
            )
        self.beta = float(beta)
        self.warmup_steps = int(warmup_steps)
        self.free_bits = float(free_bits)
        self.step = 0

    def __repr__(self) -> str:
        return (
            f"KLControl(beta={self.beta:g}, warmup_steps={self.warmup_steps}, "
            f"free_bits={self.free_bits:g})"
        )

    @property
    def is_plain(self) -> bool:
        """True when the training term is just beta * KL (no warm-up, no free bits)."""
        return self.warmup_steps == 0 and self.free_bits == 0

    def on_step(self, step: int) -> None:
        """Set the training step (0-based) the next `weight` calls belong to."""
        self.step = int(step)

    @property
    def beta_now(self) -> float:
        """beta_t = beta * min(step / warmup_steps, 1): 0 at step 0, beta from warmup_steps on."""
        if self.warmup_steps == 0:
            return self.beta
        return self.beta * min(self.step / self.warmup_steps, 1.0)

    def check_per_dim(self, available: bool, where: str) -> None:
        """Refuse free bits when the KL has no per-dimension split (`where` names the prior)."""
        if self.free_bits > 0 and not available:
            raise UserError(
                f"method.free_bits={self.free_bits:g} needs the KL per latent dimension, but "
                f"{where} gives only a single-sample estimate of the total KL; fix: "
                "prior=gaussian, or free_bits=0 (kl_warmup_steps still works)"
            )

    def floored(self, kl_per_dim: torch.Tensor) -> torch.Tensor:
        """[B, Z] -> [B, Z]: KL_bj where the batch mean KL_j >= free_bits, else the constant
        free_bits (no gradient). Its batch mean per dimension is max(KL_j, free_bits)."""
        if self.free_bits == 0:
            return kl_per_dim
        active = kl_per_dim.detach().mean(0, keepdim=True) >= self.free_bits  # [1, Z]
        return torch.where(active, kl_per_dim, torch.full_like(kl_per_dim, self.free_bits))

    def loss_term(self, terms: dict, kl_dims: torch.Tensor | None) -> torch.Tensor:
        """The loss's KL term [B]: `weight` of the KL per dimension when there is one, else of
        terms["kl"]; kept as terms["kl_train"] when it is not plain beta * KL (for the logs)."""
        kl_train = self.weight(kl_dims if kl_dims is not None else terms["kl"])
        if not self.is_plain:
            terms["kl_train"] = kl_train  # what the loss uses: warmed-up, floored
        return kl_train

    def weight(self, kl: torch.Tensor) -> torch.Tensor:
        """The training KL term [B]: beta_t * sum_j floored(KL)_bj for kl [B, Z] (per dimension),
        or beta_t * kl for a total kl [B] (free bits must then be 0)."""
        if kl.dim() == 1:
            if self.free_bits > 0:
                raise ValueError("free bits need the KL per dimension [B, Z], got a total [B]")
            return self.beta_now * kl
        return self.beta_now * self.floored(kl).sum(-1)
