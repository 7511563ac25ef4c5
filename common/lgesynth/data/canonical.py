"""The canonical grid that every INR sees: its definition and the MONAI pipeline onto it.

A case (short-axis LGE stack + label) goes to a fixed voxel grid, by default 96 × 96 × 12
(x, y, slices), in four invertible steps, each a MONAI dictionary transform so that bundle
configs can use them by ``_target_`` and ``Compose.inverse`` can undo them:

1. **Orientation, slice axis last** (``canonical_orientation``): not a resample to "oriented
   RAS"; voxel axes are only permuted and flipped, never interpolated across 5–10 mm slices.
2. **Crop around the myocardium** (``canonical_crop``): in plane a box fitted to the myocardium's
   extent along each axis (``in_plane: fit``, so the in-plane aspect is a voxel size, not a shape)
   or square in mm (``square``); exactly the slices holding myocardium through the stack.
3. **Resize to the grid**: image trilinear (anti-aliased where it shrinks), label one-hot per
   axis and argmax (``canonical_label_resize``). z interpolation from e.g. 7 to 12 slices is
   accepted by design.
4. **Robust intensity scaling** (``canonical_intensity``): percentiles (0.5, 99.5) → [-1, 1].

Arrays and files go to the grid and back with ``canonical_case``; coordinates on the grid (INR
inputs, other spacings over the same box) come from ``canonical_coords``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Resized

from lgesynth.data.canonical_crop import CropMyocardiumd, check_in_plane
from lgesynth.data.canonical_intensity import RobustScaleIntensityd
from lgesynth.data.canonical_label_resize import ResizeLabeld
from lgesynth.data.canonical_orientation import SliceLastOrientationd


@dataclass(frozen=True)
class CanonicalGrid:
    """The fixed grid and the rules that bring a case onto it.

    Attributes:
        shape: (x, y, slices) voxels of the canonical grid.
        margin_mm: in-plane margin (x, y) around the myocardium's bounding box, mm.
        slice_margin: slices kept beyond the first/last slice with myocardium (clipped to the stack).
        percentiles: intensity percentiles of the canonical image mapped to -1 and +1.
        label_mode: label resize per axis, ``"auto"`` (nearest where enlarging, linear where
            shrinking), ``"nearest"`` or ``"linear"`` (one-hot linear + argmax).
        in_plane: the in-plane crop box, ``"fit"`` (each axis the myocardium's extent + margins: every
            heart fills the grid, its aspect is in the canonical voxel size) or ``"square"`` (square in mm:
            the aspect stays in the shape); see ``canonical_crop`` and docs/experiments.md, "inr_fit:
            Does a crop fitted per axis keep the samples' rings closed?".
    """

    shape: tuple[int, int, int] = (96, 96, 12)
    margin_mm: tuple[float, float] = (10.0, 10.0)
    slice_margin: int = 0
    percentiles: tuple[float, float] = (0.5, 99.5)
    label_mode: str = "auto"
    in_plane: str = "fit"

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "margin_mm", tuple(float(m) for m in self.margin_mm))
        object.__setattr__(self, "percentiles", tuple(float(p) for p in self.percentiles))
        assert len(self.shape) == 3 and min(self.shape) >= 1, self.shape
        assert self.label_mode in ("auto", "nearest", "linear"), self.label_mode
        check_in_plane(self.in_plane)
        assert 0 <= self.percentiles[0] < self.percentiles[1] <= 100, self.percentiles

    @classmethod
    def from_dict(cls, d: Mapping | None) -> "CanonicalGrid":
        """From a config's fields (missing ones take the defaults)."""
        return cls(**dict(d or {}))

    @classmethod
    def from_record(cls, d: Mapping | None) -> "CanonicalGrid":
        """From the grid a bank or model recorded; records without ``in_plane`` were cropped square."""
        return cls(**{"in_plane": "square", **dict(d or {})})

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def as_grid(grid: CanonicalGrid | Mapping | None) -> CanonicalGrid:
    """A ``CanonicalGrid`` from itself, its fields as a dict, or None (the default grid)."""
    return grid if isinstance(grid, CanonicalGrid) else CanonicalGrid.from_dict(grid)


def canonical_transforms(grid: CanonicalGrid | Mapping | None = None, keys: Sequence[str] = ("image", "label"),
                         label_key: str = "label", load: bool = True) -> Compose:
    """MONAI ``Compose`` of dictionary transforms to the canonical grid (invertible).

    Args:
        grid: a ``CanonicalGrid`` or its fields as a dict (bundle configs); default grid if None.
        keys: data keys; ``label_key`` is the label, every other key an image.
        load: start with ``LoadImaged`` (nibabel) + ``EnsureChannelFirstd`` (paths in, tensors out);
            False when the dict already holds channel-first ``MetaTensor`` s.

    Returns:
        ``Compose`` mapping (1, x, y, z) tensors to (1, *grid.shape); the crop box is also stored
        under ``canonical_crop_start`` / ``canonical_crop_end``.
    """
    grid = as_grid(grid)
    keys = list(keys)
    assert label_key in keys, f"{label_key=} must be one of {keys=}: the crop follows the label"
    images = [k for k in keys if k != label_key]
    xforms = [LoadImaged(keys, reader="NibabelReader", image_only=True), EnsureChannelFirstd(keys)] if load else []
    xforms += [
        SliceLastOrientationd(keys, source_key=label_key),
        CropMyocardiumd(keys, source_key=label_key, margin_mm=grid.margin_mm, slice_margin=grid.slice_margin,
                        in_plane=grid.in_plane),
        ResizeLabeld(label_key, grid.shape, label_mode=grid.label_mode),
    ]
    if images:
        xforms += [
            Resized(images, grid.shape, mode="trilinear", anti_aliasing=True),
            RobustScaleIntensityd(images, *grid.percentiles),
        ]
    return Compose(xforms)
