"""Test-time refinement of inr2vec latents: the encoder's latent is the start, a few Adam steps fit it.

The encoder reads an INR's weights in one pass; on subjects it was not trained on its latent is only
a first guess (held-out round trips sit near the cohort mean). Functa (Dupont et al. 2022) and GEM
obtain their latents by optimisation instead. Here both are combined: starting from ``z_0 = E(theta)``,
the decoder frozen, ``steps`` Adam steps minimise the joint loss of eq. (1) (``inr.loss``) between the
decoder's output and the subject's *own INR* at ``points`` random grid points per step:

    z* = argmin_z  L( D(x, z), INR_theta(x) ) + pull * |z - z_0|^2 / |z_0|^2,   x ~ U(grid),   z from z_0

The second term (``pull`` > 0) anchors the latent to the encoder's: unanchored, 100 steps move a
held-out latent by about its own norm (phantom-120), the round trip improves but the latents lose the
linear scar / no-scar structure the encoder gave them (probe 1.0 -> 0.71-0.79), which synthesis needs.
The term is relative to |z_0|^2 so ``pull`` is scale-free: at ``pull`` 1 a move of the latent's own
norm costs one unit of the joint loss.

Only the INR bank is used (its rendered intensity and decoded masks, as in training), never the
subject's image or label, so a refined latent is still a function of the INR alone. Deterministic for
a given ``seed``. Shapes: ``latents (S, latent_dim)``, ``coords_full (points, 3)`` shared grid.
"""

from __future__ import annotations

import contextlib

import torch

from lgesynth.inr.loss import joint_loss
from lgesynth.inr2vec.train import Inr2VecModel, targets_from_inr


@contextlib.contextmanager
def _frozen(module: torch.nn.Module):
    """Parameters of ``module`` excluded from autograd inside the block; modes and flags restored after."""
    flags = [p.requires_grad for p in module.parameters()]
    training = module.training
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p, f in zip(module.parameters(), flags):
            p.requires_grad_(f)
        module.train(training)


def refine_latents(model: Inr2VecModel, params: list[torch.Tensor], latents: torch.Tensor, coords_full: torch.Tensor,
                   steps: int = 100, lr: float = 0.1, points: int = 2048, batch_size: int = 16, seed: int = 0,
                   pull: float = 0.0, progress: bool = False) -> torch.Tensor:
    """Refined latents ``(S, latent_dim)`` (module doc); ``steps <= 0`` returns ``latents`` unchanged.

    Args:
        model: the trained encoder + decoder (only the decoder is used; it stays frozen).
        params: the subjects' stacked INR weights ``[w0 (S, in, out), b0 (S, out), ...]``.
        latents: their encoder latents ``(S, latent_dim)``, the starting point.
        coords_full: ``(grid points, 3)`` canonical grid the INRs were fitted on.
        steps, lr, points: Adam steps, learning rate, random grid points per subject and step.
        batch_size: subjects refined together (independent problems, one GEMM).
        pull: weight of the anchor to the encoder's latent (module doc); 0 for none.
    """
    if steps <= 0:
        return latents
    device = latents.device
    out = torch.empty_like(latents)
    generator = torch.Generator().manual_seed(int(seed))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=latents.shape[0], desc="inr2vec refine latents", unit="subject")
    with _frozen(model.decoder) as decoder:
        for s in range(0, latents.shape[0], batch_size):
            part = [p[s: s + batch_size] for p in params]
            targets = targets_from_inr(part, coords_full, model.spec)  # (B, grid points, 3)
            z0 = latents[s: s + batch_size].detach()
            z = z0.clone().requires_grad_(True)
            z0_sq = z0.pow(2).sum(dim=1).clamp_min(1e-12)  # (B,)
            optimizer = torch.optim.Adam([z], lr=lr)
            for _ in range(int(steps)):
                idx = torch.randint(coords_full.shape[0], (z.shape[0], points), generator=generator).to(device)
                coords = coords_full[idx]
                target = torch.gather(targets, 1, idx.unsqueeze(-1).expand(-1, -1, targets.shape[-1]))
                loss = joint_loss(decoder(coords, z), target, model.loss_weights)  # (B,), independent per subject
                if pull > 0:
                    loss = loss + pull * (z - z0).pow(2).sum(dim=1) / z0_sq
                loss = loss.sum()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            out[s: s + batch_size] = z.detach()
            if bar is not None:
                bar.update(z.shape[0])
    if bar is not None:
        bar.close()
    return out
