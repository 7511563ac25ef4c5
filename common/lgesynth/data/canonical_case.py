"""A case on the canonical grid: NIfTI files or arrays to the grid, and volumes back.

``to_canonical`` returns a ``CanonicalCase`` whose ``meta`` (plain JSON: lists, floats) holds all
that ``from_canonical`` needs: original shape and affine, the axis permutation and flips, the
crop box, the canonical affine (voxel → world in mm, so canonical results sit at the right world
position), spacings and the intensity constants. The steps themselves are ``canonical_transforms``
(``lgesynth.data.canonical``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor

from lgesynth.data.canonical import CanonicalGrid, as_grid, canonical_transforms
from lgesynth.data.canonical_coords import box_affine, box_extent_mm, physical_aspect
from lgesynth.data.canonical_crop import CROP_END_KEY, CROP_START_KEY
from lgesynth.data.canonical_intensity import denormalise_intensity
from lgesynth.data.canonical_label_resize import label_resize_modes, resize_label
from lgesynth.data.canonical_orientation import slice_last_orientation, unorient
from lgesynth.errors import DataError
from lgesynth.io import load_nifti, spacing_from_affine


@dataclass
class CanonicalCase:
    """One case on the canonical grid.

    Attributes:
        image: (x, y, z) float32 in [-1, 1], or None for a label-only case.
        label: (x, y, z) uint8, 0 background, 1 myocardium, 2 scar.
        meta: JSON-serialisable record to map back (see ``from_canonical``).
    """

    image: np.ndarray | None
    label: np.ndarray
    meta: dict = field(default_factory=dict)

    @property
    def affine(self) -> np.ndarray:
        """(4, 4) voxel → world (mm) of the canonical grid."""
        return np.asarray(self.meta["canonical_affine"], dtype=np.float64)


def to_canonical(image_path: str | Path | None, label_path: str | Path,
                 grid: CanonicalGrid | None = None) -> CanonicalCase:
    """Load an image/label pair (NIfTI) and bring it to the canonical grid.

    Raises:
        DataError: naming the file when it is unreadable, the shapes differ or there is no myocardium.
    """
    label, affine = load_nifti(label_path)
    image = None
    if image_path is not None:
        image, image_affine = load_nifti(image_path)
        if image.shape != label.shape:
            raise DataError(label_path, f"shape {label.shape} differs from the image's {image.shape} ({image_path})")
        if not np.allclose(image_affine, affine, atol=1e-2):
            raise DataError(label_path, f"affine differs from the image's ({image_path}); resample the label "
                            "onto the image grid")
    case = to_canonical_arrays(image, label, affine, grid, image_name=image_path, label_name=label_path)
    case.meta["source"] = {"image": None if image_path is None else str(image_path), "label": str(label_path)}
    return case


def to_canonical_arrays(image: np.ndarray | None, label: np.ndarray, affine: np.ndarray,
                        grid: CanonicalGrid | None = None, image_name=None, label_name=None) -> CanonicalCase:
    """``to_canonical`` on in-memory arrays: image (x, y, z) or None, label (x, y, z), affine (4, 4) mm."""
    grid = as_grid(grid)
    label = np.asarray(label)
    affine = np.asarray(affine, dtype=np.float64)
    if label.ndim != 3:
        raise DataError(label_name, f"expected a 3D label, got shape {label.shape}")
    if image is not None and np.shape(image) != label.shape:
        raise DataError(label_name, f"shape {label.shape} differs from the image's {np.shape(image)} ({image_name})")

    def wrap(x, name):
        meta = {"filename_or_obj": "" if name is None else str(name), "original_affine": affine,
                "spatial_shape": np.asarray(label.shape), "space": "RAS"}
        x = torch.as_tensor(np.asarray(x, dtype=np.float32))[None]
        return MetaTensor(x, affine=torch.as_tensor(affine), meta=meta)

    data = {"label": wrap(label, label_name)}
    if image is not None:
        data["image"] = wrap(image, image_name)
    xform = canonical_transforms(grid, keys=list(data), load=False)
    try:
        out = xform(data)
    except RuntimeError as exc:  # Compose wraps errors; surface the user's DataError
        cause = exc
        while cause is not None and not isinstance(cause, DataError):
            cause = cause.__cause__
        raise (cause or exc) from None

    perm, flip = slice_last_orientation(affine)
    start, end = np.asarray(out[CROP_START_KEY]).tolist(), np.asarray(out[CROP_END_KEY]).tolist()
    oriented_shape = [int(label.shape[i]) for i in perm]
    crop_shape = [e - s for s, e in zip(start, end)]
    meta = {
        "grid": grid.to_dict(),
        "original_shape": [int(s) for s in label.shape],
        "original_affine": affine.tolist(),
        "original_spacing_mm": spacing_from_affine(affine).tolist(),
        "perm": [int(p) for p in perm],
        "flip": [bool(f) for f in flip],
        "oriented_shape": oriented_shape,
        "crop_start": start,
        "crop_end": end,
        "crop_box_original": _crop_box_original(start, end, oriented_shape, perm, flip),
        "canonical_shape": list(grid.shape),
        "label_resize_modes": label_resize_modes(crop_shape, grid.shape, grid.label_mode),
    }
    canonical_affine = box_affine(meta, grid.shape)
    assert np.allclose(canonical_affine, np.asarray(out["label"].affine), atol=1e-4), "canonical affine mismatch"
    meta["canonical_affine"] = canonical_affine.tolist()
    meta["canonical_spacing_mm"] = spacing_from_affine(canonical_affine).tolist()
    meta["extent_mm"] = box_extent_mm(meta).tolist()
    meta["physical_aspect"] = physical_aspect(meta)
    case_image = None
    if image is not None:
        case_image = np.asarray(out["image"][0], dtype=np.float32)
        meta["intensity_lo"] = float(out["image"].meta["intensity_lo"])
        meta["intensity_hi"] = float(out["image"].meta["intensity_hi"])
        meta["percentiles"] = list(grid.percentiles)
    case_label = np.asarray(out["label"][0]).round().astype(np.uint8)
    return CanonicalCase(case_image, case_label, meta)


def _crop_box_original(start, end, oriented_shape, perm, flip) -> list[list[int]]:
    """``[lo, hi)`` per *original* voxel axis of the crop box (may reach outside: padded there)."""
    box = [[0, 0]] * 3
    for k, i in enumerate(perm):
        s, e = int(start[k]), int(end[k])
        box[i] = [oriented_shape[k] - e, oriented_shape[k] - s] if flip[k] else [s, e]
    return box


def from_canonical(volume, meta: Mapping, kind: str = "label", fill: float | None = None) -> np.ndarray:
    """Map a canonical-grid volume back onto the case's original voxel grid.

    Args:
        volume: (x, y, z) on the canonical grid; a label (integers 0..2) or an image in [-1, 1].
        kind: ``"label"`` (one-hot resize as on the way in; uint8 out) or ``"image"`` (trilinear,
            de-normalised to the original intensity units; float32 out).
        fill: value outside the crop box; default 0 for labels, the de-normalised -1 for images.

    Returns:
        (original x, y, z) array; its voxel → world affine is ``meta["original_affine"]``.
    """
    assert kind in ("label", "image"), kind
    vol = torch.as_tensor(np.asarray(volume, dtype=np.float32))
    assert tuple(vol.shape) == tuple(meta["canonical_shape"]), (vol.shape, meta["canonical_shape"])
    start, end = np.asarray(meta["crop_start"]), np.asarray(meta["crop_end"])
    size = (end - start).tolist()
    if kind == "label":
        crop = resize_label(vol, size, meta["label_resize_modes"]).numpy().astype(np.uint8)
        fill = 0 if fill is None else fill
    else:
        crop = F.interpolate(vol[None, None], size=size, mode="trilinear", align_corners=False)[0, 0].numpy()
        crop = denormalise_intensity(crop, meta).astype(np.float32)
        fill = float(denormalise_intensity(-1.0, meta)) if fill is None else fill
    shape = np.asarray(meta["oriented_shape"])
    oriented = np.full(shape, fill, dtype=crop.dtype)
    lo, hi = np.maximum(start, 0), np.minimum(end, shape)
    inside = tuple(slice(a, b) for a, b in zip(lo, hi))
    oriented[inside] = crop[tuple(slice(a, b) for a, b in zip(lo - start, hi - start))]
    return np.ascontiguousarray(unorient(oriented, meta["perm"], meta["flip"]))
