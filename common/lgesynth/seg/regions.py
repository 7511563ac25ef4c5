"""Basal / mid / apical thirds of a short-axis stack, with the apex found from the anatomy.

The thirds are defined on the ground truth: the slices that contain myocardium (label in {1, 2})
are split by count into three consecutive groups. When the count is not a multiple of three the
extra slices go to the mid third first, then to the basal third (the apical third is the
smallest and least reliable, so it is never the one that grows): 9 -> 3/3/3, 8 -> 3/3/2,
7 -> 2/3/2, 2 -> 1/1/0, 1 -> 0/1/0.

Which end is the apex is read from the anatomy, not from the slice index, because the slice
order of real data varies: the left ventricle tapers towards the apex, so the apex is the end
whose myocardial slices have the smaller in-plane **radius of gyration** of the myocardium (root
mean square distance of its pixels from their centroid, in mm). Unlike the hole-filled ring area,
this does not shrink at the base when the basal ring is open (left ventricular outflow tract).
The mean over the outer third at each end is compared; on a tie the higher slice index is taken
as the apex.
"""

from __future__ import annotations

import numpy as np

from lgesynth.data.labels import myocardium_mask
from lgesynth.data.validate import slice_axis

REGIONS = ("basal", "mid", "apical")


def resolve_axis(shape: tuple[int, ...], spacing_mm=None, axis: int | None = None) -> int:
    """The slice axis: ``axis`` if given, else lgesynth's rule (fewest voxels, then largest spacing)."""
    if axis is not None:
        return int(axis) % len(shape)
    spacing = np.ones(len(shape)) if spacing_mm is None else np.asarray(spacing_mm, dtype=np.float64)
    return slice_axis(tuple(shape), spacing)


def myocardial_slices(label: np.ndarray, axis: int) -> np.ndarray:
    """Indices (ascending) of the slices along ``axis`` that contain myocardium (label in {1, 2})."""
    myo = myocardium_mask(label)
    others = tuple(a for a in range(myo.ndim) if a != axis)
    return np.flatnonzero(myo.any(axis=others))


def radius_of_gyration_mm(label: np.ndarray, axis: int, spacing_mm=None) -> np.ndarray:
    """Per slice along ``axis``: RMS in-plane distance (mm) of myocardium pixels from their centroid.

    Returns (slices,) float; NaN for slices without myocardium.
    """
    myo = np.moveaxis(myocardium_mask(label), axis, 0)  # (slices, u, v)
    spacing = np.ones(3) if spacing_mm is None else np.asarray(spacing_mm, dtype=np.float64)
    su, sv = [float(spacing[a]) for a in range(3) if a != axis]
    radius = np.full(myo.shape[0], np.nan)
    for k in range(myo.shape[0]):
        u, v = np.nonzero(myo[k])
        if u.size:
            radius[k] = float(np.sqrt((((u - u.mean()) * su) ** 2 + ((v - v.mean()) * sv) ** 2).mean()))
    return radius


def third_sizes(n: int) -> tuple[int, int, int]:
    """(basal, mid, apical) slice counts for ``n`` myocardial slices (remainder: mid first, then basal)."""
    base = n // 3
    remainder = n - 3 * base
    return base + (remainder >= 2), base + (remainder >= 1), base


def apex_at_high_index(label: np.ndarray, axis: int, spacing_mm=None) -> bool:
    """True when the apex is at the high-index end of the myocardial slice range (see module doc)."""
    slices = myocardial_slices(label, axis)
    if slices.size < 2:
        return True
    radius = radius_of_gyration_mm(label, axis, spacing_mm)[slices]
    end = max(1, slices.size // 3)
    low, high = float(np.mean(radius[:end])), float(np.mean(radius[-end:]))
    return bool(high <= low)


def split_thirds(label: np.ndarray, spacing_mm=None, axis: int | None = None) -> dict[str, list[int]]:
    """Slice indices of the basal, mid and apical thirds of the ground-truth myocardium.

    Args:
        label: (x, y, z) ground truth in {0, 1, 2}.
        spacing_mm: (3,) voxel size; used to find the slice axis and the in-plane radii (optional
            when the in-plane spacing is isotropic and the slice axis has the fewest voxels).
        axis: slice axis; default: lgesynth's rule (fewest voxels, then largest spacing).
    Returns:
        ``{"basal": [...], "mid": [...], "apical": [...]}``, each a list of slice indices along
        the slice axis in ascending order; a region may be empty for stacks of < 3 myocardial slices.
    """
    label = np.asarray(label)
    axis = resolve_axis(label.shape, spacing_mm, axis)
    slices = [int(k) for k in myocardial_slices(label, axis)]
    if not apex_at_high_index(label, axis, spacing_mm):
        slices = slices[::-1]  # order base -> apex
    n_base, n_mid, _ = third_sizes(len(slices))
    groups = (slices[:n_base], slices[n_base:n_base + n_mid], slices[n_base + n_mid:])
    return {region: sorted(group) for region, group in zip(REGIONS, groups)}
