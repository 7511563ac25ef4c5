"""Geometry of the canonical box and coordinates on it (the INR input frame).

Coordinates: voxel centres of the canonical box with ``align_corners=False``
convention, x and y in [-1, 1], z in [-a, a] with ``a = physical_aspect(meta)`` = z extent /
in-plane extent of the box, so that one coordinate unit is the same length in mm on every axis.
Any other grid over the same box (``coords_for_spacing``, e.g. 1 mm isotropic for
super-resolution rendering) lives in the same coordinate frame. ``meta`` is a
``CanonicalCase.meta`` (``canonical_case``).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch

from lgesynth.data.canonical_orientation import oriented_affine
from lgesynth.io import spacing_from_affine


def box_affine(meta: Mapping, shape: Sequence[int]) -> np.ndarray:
    """(4, 4) voxel → world (mm) of a grid of ``shape`` voxels spanning the canonical crop box.

    Voxel j's centre is at oriented crop index ``start - 1/2 + (j + 1/2) n / N`` (align_corners=False).
    """
    oriented = oriented_affine(np.asarray(meta["original_affine"]), meta["original_shape"], meta["perm"], meta["flip"])
    start, end = np.asarray(meta["crop_start"], float), np.asarray(meta["crop_end"], float)
    scale = (end - start) / np.asarray(shape, float)
    m = np.diag([*scale, 1.0])
    m[:3, 3] = start - 0.5 + 0.5 * scale
    return oriented @ m


def box_extent_mm(meta: Mapping) -> np.ndarray:
    """(3,) physical size in mm of the canonical box along canonical x, y, z."""
    spacing = spacing_from_affine(np.asarray(meta["original_affine"]))[list(meta["perm"])]
    return (np.asarray(meta["crop_end"]) - np.asarray(meta["crop_start"])) * spacing


def physical_aspect(meta: Mapping) -> float:
    """z extent / in-plane extent (mean of x and y) of the canonical box: the half-range of z coords."""
    ext = box_extent_mm(meta)
    return float(ext[2] / (0.5 * (ext[0] + ext[1])))


def canonical_coords(shape: Sequence[int], z_extent: float, planes: int | None = None) -> torch.Tensor:
    """Voxel-centre coordinates of a grid over the canonical box.

    Args:
        shape: (X, Y, Z) voxels.
        z_extent: ``physical_aspect(meta)``; z spans [-z_extent, z_extent].
        planes: each slice at the nearest of this many slice centres (the canonical grid's Z) instead of its
            own (:func:`nearest_planes`); None: at its own.

    Returns:
        coords: (X*Y*Z, 3) float32, x fastest-varying last (C order, reshape to (X, Y, Z, 3)).
        Centres are at -1 + (2i + 1)/n: x, y in (-1, 1), z in (-z_extent, z_extent).
    """
    axes = [(torch.arange(n, dtype=torch.float64) * 2 + 1) / n - 1 for n in shape]
    if planes is not None:
        axes[2] = nearest_planes(int(shape[2]), planes)
    axes[2] = axes[2] * float(z_extent)
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
    return grid.reshape(-1, 3).float()


def nearest_planes(slices: int, planes: int) -> torch.Tensor:
    """``(slices,)`` float64 centres in (-1, 1) of the nearest of ``planes`` evenly spaced slices to each of ``slices``.

    The canonical grid resamples a stack's slices to ``planes`` planes (nearest neighbour), and the
    decoder learns a subject at those depths only; snapping another grid's slices to them is the inverse
    nearest resampling. Slice k's centre is at ``u = (k + 1/2) planes / slices`` plane units and takes plane
    ``floor(u)`` (a tie, as when ``slices`` divides ``planes``, goes to the deeper plane).
    """
    index = torch.clamp(torch.floor((torch.arange(slices, dtype=torch.float64) + 0.5) * planes / slices), max=planes - 1)
    return (2 * index + 1) / planes - 1


def coords_for_spacing(meta: Mapping, spacing_mm: float | Sequence[float],
                       ) -> tuple[torch.Tensor, tuple[int, int, int], np.ndarray]:
    """Coordinates of a grid over the canonical box at about ``spacing_mm`` (e.g. 1 mm isotropic).

    The grid covers exactly the canonical box with round(extent / spacing) voxels per axis (so the
    actual spacing is within half a voxel per box of the request), in the canonical coordinate frame.

    Returns:
        coords: (N, 3) float32, as ``canonical_coords``.
        shape: (X, Y, Z) of the grid.
        affine: (4, 4) voxel → world (mm) of that grid.
    """
    spacing = np.broadcast_to(np.asarray(spacing_mm, dtype=np.float64), (3,))
    shape = tuple(max(1, int(round(e / s))) for e, s in zip(box_extent_mm(meta), spacing))
    return canonical_coords(shape, physical_aspect(meta)), shape, box_affine(meta, shape)
