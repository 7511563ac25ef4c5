"""inr2vec training: encoder + implicit decoder reconstruct each subject's canonical volume and masks.

    z_s = E(theta_s)                       latent of subject s from its INR weights
    L   = mean_s L_joint(D(x_s, z_s), t_s)  eq. (1) of inr/loss.py at sampled points x_s

Targets ``t_s`` come either from the canonical volumes (``PointSampler`` over the grid, mask edges
over-sampled and importance-weighted so the sampled loss stays an unbiased estimate of the full-grid
loss), or from the INR itself (``targets_from_inr``: the INR is the data, as in inr2vec;
its decoded masks are the mask targets). A batch is a dict (what ignite passes around):
``{"params": [w0 (S, in, out), b0 (S, out), ...], "coords": (S, P, 3), "targets": (S, P, 3)}`` and
optionally ``"weights": (S, P)`` (each point's share of the mean, ``joint_loss``'s ``point_weights``);
without ``"targets"`` the step renders them from ``params`` (before any weight augmentation).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from lgesynth.inr.loss import LossWeights, decode, fit_metrics, joint_loss
from lgesynth.inr.render import CHUNK, forward_chunked
from lgesynth.inr.siren import SirenSpec
from lgesynth.inr2vec.encoder import Inr2VecEncoder


@torch.no_grad()
def targets_from_inr(params: list[torch.Tensor], coords: torch.Tensor, spec: SirenSpec, chunk: int = CHUNK) -> torch.Tensor:
    """Training targets rendered from the INRs: ``(subjects, points, 3)`` = (intensity, myocardium, scar).

    ``coords``: ``(points, 3)`` shared or ``(subjects, points, 3)``. Masks are the INR's decoded masks
    (``loss.decode``: p > 0.5, scar inside myocardium) as {0, 1} floats, like a canonical label.
    """
    out = forward_chunked(params, coords, spec, chunk)
    myo, scar = decode(torch.sigmoid(out[..., 1]), torch.sigmoid(out[..., 2]))
    return torch.stack([out[..., 0], myo.to(out.dtype), scar.to(out.dtype)], dim=-1)


class Inr2VecModel(nn.Module):
    """Encoder + decoder with the joint reconstruction loss.

    Args:
        encoder: ``Inr2VecEncoder`` (knows the SIREN spec).
        decoder: ``ImplicitDecoder`` or ``SirenDecoder`` with ``latent_dim == encoder.latent_dim``.
        loss_weights: weights of the mask terms of eq. (1).
        latent_noise: in training, the decoder reads ``z + latent_noise * std_batch(z) * eps`` (eps ~ N(0, I),
            per latent dimension): it must render each subject from a neighbourhood of its latent, not one point.
    """

    def __init__(self, encoder: Inr2VecEncoder, decoder: nn.Module, loss_weights: LossWeights = LossWeights(),
                 latent_noise: float = 0.0):
        super().__init__()
        assert decoder.latent_dim == encoder.latent_dim, (decoder.latent_dim, encoder.latent_dim)
        self.encoder, self.decoder, self.loss_weights = encoder, decoder, loss_weights
        self.latent_noise = float(latent_noise)

    @property
    def spec(self) -> SirenSpec:
        return self.encoder.spec

    def encode(self, params: list[torch.Tensor]) -> torch.Tensor:
        """``(subjects, latent_dim)``."""
        return self.encoder(params)

    def forward(self, params: list[torch.Tensor], coords: torch.Tensor) -> torch.Tensor:
        """Raw outputs ``(subjects, points, 3)`` at ``coords (subjects, points, 3)``."""
        z = self.encoder(params)
        if self.training and self.latent_noise > 0 and z.shape[0] > 1:
            z = z + self.latent_noise * z.detach().std(0, keepdim=True) * torch.randn_like(z)
        return self.decoder(coords, z)

    def loss(self, params: list[torch.Tensor], coords: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean over subjects of eq. (1)."""
        return joint_loss(self(params, coords), targets, self.loss_weights).mean()


