"""Post-processing of predicted labels: drop scar specks (nnU-Net-style connected-component clean-up).

A segmenter that has learned scar often leaves a few scar voxels in scar-free hearts; the case then
scores scar Dice 0 instead of 1. ``RemoveSmallScard`` relabels every scar component smaller than
``min_scar_ml`` as healthy myocardium (scar lies inside the myocardium, so the myocardium mask is
unchanged). nnU-Net chooses such a step on validation cases; so should you (``scar_seg`` docs):
the default 0 leaves predictions as they are.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.transforms import MapTransform
from scipy import ndimage as ndi

from lgesynth.data.labels import MYOCARDIUM, SCAR
from lgesynth.io import spacing_from_affine


def voxel_ml(affine) -> float:
    """Volume of one voxel in millilitres from a 4 x 4 affine (mm)."""
    return float(np.prod(spacing_from_affine(affine))) / 1000.0


def remove_small_scar(label: np.ndarray, min_voxels: float) -> np.ndarray:
    """``label`` (X, Y, Z) with 0 / 1 / 2: scar components (26-connected) under ``min_voxels`` become 1."""
    scar = label == SCAR
    if min_voxels <= 0 or not scar.any():
        return label
    comps, n = ndi.label(scar, structure=np.ones((3, 3, 3), dtype=bool))
    sizes = np.bincount(comps.ravel(), minlength=n + 1)
    small = np.flatnonzero(sizes < min_voxels)
    small = small[small > 0]
    out = label.copy()
    out[np.isin(comps, small)] = MYOCARDIUM
    return out


class RemoveSmallScard(MapTransform):
    """Dictionary transform on a channel-first label ``MetaTensor (1, X, Y, Z)`` (its affine gives the voxel
    volume): scar components smaller than ``min_scar_ml`` millilitres become myocardium."""

    def __init__(self, keys, min_scar_ml: float = 0.0, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.min_scar_ml = float(min_scar_ml)

    def __call__(self, data):
        d = dict(data)
        if self.min_scar_ml <= 0:
            return d
        for key in self.key_iterator(d):
            x = d[key]
            min_voxels = self.min_scar_ml / voxel_ml(np.asarray(x.affine))
            cleaned = np.stack([remove_small_scar(c.astype(np.int64), min_voxels) for c in x.detach().cpu().numpy()])
            d[key] = type(x)(torch.as_tensor(cleaned, dtype=x.dtype), meta=x.meta)
        return d
