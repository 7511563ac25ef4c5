"""Canonical step 1: permute and flip voxel axes so that the slice axis is last.

A short-axis stack is oblique to the body axes, so a true RAS resampling would interpolate across
5–10 mm slices and mix them in-plane. Voxel axes are only *permuted and flipped*, never
interpolated: each voxel axis is matched to its closest world axis (``nibabel.io_orientation``,
exactly as MONAI's ``Orientation`` does), flipped to point along it (+R, +A, +S), and the axes are
ordered R, A, S, except that the slice axis (largest spacing) goes last. For an axis-aligned axial
stack this *is* ``Orientation("RAS")``; for an oblique one it is ``Orientation`` to the axcodes of
the closest RAS-like frame with the slice axis last (e.g. ``"ASR"`` for a sagittal-ish stack).
Near-isotropic volumes (largest spacing < 1.2 × median) keep the plain RAS order.
"""

from __future__ import annotations

from typing import Sequence

import nibabel as nib
import numpy as np
from monai.data import MetaTensor
from monai.transforms import Orientationd
from monai.transforms.spatial.functional import orientation

from lgesynth.errors import DataError
from lgesynth.io import spacing_from_affine

RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


def filename_of(img) -> str | None:
    """The file name a ``MetaTensor`` was loaded from (``filename_or_obj``), or None."""
    name = img.meta.get("filename_or_obj") if isinstance(img, MetaTensor) else None
    return None if name in (None, "") else str(name)


def slice_last_orientation(affine: np.ndarray, anisotropy: float = 1.2) -> tuple[list[int], list[bool]]:
    """Axis permutation and flips that bring a volume into the canonical frame.

    Args:
        affine: (4, 4) voxel → world (mm) of the volume.
        anisotropy: the slice axis is the largest-spacing axis when its spacing exceeds this
            factor × the median spacing; otherwise the axis closest to S.

    Returns:
        perm: canonical axis k is original voxel axis ``perm[k]``; the slice axis is last.
        flip: whether canonical axis k is reversed (after the permutation), so it points along
            +R, +A or +S, whichever world axis it is closest to.
    """
    affine = np.asarray(affine, dtype=np.float64)
    ornt = nib.io_orientation(affine)  # (3, 2): world axis and sign of each voxel axis
    world = ornt[:, 0].astype(int)
    spacing = spacing_from_affine(affine)
    if spacing.max() > anisotropy * np.median(spacing):
        slice_axis = int(np.argmax(spacing))
    else:
        slice_axis = int(np.flatnonzero(world == 2)[0])
    in_plane = sorted((i for i in range(3) if i != slice_axis), key=lambda i: world[i])
    perm = [*in_plane, slice_axis]
    return perm, [bool(ornt[i, 1] < 0) for i in perm]


def oriented_affine(affine: np.ndarray, shape: Sequence[int], perm, flip) -> np.ndarray:
    """(4, 4) voxel → world (mm) of the permuted/flipped array; ``shape`` is the original (x, y, z)."""
    m = np.zeros((4, 4))
    m[3, 3] = 1.0
    for k, (i, f) in enumerate(zip(perm, flip)):
        m[i, k] = -1.0 if f else 1.0
        m[i, 3] = shape[i] - 1 if f else 0.0
    return np.asarray(affine, dtype=np.float64) @ m


def unorient(array: np.ndarray, perm, flip) -> np.ndarray:
    """Undo ``perm``/``flip``: an oriented (x, y, slices) array → the original voxel axis order."""
    out = np.flip(array, [k for k in range(3) if flip[k]]) if any(flip) else array
    return np.transpose(out, np.argsort(perm))


class SliceLastOrientationd(Orientationd):
    """``Orientationd`` to the closest RAS-like frame with the slice axis last (module docstring).

    The frame comes from ``source_key``'s affine on every call (``slice_last_orientation``); all
    keys must share its grid. The reorientation is MONAI's own (``spatial.functional.orientation``,
    recorded as this transform's ``Orientation``), so ``inverse`` is ``Orientationd.inverse``.
    No state changes per call, so one instance is safe in threaded caching.
    """

    def __init__(self, keys, source_key: str = "label", allow_missing_keys: bool = False):
        super().__init__(keys, axcodes="RAS", labels=RAS_LABELS, allow_missing_keys=allow_missing_keys)
        self.source_key = source_key

    def __call__(self, data, lazy: bool | None = None):
        d = dict(data)
        src = d[self.source_key]
        affine = np.asarray(src.peek_pending_affine(), dtype=np.float64)
        perm, flip = slice_last_orientation(affine)
        ornt = np.zeros((3, 2))  # nibabel's form: input axis i -> (output axis, +1 or -1)
        for k, (i, f) in enumerate(zip(perm, flip)):
            ornt[i] = (k, -1 if f else 1)
        for key in self.key_iterator(d):
            img = d[key]
            if tuple(img.shape[1:]) != tuple(src.shape[1:]):
                raise DataError(filename_of(img), f"shape {tuple(img.shape[1:])} differs from the label's "
                                f"{tuple(src.shape[1:])} ({filename_of(src)}); image and label must share one grid")
            img_affine = np.asarray(img.peek_pending_affine(), dtype=np.float64)
            if not np.allclose(img_affine, affine, atol=1e-2):
                raise DataError(filename_of(img), f"affine differs from the label's ({filename_of(src)}); resample "
                                "the label onto the image grid")
            d[key] = orientation(img, img_affine, ornt.copy(), lazy=self.lazy if lazy is None else lazy,
                                 transform_info=self.ornt_transform.get_transform_info())
        return d
