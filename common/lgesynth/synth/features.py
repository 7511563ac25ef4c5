"""What one heart volume measures: its plausibility and its features (image on a grid whose slice axis is
``axis``, label 0/1/2, voxel size in mm).

- **plausibility** (:func:`plausibility_problems`): scar inside the myocardium; on every slice with
  myocardium, the myocardium is one 2D connected component (8-connected) that encloses a cavity
  (``binary_fill_holes`` adds voxels). Specks, pieces under ``SPECK_FRACTION`` (2 %) of the slice's
  myocardium (decoding noise of a few voxels, which keeping the largest component would remove), are
  not counted as pieces. A slice at either end of the stack with under ``TIP_FRACTION`` (10 %) of the
  largest slice's myocardium is a partial-volume tip (the slice grazes the apex or the base: on the
  phantom's own training volumes these tips, a few dozen voxels in 2-3 pieces, made 10 % of them
  fail) and is not checked. Open rings are allowed at the most basal myocardial slice
  (the left ventricular outflow tract), and a closed cap on the apical slices within one wall thickness
  of the most apical one: the apex is a cap of myocardium as thick as the wall, which a stack resampled
  to thinner slices cuts more than once (here the wall is :func:`ridge_thickness` averaged over the ring
  slices, the rule this check was calibrated with). Both ends are counted without the tips; which end
  is apical is read from the anatomy (``seg.regions.apex_at_high_index``).
- **features** (:func:`volume_features`): ``myocardial_volume_ml``; ``wall_thickness_mm`` = mean over
  the ring slices (those whose myocardium encloses a cavity) of ``sqrt(A_epi / pi) - sqrt(A_endo / pi)``,
  the areas (mm^2) inside the epicardium (myocardium + cavity) and inside the endocardium (the
  cavity): exact for a circular ring, and read from areas, so two masks of one shape whose boundaries
  differ only voxel by voxel (a smooth decoded edge beside a resampled label's staircase) measure the
  same (see ``docs/experiments.md``, "synth: Is the samples' wall thickness a property of the walls or
  of their edges?"); NaN without a ring slice; ``scar_burden`` = scar / myocardium voxels;
  ``contrast_scar_remote`` and ``contrast_blood_remote`` = mean intensity of scar (of the blood pool: the
  filled cavity) minus that of the healthy myocardium, in canonical units (each image robustly scaled to [-1, 1]); NaN when the
  region is empty (scar-free volumes have no scar contrast).

The synthetic-cohort report (``synth.report``) and inr2vec's round-trip evaluation both measure with these.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage as ndi

FEATURES = ("myocardial_volume_ml", "wall_thickness_mm", "scar_burden", "contrast_scar_remote", "contrast_blood_remote")
SPECK_FRACTION = 0.02
TIP_FRACTION = 0.10
_EIGHT = np.ones((3, 3), dtype=bool)

def _checked_slices(myo: np.ndarray, axis: int, tip_fraction: float) -> np.ndarray:
    """Ascending indices of the slices with myocardium, without the partial-volume tips at either end
    (end slices whose myocardium is under ``tip_fraction`` of the largest slice's)."""
    area = np.moveaxis(myo, axis, 0).reshape(myo.shape[axis], -1).sum(axis=1)
    slices = np.flatnonzero(area)
    if slices.size == 0:
        return slices
    is_tip = area[slices] < tip_fraction * area.max()
    first, last = 0, slices.size
    while first < last and is_tip[first]:
        first += 1
    while last > first and is_tip[last - 1]:
        last -= 1
    return slices[first:last]


def _ends(myo: np.ndarray, axis: int, spacing_mm, slices: np.ndarray) -> tuple[int, int]:
    """``(basal, apical)`` slice indices among the checked ``slices`` (non-empty)."""
    from lgesynth.seg.regions import apex_at_high_index

    if apex_at_high_index(myo.astype(np.uint8), axis, spacing_mm):
        return int(slices[0]), int(slices[-1])
    return int(slices[-1]), int(slices[0])


def plausibility_problems(myo: np.ndarray, scar: np.ndarray | None = None, axis: int = 2, spacing_mm=None,
                          allow_open_base: bool = True, allow_apical_cap: bool = True,
                          speck_fraction: float = SPECK_FRACTION, tip_fraction: float = TIP_FRACTION) -> list[str]:
    """Why a myocardium (+ scar) mask pair is implausible; ``[]`` when it passes (see module doc).

    Args:
        myo, scar: (x, y, z) masks (nonzero = inside); ``scar`` None skips the subset check.
        axis: the slice axis (2 on the canonical grid).
        spacing_mm: (3,) voxel size, for finding the apex and the cap's extent (None: the apex from unit
            voxels, and a closed cap on the most apical slice alone).
        speck_fraction: pieces smaller than this share of the slice's myocardium are not counted.
        tip_fraction: end slices with less than this share of the largest slice's myocardium are not checked.
    """
    myo = np.asarray(myo) != 0
    problems = []
    if scar is not None:
        outside = int(np.count_nonzero((np.asarray(scar) != 0) & ~myo))
        if outside:
            problems.append(f"{outside} scar voxels outside the myocardium")
    slices = _checked_slices(myo, axis, tip_fraction)
    if slices.size == 0:
        return problems + ["no myocardium"]
    basal, apical = _ends(myo, axis, spacing_mm, slices)
    m = np.moveaxis(myo, axis, 0)
    encloses = {int(k): int(ndi.binary_fill_holes(m[k]).sum()) > int(m[k].sum()) for k in slices}
    rings = [m[k] for k in slices if encloses[int(k)]]
    cap = _apical_cap(rings, axis, spacing_mm, slices, apical) if allow_apical_cap else set()
    for k in slices:
        labelled, n = ndi.label(m[k], structure=_EIGHT)
        sizes = np.bincount(labelled.ravel(), minlength=n + 1)[1:]
        pieces = int((sizes >= speck_fraction * sizes.sum()).sum())
        if pieces != 1:
            problems.append(f"slice {k}: myocardium in {pieces} pieces")
        if not encloses[int(k)] and not (allow_open_base and k == basal) and k not in cap:
            problems.append(f"slice {k}: myocardium encloses no cavity (open ring)")
    return problems


def _apical_cap(rings: list[np.ndarray], axis: int, spacing_mm, slices: np.ndarray, apical: int) -> set[int]:
    """The checked ``slices`` within one wall thickness (mm, over the ring slices ``rings``, 2D masks) of the
    ``apical`` slice, which included; the apical slice alone without ``spacing_mm`` or rings."""
    if spacing_mm is None or not rings:
        return {apical}
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    s_plane = spacing[[a for a in range(3) if a != axis]]
    wall_mm = mean_or_nan(np.concatenate([ridge_thickness(r, s_plane) for r in rings]))
    return {int(k) for k in slices if abs(int(k) - apical) * spacing[axis] <= wall_mm}


def ridge_thickness(m: np.ndarray, s_plane: np.ndarray) -> np.ndarray:
    """``(ridge points,)`` in-plane wall thickness (mm) along the ridge of one slice's myocardium ``m`` (2D bool,
    in-plane voxel size ``s_plane`` (2,) mm): ``2 EDT - s`` at the distance transform's local maxima
    (``s`` = mean in-plane spacing). It reads the nearest edge voxel, so a ragged edge (a resampled label's
    staircase) lowers it where the wall is unchanged; the plausibility check's cap extent only."""
    edt = ndi.distance_transform_edt(np.pad(m, 1), sampling=s_plane)[1:-1, 1:-1]
    ridge = m & (edt >= ndi.maximum_filter(edt, footprint=_EIGHT, mode="constant"))
    return 2 * edt[ridge] - s_plane.mean()


def _ring_thickness(epi_voxels: int, endo_voxels: int, pixel_mm2: float) -> float:
    """Equivalent-circle wall thickness (mm) of one ring slice from the voxel counts inside its epicardium
    (myocardium + cavity) and its endocardium (the cavity), each voxel ``pixel_mm2`` in-plane:
    ``sqrt(A_epi / pi) - sqrt(A_endo / pi)``."""
    return float(np.sqrt(epi_voxels * pixel_mm2 / np.pi) - np.sqrt(endo_voxels * pixel_mm2 / np.pi))


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
    pixel_mm2 = float(np.prod(s_plane))
    m = np.moveaxis(myo, axis, 0)
    cavity = np.zeros_like(m)
    ring_thickness = []
    for k in range(m.shape[0]):
        if not m[k].any():
            continue
        filled = ndi.binary_fill_holes(m[k])
        cavity[k] = filled & ~m[k]
        if cavity[k].any():
            ring_thickness.append(_ring_thickness(int(filled.sum()), int(cavity[k].sum()), pixel_mm2))
    cavity = np.moveaxis(cavity, 0, axis)
    n_myo, n_scar = int(myo.sum()), int(scar.sum())
    out = {"myocardial_volume_ml": n_myo * float(np.prod(spacing)) / 1000.0,
           "wall_thickness_mm": mean_or_nan(np.asarray(ring_thickness)),
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