def train_step(model: Inr2VecModel, optimizer: torch.optim.Optimizer, batch: Mapping, augment=None,
               grad_clip: float | None = 1.0, bf16: bool = False) -> dict[str, float]:
    """One optimisation step on ``batch`` (see module doc).

    Args:
        augment: optional ``params -> params`` applied to the weights after the targets are fixed
            (e.g. ``functools.partial(augment_params, spec=spec, permute_prob=0.5)``).
        grad_clip: max global grad norm (None: no clipping).
        bf16: run encoder and decoder GEMMs under bfloat16 autocast (fp32 weights, loss in fp32). Worth
            it on CPUs with native bf16 (AVX512-BF16/AMX): 16 subjects x 4096 points, default sizes, took
            ~1.0 s instead of ~2.8 s per step on one core of the dev machine.
    Returns:
        ``{"loss": float, "grad_norm": float}``.
    """
    model.train()
    params, coords = list(batch["params"]), batch["coords"]
    targets = batch.get("targets")
    if targets is None:
        targets = targets_from_inr(params, coords, model.spec)
    if augment is not None:
        params = augment(params)
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(coords.device.type, dtype=torch.bfloat16, enabled=bf16):
        pred = model(params, coords)
    loss = joint_loss(pred.float(), targets, model.loss_weights, batch.get("weights")).mean()
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip else float("inf"))
    optimizer.step()
    return {"loss": float(loss.detach()), "grad_norm": float(norm)}


def sample_batch(params: list[torch.Tensor], coords_full: torch.Tensor, points: int, rows: torch.Tensor | None = None,
                 targets_full: torch.Tensor | None = None, generator: torch.Generator | None = None) -> dict:
    """A training batch: ``points`` grid points per subject drawn uniformly.

    Args:
        params: the bank's stacked weights; ``rows`` selects subjects (default: all).
        coords_full: ``(grid_points, 3)`` shared grid, or ``(subjects, grid_points, 3)`` per subject.
        targets_full: ``(subjects, grid_points, 3)`` canonical targets of the same subjects (optional;
            without them the step renders the INR). For myocardium over-sampling use
            ``inr.sampling.PointSampler`` and build the dict yourself.
    """
    S = params[0].shape[0]
    rows = torch.arange(S) if rows is None else rows
    idx = torch.randint(coords_full.shape[0], (len(rows), points), generator=generator)
    if coords_full.dim() == 3:
        coords = torch.gather(coords_full[rows], 1, idx.unsqueeze(-1).expand(-1, -1, coords_full.shape[-1]))
    else:
        coords = coords_full[idx]
    batch = {"params": [p[rows] for p in params], "coords": coords}
    if targets_full is not None:
        batch["targets"] = torch.gather(targets_full[rows], 1, idx.unsqueeze(-1).expand(-1, -1, targets_full.shape[-1]))
    return batch


@torch.no_grad()
def encode_bank(encoder: Inr2VecEncoder, params, batch_size: int = 64) -> torch.Tensor:
    """Latents of all subjects, ``(subjects, latent_dim)``, in eval mode and batches.

    ``params``: stacked tensors, or an ``InrBank`` (its architecture is checked first).
    """
    if hasattr(params, "stacked"):
        encoder.check_spec(params.spec, "INR bank")
        params = params.stacked()
    encoder.eval()
    S = params[0].shape[0]
    return torch.cat([encoder([p[s: s + batch_size] for p in params]) for s in range(0, S, batch_size)])


@torch.no_grad()
def evaluate(model: Inr2VecModel, params: list[torch.Tensor], coords_full: torch.Tensor,
             targets_full: torch.Tensor | None = None, chunk: int = 32768) -> dict[str, torch.Tensor]:
    """Per-subject ``psnr``, ``dice_myo``, ``dice_scar``, ``has_scar`` of the reconstruction (``inr.loss.fit_metrics``).

    ``coords_full``: ``(points, 3)`` shared or ``(subjects, points, 3)``; ``targets_full``:
    ``(subjects, points, 3)``, or None to compare with the INRs themselves.
    """
    model.eval()
    if targets_full is None:
        targets_full = targets_from_inr(params, coords_full, model.spec, chunk)
    pred = model.decoder.decode(coords_full, encode_bank(model.encoder, params), chunk)
    return fit_metrics(pred, targets_full)
