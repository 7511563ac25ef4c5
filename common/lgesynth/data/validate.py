"""Input validation: find every problem of a dataset before a run starts, each naming its file.

The ``check_*`` functions return a list of problems (empty when all is well); every problem is one
line that starts with the offending file's path, then says what is wrong and what to do.
``validate_datalist`` raises a single :class:`~lgesynth.errors.DataError` that lists them all; the
bundles call it first so that bad input fails early, with the file's name, not mid-training.

What is checked (all problems are errors; there are no warnings):

- the file exists and is a readable NIfTI volume (a corrupt or truncated file is a message, not a
  traceback), 3D after dropping singleton dims, with a finite, non-degenerate affine;
- spacing is positive, finite and plausible for short-axis LGE: in plane 0.3-5 mm, between slices
  0.5-20 mm (the slice axis is the one with the fewest voxels, see :func:`slice_axis`);
- the image has no NaN/inf and is not constant;
- the label is on the image's grid: same shape, and grid corners no further apart than
  ``GRID_TOLERANCE_VOXELS`` of the smallest voxel size;
- label values are a subset of {0 background, 1 healthy myocardium, 2 scar}; the myocardium
  (1 or 2) is not empty; scar (2) does not make up the whole myocardium (no 1 at all), which nearly
  always means a wrong label mapping (e.g. a binary mask stored as 2);
- no stray scar: every scar component (3D, 26-connected) touches healthy myocardium or lies within
  ``SCAR_GAP_TOLERANCE_MM`` of it, in mm from the label's own affine (:func:`scar_component_problems`);
  a scar blob in a corner of the volume is an annotation error;
- for datasets given as separate masks (:func:`check_masks`): scar is a subset of the myocardium,
  and no stray scar as above.

With a single label map, scar lies inside the myocardium by construction, so "scar outside the
myocardium" can only be checked on separate masks, which is what the importers see; a stray scar
blob is the single-label-map form of the same mistake.

The in-memory checks (``*_problems``) return problems *without* a path; the importers prefix the
source file they read.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
from scipy import ndimage

from lgesynth.data.datalist import load_datalist
from lgesynth.data.labels import ALLOWED_LABELS, MYOCARDIUM, SCAR, compose_label
from lgesynth.errors import DataError
from lgesynth.io import load_nifti, spacing_from_affine

IN_PLANE_SPACING_MM = (0.3, 5.0)
SLICE_SPACING_MM = (0.5, 20.0)
GRID_TOLERANCE_VOXELS = 0.01  # label and image grids may differ by 1 % of a voxel (float32 headers)
SCAR_GAP_TOLERANCE_MM = 5.0  # a scar component further than this from healthy myocardium is stray (see below)
SCAR_COMPONENTS_SHOWN = 5  # stray scar components listed one per line per file; the rest are counted


# ---------------------------------------------------------------------------------------------
# in-memory checks: return problems without a path
# ---------------------------------------------------------------------------------------------


def slice_axis(shape: tuple[int, ...], spacing_mm: np.ndarray) -> int:
    """The axis across slices of a short-axis stack: the one with the fewest voxels.

    Ties are broken by the larger spacing, then by the later axis (so an isotropic cube gives 2).
    """
    return max(range(3), key=lambda a: (-int(shape[a]), float(spacing_mm[a]), a))


def spacing_problems(shape: tuple[int, ...], affine: np.ndarray) -> list[str]:
    """Spacing positive, finite and within the plausible LGE ranges; affine not degenerate."""
    affine = np.asarray(affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)):
        return ["affine contains NaN/inf; fix the NIfTI header (qform/sform)"]
    spacing = spacing_from_affine(affine)
    shown = " x ".join(f"{s:.3g}" for s in spacing)
    if np.any(spacing <= 0) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        return [f"degenerate affine (spacing {shown} mm); fix the NIfTI header (pixdim, qform/sform)"]
    axis = slice_axis(shape, spacing)
    problems = []
    lo, hi = IN_PLANE_SPACING_MM
    in_plane = [float(spacing[a]) for a in range(3) if a != axis]
    if not all(lo <= s <= hi for s in in_plane):
        problems.append(f"in-plane spacing {in_plane[0]:.3g} x {in_plane[1]:.3g} mm is outside {lo}-{hi} mm "
                        f"(spacing {shown} mm, slice axis {axis}); is pixdim in mm and the header right?")
    lo, hi = SLICE_SPACING_MM
    if not lo <= spacing[axis] <= hi:
        problems.append(f"slice spacing {spacing[axis]:.3g} mm (axis {axis}) is outside {lo}-{hi} mm "
                        f"(spacing {shown} mm); is pixdim in mm and the header right?")
    return problems


def grid_problems(shape: tuple[int, ...], affine: np.ndarray, ref_shape: tuple[int, ...], ref_affine: np.ndarray,
                  ref_name: str) -> list[str]:
    """Whether a volume lies on the grid of a reference volume (``ref_name``, e.g. "its image /a/b.nii.gz",
    names it in the message).

    Grids match when shapes are equal and the world positions of the 8 grid corners differ by at most
    ``GRID_TOLERANCE_VOXELS`` times the reference's smallest voxel size.
    """
    if tuple(shape) != tuple(ref_shape):
        return [f"shape {tuple(int(s) for s in shape)} differs from {ref_name} {tuple(int(s) for s in ref_shape)}; "
                "it must be on the same voxel grid (resample it with nearest neighbour)"]
    corners = np.array([[*c, 1.0] for c in itertools.product(*[(0, n - 1) for n in shape])]).T  # (4, 8)
    distance_mm = np.linalg.norm((np.asarray(affine) @ corners - np.asarray(ref_affine) @ corners)[:3], axis=0).max()
    tolerance_mm = GRID_TOLERANCE_VOXELS * float(spacing_from_affine(ref_affine).min())
    if not distance_mm <= tolerance_mm:
        return [f"affine differs from {ref_name}: grid corners are up to {distance_mm:.3g} mm apart "
                f"(tolerance {tolerance_mm:.2g} mm); it must be on the same voxel grid (same shape, spacing, "
                "origin and orientation)"]
    return []


def image_problems(image: np.ndarray) -> list[str]:
    """No NaN/inf; not constant."""
    image = np.asarray(image)
    problems = []
    if image.dtype.kind in "fc":
        finite = np.isfinite(image)
        if not finite.all():
            n_nan = int(np.isnan(image).sum())
            n_inf = int(image.size - finite.sum() - n_nan)
            problems.append(f"image contains {n_nan} NaN and {n_inf} inf voxels of {image.size}; "
                            "fix or re-export the volume")
            image = image[finite]
    if image.size and not problems and image.min() == image.max():
        problems.append(f"image is constant (every voxel = {image.flat[0]}); is this the right file?")
    return problems


def _show(values) -> str:
    return ", ".join(str(int(v)) if float(v).is_integer() else str(v) for v in values)


def label_problems(label: np.ndarray, affine: np.ndarray | None = None) -> list[str]:
    """Values within {0, 1, 2}; non-empty myocardium; some healthy myocardium when there is scar; and,
    when the label's ``affine`` is given, no stray scar component (:func:`scar_component_problems`,
    distances in mm need the spacing; without ``affine`` that check is skipped)."""
    label = np.asarray(label)
    values, counts = np.unique(label, return_counts=True)
    bad = ~np.isin(values, ALLOWED_LABELS)
    if bad.any():
        shown = ", ".join(f"{_show([v])} ({c} voxels)" for v, c in zip(values[bad], counts[bad]))
        return [f"label values {shown} are not in {{0 background, 1 healthy myocardium, 2 scar}}; "
                "map the labels first (e.g. lgesynth import-emidec / import-masks)"]
    present = {int(v) for v in values}
    if not present & {MYOCARDIUM, SCAR}:
        return ["no myocardium (no voxel labelled 1 or 2): empty label, or the wrong file?"]
    if SCAR in present and MYOCARDIUM not in present:
        return ["the whole myocardium is scar (label 2 but no 1); check the label mapping "
                "(1 healthy myocardium, 2 scar)"]
    if affine is not None and SCAR in present:
        return scar_component_problems(label, spacing_from_affine(np.asarray(affine, dtype=np.float64)))
    return []


def scar_component_problems(label: np.ndarray, spacing_mm) -> list[str]:
    """Scar (label 2) components that touch no healthy myocardium (label 1) and lie far from it.

    Scar is part of the myocardium: an infarct is subendocardial or transmural and always borders
    healthy myocardium, in plane or across slices. Even a scar covering the whole ring of a
    short-axis slice touches the healthy myocardium of the neighbouring slices. So components are
    taken in 3D with 26-connectivity, and a component 26-adjacent to a label-1 voxel (face, edge or
    corner, in plane or in the next slice) is never reported, whatever the slice spacing (EMIDEC:
    ~10 mm).

    Otherwise the component's *gap* to healthy myocardium is measured: the shortest distance in mm
    between the voxel boxes of a scar voxel and of a label-1 voxel, with the anisotropic spacing
    (an exact 3D Euclidean distance transform with ``sampling=spacing_mm`` to the label-1 mask
    dilated by one voxel in 26-connectivity; a 26-adjacent component has gap 0, and a neighbouring
    slice costs nothing across the slice axis, only its in-plane offset counts). A component is
    reported when its gap exceeds ``SCAR_GAP_TOLERANCE_MM`` = 5 mm. Why 5 mm: contour slop and
    partial volume leave at most a voxel or two of background between a scar island and its
    myocardium (1-2 in-plane voxels of 1.2-2 mm, i.e. under ~4 mm), and a whole-ring scar slice at
    the apex whose neighbour's ring is slightly smaller or shifted sits one slice away with a gap of
    about one in-plane voxel; both pass. A stray blob in a corner, the blood pool, the right
    ventricle or the liver is tens of mm away, and a scar separated from healthy myocardium by a
    whole slice without myocardium has a gap of at least the slice spacing (6-10 mm in LGE stacks);
    both are annotation errors and are reported.

    Args:
        label: (x, y, z) label volume in {0, 1, 2}.
        spacing_mm: voxel size along the label's axes (from its affine, ``spacing_from_affine``).
    Returns:
        One problem per reported component (largest first, at most ``SCAR_COMPONENTS_SHOWN``, then
        one line counting the rest), each naming its size, a voxel index of it and the gap; ``[]``
        when every scar component is attached, or when there is no scar or no healthy myocardium
        (:func:`label_problems` reports the latter), or the label is not 3D or the spacing is invalid
        (the spacing and grid checks report those).
    """
    label = np.asarray(label)
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    if label.ndim != 3 or spacing.shape != (3,) or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        return []
    healthy, scar = label == MYOCARDIUM, label == SCAR
    if not healthy.any() or not scar.any():
        return []
    cube = np.ones((3, 3, 3), dtype=bool)
    components, n = ndimage.label(scar, structure=cube)
    index = np.arange(1, n + 1)
    near = ndimage.binary_dilation(healthy, structure=cube)  # healthy myocardium and its 26-neighbours
    attached = np.asarray(ndimage.maximum(near, components, index), dtype=bool)
    if attached.all():
        return []
    gap_mm = ndimage.distance_transform_edt(~near, sampling=spacing)
    gaps = np.asarray(ndimage.minimum(gap_mm, components, index), dtype=np.float64)
    stray = [int(i) for i in index[(~attached) & (gaps > SCAR_GAP_TOLERANCE_MM)]]
    if not stray:
        return []
    sizes = ndimage.sum_labels(np.ones(label.shape, dtype=np.int64), components, stray)
    order = sorted(range(len(stray)), key=lambda j: (-int(sizes[j]), stray[j]))
    problems = []
    for j in order[:SCAR_COMPONENTS_SHOWN]:
        voxels = np.argwhere(components == stray[j])
        at = tuple(int(v) for v in voxels[np.argmin(((voxels - voxels.mean(axis=0)) ** 2).sum(axis=1))])
        problems.append(f"scar component of {int(sizes[j])} voxels at voxel {at} touches no healthy myocardium "
                        f"(nearest healthy myocardium {gaps[stray[j] - 1]:.1f} mm away, tolerance "
                        f"{SCAR_GAP_TOLERANCE_MM:g} mm); a stray scar blob? scar (2) must lie in the myocardial "
                        "wall: erase it or relabel it")
    if len(order) > SCAR_COMPONENTS_SHOWN:
        rest = order[SCAR_COMPONENTS_SHOWN:]
        problems.append(f"{len(rest)} more stray scar components ({int(sum(sizes[j] for j in rest))} voxels) touch "
                        f"no healthy myocardium (more than {SCAR_GAP_TOLERANCE_MM:g} mm from it)")
    return problems


def mask_problems(myocardium: np.ndarray, scar: np.ndarray) -> list[str]:
    """Separate masks (nonzero = inside): scar must be a subset of the myocardium."""
    myocardium, scar = np.asarray(myocardium), np.asarray(scar)
    outside = int(np.count_nonzero((scar != 0) & (myocardium == 0)))
    if outside:
        total = int(np.count_nonzero(scar))
        return [f"{outside} of {total} scar voxels ({100 * outside / total:.1f} %) lie outside the myocardium mask; "
                "fix the masks (the myocardium mask must include the scar) or clip the scar to the myocardium"]
    return []


def finite_problems(volume: np.ndarray, what: str) -> list[str]:
    """No NaN/inf in a mask or label volume."""
    volume = np.asarray(volume)
    if volume.dtype.kind in "fc" and not np.all(np.isfinite(volume)):
        return [f"{what} contains NaN/inf voxels"]
    return []


# ---------------------------------------------------------------------------------------------
# file checks: every problem starts with a path
# ---------------------------------------------------------------------------------------------


def _load(path: str | Path, problems: list[str]):
    """``(array, affine)`` or ``None`` after appending the reason (which starts with the path)."""
    try:
        return load_nifti(path)
    except DataError as exc:
        problems.append(str(exc))
        return None


def _prefixed(path: str | Path, problems: list[str]) -> list[str]:
    return [f"{path}: {p}" for p in problems]


def check_pair(image_path: str | Path, label_path: str | Path) -> list[str]:
    """All problems of an image and its label (see the module docstring); ``[]`` when valid."""
    problems: list[str] = []
    image = _load(image_path, problems)
    label = _load(label_path, problems)
    if image is not None:
        problems += _prefixed(image_path, spacing_problems(image[0].shape, image[1]) + image_problems(image[0]))
    if label is not None:
        own = finite_problems(label[0], "label") or label_problems(label[0], label[1])
        if image is not None:
            own = grid_problems(label[0].shape, label[1], image[0].shape, image[1], f"its image {image_path}") + own
        problems += _prefixed(label_path, own)
    return problems


def check_masks(myocardium_path: str | Path, scar_path: str | Path, image_path: str | Path | None = None) -> list[str]:
    """Problems of separate myocardium and scar masks (nonzero = inside), e.g. scar outside the myocardium.

    Both masks must be on one grid (the image's when ``image_path`` is given, else the myocardium's).
    Scar problems name the scar file.
    """
    problems: list[str] = []
    myo = _load(myocardium_path, problems)
    scar = _load(scar_path, problems)
    ref, ref_name = myo, f"the myocardium mask {myocardium_path}"
    if image_path is not None:
        ref, ref_name = _load(image_path, problems), f"the image {image_path}"
    if myo is None or scar is None or ref is None:
        return problems
    myo_own = grid_problems(myo[0].shape, myo[1], ref[0].shape, ref[1], ref_name) if ref is not myo else []
    myo_own += finite_problems(myo[0], "myocardium mask")
    if not np.any(myo[0]):
        myo_own.append("myocardium mask is empty (no nonzero voxel): empty mask, or the wrong file?")
    scar_own = grid_problems(scar[0].shape, scar[1], ref[0].shape, ref[1], ref_name)
    scar_own += finite_problems(scar[0], "scar mask")
    if not myo_own and not scar_own:
        scar_own += mask_problems(myo[0], scar[0])
    if not myo_own and not scar_own:
        composed = compose_label(np.asarray(myo[0]) != 0, np.asarray(scar[0]) != 0)
        scar_own += scar_component_problems(composed, spacing_from_affine(np.asarray(ref[1], dtype=np.float64)))
    return problems + _prefixed(myocardium_path, myo_own) + _prefixed(scar_path, scar_own)


def check_datalist(path: str | Path, sections: tuple[str, ...] | str | None = None, require_label: bool = True) -> list[str]:
    """All problems of a datalist and of every image/label it lists; ``[]`` when valid.

    Args:
        path: MSD-style datalist JSON.
        sections: which sections to check (default: all present).
        require_label: an entry without ``"label"`` is a problem (training and evaluation data);
            ``False`` for image-only inference lists.
    """
    try:
        entries = load_datalist(path, sections)
    except DataError as exc:
        return [str(exc)]
    problems: list[str] = []
    seen: dict[str, str] = {}
    for entry in entries:
        name = f'entry "{entry["id"]}" ({entry["section"]})'
        if entry["id"] in seen:
            problems.append(f"{path}: {name} repeats the id of an entry in {seen[entry['id']]}; ids must be unique")
        seen.setdefault(entry["id"], entry["section"])
        if entry.get("label") is None:
            if require_label:
                problems.append(f'{path}: {name} has no "label"')
            else:
                image = _load(entry["image"], problems)
                if image is not None:
                    problems += _prefixed(entry["image"], spacing_problems(image[0].shape, image[1]) + image_problems(image[0]))
            continue
        problems += check_pair(entry["image"], entry["label"])
    return problems


def validate_datalist(path: str | Path, sections: tuple[str, ...] | str | None = None, require_label: bool = True) -> list[dict]:
    """Check a datalist (see :func:`check_datalist`) and return its entries (absolute paths).

    Raises:
        DataError: naming the datalist and listing every problem, one per line, each starting with
            the offending file's path.
    """
    problems = check_datalist(path, sections, require_label)
    if problems:
        lines = "\n".join(f"  {p}" for p in problems)
        raise DataError(path, f"{len(problems)} problem(s) in the data; fix or remove these entries:\n{lines}")
    return load_datalist(path, sections)
