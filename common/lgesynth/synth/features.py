"""What one heart volume measures: its plausibility and its features (image on a grid whose slice axis is
``axis``, label 0/1/2, voxel size in mm).

- **plausibility** (:func:`plausibility_problems`): scar inside the myocardium; on every slice with
  myocardium, the myocardium is one 2D connected component (8-connected) that encloses a cavity
  (``binary_fill_holes`` adds voxels). Specks, pieces under ``SPECK_FRACTION`` (2 %) of the slice's
  myocardium (decoding noise of a few voxels, which keeping the largest component would remove), are
  not counted as pieces. Open rings are allowed at the most basal myocardial slice
  (the left ventricular outflow tract) and a closed cap at the most apical one (the apex has no
  cavity); which end is apical is read from the anatomy (``seg.regions.apex_at_high_index``).
- **features** (:func:`volume_features`): ``myocardial_volume_ml``; ``wall_thickness_mm`` = mean over
  the ridge of the in-plane distance transform (its local maxima) of ``2 EDT - s`` (``s`` = mean
  in-plane spacing; exact for walls of an odd number of voxels, one voxel short for even ones, the
  same rule on both cohorts); ``scar_burden`` = scar / myocardium voxels; ``contrast_scar_remote`` and
  ``contrast_blood_remote`` = mean intensity of scar (of the blood pool: the filled cavity) minus that
  of the healthy myocardium, in canonical units (each image robustly scaled to [-1, 1]); NaN when the
  region is empty (scar-free volumes have no scar contrast).

The synthetic-cohort report (``synth.report``) and inr2vec's round-trip evaluation both measure with these.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage as ndi

FEATURES = ("myocardial_volume_ml", "wall_thickness_mm", "scar_burden", "contrast_scar_remote", "contrast_blood_remote")
SPECK_FRACTION = 0.02
_EIGHT = np.ones((3, 3), dtype=bool)

def _ends(myo: np.ndarray, axis: int, spacing_mm) -> tuple[int | None, int | None]:
    """``(basal, apical)`` slice indices of the myocardium's slice range (None without myocardium)."""
    from lgesynth.seg.regions import apex_at_high_index, myocardial_slices

    label = myo.astype(np.uint8)
    slices = myocardial_slices(label, axis)
    if slices.size == 0:
        return None, None
    if apex_at_high_index(label, axis, spacing_mm):
        return int(slices[0]), int(slices[-1])
    return int(slices[-1]), int(slices[0])


def plausibility_problems(myo: np.ndarray, scar: np.ndarray | None = None, axis: int = 2, spacing_mm=None,
                          allow_open_base: bool = True, allow_apical_cap: bool = True,
                          speck_fraction: float = SPECK_FRACTION) -> list[str]:
    """Why a myocardium (+ scar) mask pair is implausible; ``[]`` when it passes (see module doc).

    Args:
        myo, scar: (x, y, z) masks (nonzero = inside); ``scar`` None skips the subset check.
        axis: the slice axis (2 on the canonical grid).
        spacing_mm: (3,) voxel size, for finding the apex.
        speck_fraction: pieces smaller than this share of the slice's myocardium are not counted.
    """
    myo = np.asarray(myo) != 0
    problems = []
    if scar is not None:
        outside = int(np.count_nonzero((np.asarray(scar) != 0) & ~myo))
        if outside:
            problems.append(f"{outside} scar voxels outside the myocardium")
    basal, apical = _ends(myo, axis, spacing_mm)
    if basal is None:
        return problems + ["no myocardium"]
    m = np.moveaxis(myo, axis, 0)
    for k in range(m.shape[0]):
        if not m[k].any():
            continue
        labelled, n = ndi.label(m[k], structure=_EIGHT)
        sizes = np.bincount(labelled.ravel(), minlength=n + 1)[1:]
        pieces = int((sizes >= speck_fraction * sizes.sum()).sum())
        if pieces != 1:
            problems.append(f"slice {k}: myocardium in {pieces} pieces")
        encloses = int(ndi.binary_fill_holes(m[k]).sum()) > int(m[k].sum())
        if not encloses and not (allow_open_base and k == basal) and not (allow_apical_cap and k == apical):
            problems.append(f"slice {k}: myocardium encloses no cavity (open ring)")
    return problems


def mean_or_nan(values: np.ndarray) -> float:
    """Mean of an array, NaN when it is empty."""
    return float(values.mean()) if values.size else float("nan")


def volume_features(image: np.ndarray | None, label: np.ndarray, spacing_mm, axis: int = 2) -> dict[str, float]:
    """The ``FEATURES`` of one volume (see module doc); intensity contrasts NaN without an image."""
    label = np.asarray(label)
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    myo, scar = np.isin(label, (1, 2)), label == 2
    in_plane = [a for a in range(3) if a != axis]
    s_plane = spacing[in_plane]
    m = np.moveaxis(myo, axis, 0)
    cavity = np.zeros_like(m)
    ridge_thickness = []
    for k in range(m.shape[0]):
        if not m[k].any():
            continue
        cavity[k] = ndi.binary_fill_holes(m[k]) & ~m[k]
        edt = ndi.distance_transform_edt(np.pad(m[k], 1), sampling=s_plane)[1:-1, 1:-1]
        ridge = m[k] & (edt >= ndi.maximum_filter(edt, footprint=_EIGHT, mode="constant"))
        ridge_thickness.append(2 * edt[ridge] - s_plane.mean())
    cavity = np.moveaxis(cavity, 0, axis)
    n_myo, n_scar = int(myo.sum()), int(scar.sum())
    out = {"myocardial_volume_ml": n_myo * float(np.prod(spacing)) / 1000.0,
           "wall_thickness_mm": mean_or_nan(np.concatenate(ridge_thickness)) if ridge_thickness else float("nan"),
           "scar_burden": n_scar / n_myo if n_myo else float("nan"),
           "contrast_scar_remote": float("nan"), "contrast_blood_remote": float("nan")}
    if image is not None:
        image = np.asarray(image, dtype=np.float64)
        remote = mean_or_nan(image[myo & ~scar])
        out["contrast_scar_remote"] = mean_or_nan(image[scar]) - remote
        out["contrast_blood_remote"] = mean_or_nan(image[cavity]) - remote
    return out


def resize_mask(mask: np.ndarray, shape) -> np.ndarray:
    """Nearest-neighbour resize of a 3D mask to ``shape`` (to compare cohorts on one grid)."""
    mask = np.asarray(mask, dtype=bool)
    if tuple(mask.shape) == tuple(shape):
        return mask
    t = torch.from_numpy(mask.astype(np.float32))[None, None]
    return torch.nn.functional.interpolate(t, size=tuple(int(s) for s in shape), mode="nearest")[0, 0].numpy() > 0.5
