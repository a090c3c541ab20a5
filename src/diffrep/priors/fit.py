"""Two-stage priors: fit p(z) to a frozen VAE's aggregate posterior, then swap it in.

Seed 004 trains the prior jointly with the VAE (eq. 20). The two-stage alternative fits a flow or
diffusion prior afterwards to the aggregate posterior q(z) = (1/N) sum_i q(z|x_i) of a VAE
trained with the Gaussian prior (Hoffman & Johnson 2016): the encoder and decoder stay frozen,
and the prior is trained by maximum likelihood (or its bound) on fresh samples z ~ q(z|x_i).
"""

from __future__ import annotations

import copy
import sys

import torch
from tqdm import tqdm

from diffrep.errors import UserError
from diffrep.priors.base import Prior


@torch.no_grad()
def aggregate_posterior(
    vae, x0: torch.Tensor, batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, logvar) [N, Z] of q(z|x_i) for every image of x0 [N, C, H, W] (model space)."""
    was_training = vae.training
    vae.eval()
    means, logvars = [], []
    for start in range(0, len(x0), batch_size):
        m, lv = vae.posterior(x0[start : start + batch_size].to(vae.device))
        means.append(m.cpu())
        logvars.append(lv.cpu())
    vae.train(was_training)
    return torch.cat(means), torch.cat(logvars)


@torch.no_grad()
def encode_all(method, x0: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The codes encode(x0) [N, Z] of a deterministic encoder (model-space x0 [N, C, H, W])."""
    was_training = method.training
    method.eval()
    codes = [
        method.encode(x0[s : s + batch_size].to(method.device)).flatten(1).cpu()
        for s in range(0, len(x0), batch_size)
    ]
    method.train(was_training)
    return torch.cat(codes)


def fit_prior(
    prior: Prior,
    z_data: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
    steps: int,
    *,
    batch_size: int = 256,
    lr: float = 1e-3,
    generator: torch.Generator | None = None,
    progress: bool | None = None,
) -> list[float]:
    """Fit `prior` by minimising E[nll_terms(z)["total"]] with Adam (cosine-decayed lr).

    Returns the training loss per step.

    z_data is either samples z [N, Z] or an aggregate posterior (mean, logvar) [N, Z] each, from
    which every step draws fresh z = mean + exp(logvar / 2) * eps for a random minibatch.
    """
    if isinstance(z_data, (tuple, list)):
        mean, logvar = z_data
    else:
        mean, logvar = z_data, None
    if mean.dim() != 2 or mean.shape[1] != prior.dim:
        raise UserError(
            f"fit_prior: latents of shape {list(mean.shape)} do not match a {prior.dim}-D prior; "
            "fix: build the prior with the VAE's latent_dim"
        )
    if steps < 1 or len(mean) < 2:
        raise UserError("fit_prior: need steps >= 1 and at least 2 latent samples")
    device = prior.device
    opt = torch.optim.Adam(prior.parameters(), lr=lr)
    # Cosine decay to 0: the last iterates average out minibatch noise (the fitted prior is
    # the final one, there is no validation split here).
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    prior.train()
    losses = []
    show = sys.stderr.isatty() if progress is None else progress
    for _ in tqdm(range(steps), desc="fit prior", disable=not show):
        idx = torch.randint(len(mean), (min(batch_size, len(mean)),), generator=generator)
        z = mean[idx]
        if logvar is not None:
            eps = torch.randn(z.shape, generator=generator)
            z = z + torch.exp(0.5 * logvar[idx]) * eps
        loss = prior.nll_terms(z.to(device))["total"].mean()
        if not torch.isfinite(loss):
            raise UserError("fit_prior: the prior's loss became NaN/inf; fix: lower lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    prior.eval()
    return losses


def swap_prior(vae, prior: Prior, copy_vae: bool = True):
    """The trained `vae` with `prior` in place of its own (a copy unless copy_vae=False).

    The VAE's ELBO, IW-NLL and samples then use the new prior; `vae.bound_is_valid` follows
    `prior.bound_is_valid`.
    """
    if prior.dim != vae.latent_dim:
        raise UserError(
            f"swap_prior: the prior is {prior.dim}-D but the VAE's latent is {vae.latent_dim}-D; "
            "fix: fit a prior of the VAE's latent_dim"
        )
    out = copy.deepcopy(vae) if copy_vae else vae
    out.prior = prior.to(vae.device)
    return out
