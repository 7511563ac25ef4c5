"""Dice, 95 % Hausdorff distance (mm) and scar burden error, overall and per basal / mid / apical third.

Structures: myocardium = label in {1, 2}; scar = label == 2 (the README's data contract).

Definitions:

- **Dice** = 2 |P ∩ T| / (|P| + |T|) (:func:`lgesynth.dice.dice`).
- **HD95** (mm): surfaces are the mask voxels with a background face-neighbour (voxels on the array
  border count as surface). For every surface voxel of P the distance (in mm, using ``spacing_mm``)
  to the nearest surface voxel of T, and vice versa; HD95 is the larger of the two directed 95th
  percentiles (linear interpolation). This is MONAI's ``compute_hausdorff_distance(percentile=95)``;
  a test checks that the two agree.
- **Empty masks**: both empty -> Dice NaN (undefined, nnU-Net's convention: a scar-free heart predicted
  without scar has no scar Dice), HD95 0; exactly one empty -> Dice 0, HD95 NaN (no finite distance
  exists). Average with ``np.nanmean`` and report how many were NaN (``seg.report``).
- **Scar burden** = scar voxels / myocardium voxels of the same label map (0 when it has no
  myocardium); **burden error** = predicted − true, in percentage points.
- **Regions** (:mod:`lgesynth.seg.regions`): thirds of the ground truth's myocardial slices, the apex
  found from the anatomy. A region's Dice uses both masks restricted to its slices; its HD95 uses the
  surface voxels inside its slices, measured against the other mask's whole surface (so a boundary
  just across the region's edge is not counted as missing). A region with no slices (stacks of fewer
  than 3 myocardial slices) gets NaN for every metric.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from lgesynth.data.labels import myocardium_mask, scar_mask
from lgesynth.dice import dice
from lgesynth.seg.regions import REGIONS, resolve_axis, split_thirds

STRUCTURES = ("myo", "scar")
HD_PERCENTILE = 95.0


def surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels of a bool mask: in the mask with a face-neighbour outside it (or off the array)."""
    mask = np.asarray(mask, dtype=bool)
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def distance_to(surface_mask: np.ndarray, spacing_mm) -> np.ndarray:
    """Distance (mm) from every voxel to the nearest voxel of a non-empty ``surface_mask``."""
    return ndimage.distance_transform_edt(~surface_mask, sampling=[float(s) for s in spacing_mm])


def _hd95_from(points_p, points_t, dist_to_p, dist_to_t) -> float:
    """Larger directed 95th percentile of distances from P's points to T and from T's points to P."""
    return float(max(np.percentile(dist_to_t[points_p], HD_PERCENTILE),
                     np.percentile(dist_to_p[points_t], HD_PERCENTILE)))


def hd95_mm(pred: np.ndarray, truth: np.ndarray, spacing_mm) -> float:
    """95 % Hausdorff distance in mm of two bool masks (module doc for the definition and empties)."""
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    if not pred.any() and not truth.any():
        return 0.0
    if not pred.any() or not truth.any():
        return float("nan")
    sp, st = surface(pred), surface(truth)
    return _hd95_from(sp, st, distance_to(sp, spacing_mm), distance_to(st, spacing_mm))


def scar_burden(label: np.ndarray) -> float:
    """Scar voxels / myocardium voxels of a label map in {0, 1, 2}; 0.0 without myocardium."""
    n_myo = int(myocardium_mask(label).sum())
    return int(scar_mask(label).sum()) / n_myo if n_myo else 0.0


def _structures(label: np.ndarray) -> dict[str, np.ndarray]:
    return {"myo": myocardium_mask(label), "scar": scar_mask(label)}


def regional_metrics(pred: np.ndarray, label: np.ndarray, spacing_mm, axis: int | None = None) -> dict[str, float]:
    """All metrics of one case, flat keys.

    Args:
        pred: (x, y, z) predicted label map in {0, 1, 2}.
        label: (x, y, z) ground truth in {0, 1, 2}, same grid.
        spacing_mm: (3,) voxel size in mm.
        axis: slice axis (default: fewest voxels, then largest spacing).
    Returns:
        ``dice_myo, dice_scar, hd95_myo, hd95_scar`` (whole volume), the same with suffixes
        ``_basal``, ``_mid``, ``_apical``, ``burden_true_pct``, ``burden_pred_pct``,
        ``burden_error_pp`` (predicted − true, percentage points) and ``n_slices_<region>``.
    """
    pred, label = np.asarray(pred), np.asarray(label)
    assert pred.shape == label.shape, f"pred {pred.shape} and label {label.shape} differ"
    axis = resolve_axis(label.shape, spacing_mm, axis)
    thirds = split_thirds(label, spacing_mm, axis)
    p_masks, t_masks = _structures(pred), _structures(label)
    out: dict[str, float] = {}
    for name in STRUCTURES:
        p, t = p_masks[name], t_masks[name]
        out[f"dice_{name}"] = dice(p, t)
        out[f"hd95_{name}"] = hd95_mm(p, t, spacing_mm)
        # Surfaces and distance maps of the whole volume, reused by every region.
        sp, st = surface(p), surface(t)
        dist_to_p = distance_to(sp, spacing_mm) if p.any() else None
        dist_to_t = distance_to(st, spacing_mm) if t.any() else None
        for region in REGIONS:
            key = f"{name}_{region}"
            slices = thirds[region]
            if not slices:
                out[f"dice_{key}"] = out[f"hd95_{key}"] = float("nan")
                continue
            slab = np.zeros(label.shape[axis], dtype=bool)
            slab[slices] = True
            slab = slab.reshape([-1 if a == axis else 1 for a in range(label.ndim)])
            p_in, t_in = p & slab, t & slab
            out[f"dice_{key}"] = dice(p_in, t_in)
            if not p_in.any() and not t_in.any():
                out[f"hd95_{key}"] = 0.0
            elif not p_in.any() or not t_in.any():
                out[f"hd95_{key}"] = float("nan")
            else:
                out[f"hd95_{key}"] = _hd95_from(sp & slab, st & slab, dist_to_p, dist_to_t)
    true_burden, pred_burden = scar_burden(label), scar_burden(pred)
    out["burden_true_pct"] = 100.0 * true_burden
    out["burden_pred_pct"] = 100.0 * pred_burden
    out["burden_error_pp"] = 100.0 * (pred_burden - true_burden)
    for region in REGIONS:
        out[f"n_slices_{region}"] = len(thirds[region])
    return out
