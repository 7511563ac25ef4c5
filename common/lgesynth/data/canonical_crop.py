"""Canonical step 2: crop around the myocardium.

In plane a box centred on the myocardium's bounding box, zero-padded where it leaves the image, of one
of two shapes (``in_plane``):

- ``"fit"``: each in-plane axis spans the myocardium's extent along it + 2 × ``margin_mm``, so every
  heart fills the grid in x and in y. Its in-plane aspect (an elliptic ventricle, or the distortion of
  a stack whose slices were resized to a square) moves out of the shape into the canonical voxel
  size, which differs per axis and which edm_synth generates with the shape.
- ``"square"``: square in mm, of side max(extent + 2 × ``margin_mm``), so the in-plane aspect stays
  isotropic after the resize and is part of the shape.

Through the stack exactly the slices holding myocardium (± ``slice_margin``,
clipped to the stack), so the canonical z axis runs apex to base (or base to apex) in every
subject and no slice with myocardium is lost.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import CropForeground, CropForegroundd

from lgesynth.data.canonical_orientation import filename_of
from lgesynth.data.labels import ALLOWED_LABELS, MYOCARDIUM, SCAR
from lgesynth.errors import DataError
from lgesynth.io import spacing_from_affine

CROP_START_KEY, CROP_END_KEY = "canonical_crop_start", "canonical_crop_end"
IN_PLANE = ("fit", "square")


def check_in_plane(in_plane: str) -> str:
    """``in_plane`` if it names a crop shape of ``IN_PLANE``, else ValueError."""
    if in_plane not in IN_PLANE:
        raise ValueError(f"grid in_plane must be one of {IN_PLANE}, got {in_plane!r}")
    return in_plane


def myocardium_box(label: np.ndarray, spacing_mm: Sequence[float], margin_mm=(10.0, 10.0),
                   slice_margin: int = 0, name: str | None = None, in_plane: str = "fit") -> tuple[np.ndarray, np.ndarray]:
    """Crop box ``[start, end)`` in voxels of an oriented (x, y, slices) label.

    In plane the box (``in_plane``: ``"fit"`` or ``"square"``, see module doc) may leave the image
    (the crop pads); through the stack it is clipped to the image.

    Args:
        label: (x, y, slices) with values in {0, 1, 2}.
        spacing_mm: (3,) voxel spacing, mm.
        margin_mm: in-plane margin (x, y) around the myocardium's bounding box, mm.
        slice_margin: slices kept beyond the first/last slice with myocardium.
        name: file named in errors.
        in_plane: ``"fit"`` (each axis its own extent) or ``"square"`` (square in mm).

    Returns:
        start, end: (3,) int voxel indices.

    Raises:
        DataError: naming ``name`` when the label has values outside {0, 1, 2} or no myocardium.
    """
    label = np.rint(np.asarray(label))
    bad = np.setdiff1d(np.unique(label), ALLOWED_LABELS)
    if bad.size:
        raise DataError(name, f"label values {bad.astype(int).tolist()} outside {list(ALLOWED_LABELS)} "
                        "(0 background, 1 myocardium, 2 scar); convert it with an importer "
                        "(e.g. `lgesynth import-emidec`)")
    idx = np.argwhere(np.isin(label, (MYOCARDIUM, SCAR)))
    if idx.size == 0:
        raise DataError(name, "label has no myocardium (no voxel is 1 or 2): nothing to crop around; "
                        "check that this is the right label file for the image")
    lo, hi = idx.min(0), idx.max(0) + 1
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    side_mm = [(hi[k] - lo[k]) * spacing[k] + 2 * margin_mm[k] for k in (0, 1)]
    if check_in_plane(in_plane) == "square":
        side_mm = [max(side_mm)] * 2
    start, end = np.zeros(3, int), np.zeros(3, int)
    for k in (0, 1):
        n = int(np.ceil(side_mm[k] / spacing[k] - 1e-6))
        start[k] = int(np.floor((lo[k] + hi[k]) / 2 - n / 2 + 0.5))
        end[k] = start[k] + n
    start[2] = max(int(lo[2]) - slice_margin, 0)
    end[2] = min(int(hi[2]) + slice_margin, label.shape[2])
    return start, end


class _MyocardiumCropper(CropForeground):
    def __init__(self, margin_mm, slice_margin: int, in_plane: str):
        super().__init__(select_fn=lambda x: x > 0, allow_smaller=False)
        self.margin_mm, self.slice_margin = tuple(margin_mm), int(slice_margin)
        self.in_plane = check_in_plane(in_plane)

    def compute_bounding_box(self, img: torch.Tensor):
        spacing = spacing_from_affine(np.asarray(img.affine)) if isinstance(img, MetaTensor) else np.ones(3)
        return myocardium_box(np.asarray(img[0]), spacing, self.margin_mm, self.slice_margin, filename_of(img),
                              self.in_plane)


class CropMyocardiumd(CropForegroundd):
    """``CropForegroundd`` whose box is ``myocardium_box`` of ``source_key`` (zero padding outside).

    The box is also stored in the data dict under ``canonical_crop_start`` / ``canonical_crop_end``.
    """

    def __init__(self, keys, source_key: str = "label", margin_mm=(10.0, 10.0), slice_margin: int = 0,
                 in_plane: str = "fit", allow_missing_keys: bool = False):
        super().__init__(keys, source_key=source_key, start_coord_key=CROP_START_KEY,
                         end_coord_key=CROP_END_KEY, mode="constant", allow_missing_keys=allow_missing_keys)
        self.cropper = _MyocardiumCropper(margin_mm, slice_margin, in_plane)
