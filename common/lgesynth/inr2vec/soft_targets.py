"""Soft mask targets from the signed distance to each mask's edge (inr2vec's ``mask_softness_mm``).

Trained on hard {0, 1} masks, the decoder's mask logits only have to change sign at the edge: BCE keeps
pushing them to large magnitudes on both sides, so the logit field of a subject is a step, and the logits of
a latent between two subjects are an average of two steps. Where the two hearts disagree, the average is
decided by whichever step happens to be larger: a blend, thicker and duller than either heart
(docs/experiments.md, "edm_synth: Are the samples' dull scar and narrow spreads the EDM's or the decoder's?
(phantom)").

With a softness tau (mm) the target of a point at signed distance ``s`` from the edge (mm, negative inside) is

    p(s) = sigmoid(-s / tau)

whose BCE minimiser is the logit ``-s / tau``: the decoder learns a logit that is a signed distance near the
edge (within a few tau; further out the loss saturates). Averaging two signed distances moves the edge half way
between the two subjects' edges, which is how shapes are morphed (the zero level set of blended distance
fields). The threshold is unchanged: ``p > 0.5`` exactly where the hard mask is 1, since the edge lies half a
voxel beyond the last voxel inside (``s = -(d_in - h / 2)`` inside and ``d_out - h / 2`` outside, with ``d``
the Euclidean distance to the nearest voxel of the other side and ``h`` the finest voxel size).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage as ndi


def signed_distance_mm(mask: np.ndarray, spacing_mm) -> np.ndarray:
    """``mask (X, Y, Z)`` bool -> signed distance (mm) of every voxel to the mask's edge, < 0 inside, > 0 outside.

    An empty mask is +inf everywhere, a full one -inf (no edge)."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return np.full(mask.shape, np.inf)
    if mask.all():
        return np.full(mask.shape, -np.inf)
    half = 0.5 * float(min(spacing_mm))
    inside = ndi.distance_transform_edt(mask, sampling=spacing_mm)
    outside = ndi.distance_transform_edt(~mask, sampling=spacing_mm)
    return np.where(mask, half - inside, outside - half)


def soft_mask_targets(targets: torch.Tensor, shape, spacing_mm, softness_mm: float) -> torch.Tensor:
    """``targets (subjects, X*Y*Z, 3)`` = (intensity, myocardium, scar) with {0, 1} masks on a C-order grid of
    ``shape`` -> a copy whose mask channels are ``sigmoid(-s / softness_mm)`` (module doc); ``softness_mm <= 0``
    returns ``targets`` unchanged. ``spacing_mm``: (3,) voxel size of the grid."""
    if softness_mm <= 0:
        return targets
    shape = tuple(int(n) for n in shape)
    if targets.dim() != 3 or targets.shape[1] != int(np.prod(shape)) or targets.shape[2] < 3:
        raise ValueError(f"targets must be (subjects, {int(np.prod(shape))}, 3) on a {shape} grid, got {tuple(targets.shape)}")
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    out = targets.clone()
    masks = (targets[..., 1:3] > 0.5).cpu().numpy()
    for subject in range(targets.shape[0]):
        for channel in (1, 2):
            s = signed_distance_mm(masks[subject, :, channel - 1].reshape(shape), spacing)
            out[subject, :, channel] = torch.sigmoid(torch.from_numpy(-s.reshape(-1) / softness_mm)).to(out)
    return out
