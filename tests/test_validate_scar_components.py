"""check-data reports stray scar: label-2 components that touch no healthy myocardium, far from it in mm.

Labels are built in voxel units (a ring of healthy myocardium on slices 1..4 with a scar arc), so the
same array can be given different spacings through its affine.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from scipy import ndimage

from lgesynth import commands
from lgesynth.data import validate
from lgesynth.data.datalist import write_datalist
from lgesynth.data.validate import check_datalist, check_masks, check_pair, label_problems
from lgesynth.io import save_nifti

CENTRE = 15.5  # in-plane centre of the 32 x 32 grid, in voxels
RING_VOXELS = (5.0, 8.0)  # inner / outer radius of the ring, in voxels


def _ring_label(n_slices: int = 6, ring_slices=range(1, 5), scar_slices=range(2, 4)) -> np.ndarray:
    """(32, 32, n_slices) uint8: healthy ring on ``ring_slices``, a 90-degree scar arc of it on ``scar_slices``."""
    i, j = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    r = np.hypot(i - CENTRE, j - CENTRE)
    angle = np.degrees(np.arctan2(j - CENTRE, i - CENTRE)) % 360.0
    ring = (r >= RING_VOXELS[0]) & (r <= RING_VOXELS[1])
    label = np.zeros((32, 32, n_slices), dtype=np.uint8)
    for k in ring_slices:
        label[..., k][ring] = 1
    for k in scar_slices:
        label[..., k][ring & (angle < 90.0)] = 2
    return label


def _affine(spacing, rotate: bool = False) -> np.ndarray:
    """Affine with the given voxel size; ``rotate`` turns the axes (oblique stack) without changing the spacing."""
    affine = np.eye(4)
    affine[:3, :3] = np.diag(spacing)
    if rotate:
        a, b = np.radians(30.0), np.radians(20.0)
        rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
        rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
        affine[:3, :3] = rx @ rz @ affine[:3, :3]
    affine[:3, 3] = (-20.0, -24.0, -30.0)
    return affine


def _write(tmp_path, label: np.ndarray, spacing=(1.5, 1.5, 10.0), rotate: bool = False, name: str = "case_07"):
    affine = _affine(spacing, rotate)
    image = np.random.default_rng(0).normal(100.0, 20.0, size=label.shape).astype(np.float32)
    image_path = save_nifti(tmp_path / "images" / f"{name}.nii.gz", image, affine, dtype=np.float32)
    label_path = save_nifti(tmp_path / "labels" / f"{name}.nii.gz", label, affine, dtype=np.uint8)
    return image_path, label_path


def _gap_mm(problem: str) -> float:
    return float(re.search(r"nearest healthy myocardium ([0-9.]+) mm away", problem).group(1))


def _touches_healthy(label: np.ndarray) -> bool:
    """Every scar component 26-adjacent to healthy myocardium (independent of the code under test)."""
    components, n = ndimage.label(label == 2, structure=np.ones((3, 3, 3)))
    near = ndimage.binary_dilation(label == 1, structure=np.ones((3, 3, 3)))
    return all(near[components == c].any() for c in range(1, n + 1))


def test_scar_arc_inside_the_ring_passes(tmp_path):
    label = _ring_label()
    assert (label == 2).sum() > 0
    assert check_pair(*_write(tmp_path, label)) == []


@pytest.mark.parametrize("rotate", [False, True])
def test_scar_blob_in_a_corner_is_reported_naming_the_label_file(tmp_path, rotate):
    label = _ring_label()
    label[0:3, 0:3, 3] = 2  # a 9-voxel stray blob in the corner of slice 3
    image_path, label_path = _write(tmp_path, label, rotate=rotate)
    problems = check_pair(image_path, label_path)
    assert len(problems) == 1, problems
    problem = problems[0]
    assert problem.startswith(f"{label_path}: scar component of 9 voxels at voxel (1, 1, 3) touches no healthy myocardium")
    # corner voxel (2, 2) to the ring voxel nearest it, in-plane only, 1.5 mm voxels: well beyond the tolerance
    gap = _gap_mm(problem)
    assert gap > 10.0
    assert f"tolerance {validate.SCAR_GAP_TOLERANCE_MM:g} mm" in problem
    # the arc itself is not reported: one problem, for the blob only
    assert str(label_path) in problem and "case_07" in problem


def test_check_data_exits_1_and_names_the_file(tmp_path, capsys):
    label = _ring_label()
    label[30:32, 29:32, 2] = 2
    image_path, label_path = _write(tmp_path, label)
    clean_image, clean_label = _write(tmp_path, _ring_label(), name="case_01")
    datalist = write_datalist(tmp_path / "datalist.json",
                              [{"id": "case_01", "image": str(clean_image), "label": str(clean_label)},
                               {"id": "case_07", "image": str(image_path), "label": str(label_path)}], [])
    assert [p.split(": ")[0] for p in check_datalist(datalist)] == [str(label_path)]
    with pytest.raises(SystemExit) as exc:
        commands.check_data(str(datalist))
    assert exc.value.code == 1
    out = capsys.readouterr().out
    assert f"{label_path}: scar component of 6 voxels" in out and str(clean_label) not in out


@pytest.mark.parametrize("arc", [True, False])
def test_whole_slice_of_scar_with_healthy_neighbour_slices_passes(tmp_path, arc):
    """Slice 2's whole ring is scar; with ``arc=False`` that slice is the whole component, so only the
    healthy ring of slices 1 and 3, 10-13 mm away centre to centre, touches it."""
    label = _ring_label(scar_slices=range(2, 4) if arc else ())
    label[..., 2][label[..., 2] > 0] = 2  # slice 2: the whole ring is scar (transmural, circumferential)
    assert not (label[..., 2] == 1).any() and (label[..., 1] == 1).any() and (label[..., 3] == 1).any()
    for spacing in [(1.5, 1.5, 10.0), (1.25, 1.25, 13.0)]:  # EMIDEC-like slice gaps: adjacency, not mm, decides
        assert check_pair(*_write(tmp_path, label, spacing)) == [], spacing


@pytest.mark.parametrize("spacing", [(1.5, 1.5, 20.0), (4.0, 4.0, 10.0)])
def test_scar_touching_healthy_myocardium_only_diagonally_across_slices_passes(tmp_path, spacing):
    """Corner contact only (26- but not 6- or 18-adjacent): never reported, even with voxels so large
    that the nearest face-neighbour of a healthy voxel is more than the tolerance away."""
    label = _ring_label()
    ring_voxel = tuple(np.argwhere(label[..., 1] == 1)[0])  # a healthy voxel of slice 1
    label[ring_voxel[0] - 1, ring_voxel[1] - 1, 0] = 2  # corner-adjacent in slice 0 (above the base)
    assert label[ring_voxel[0] - 1, ring_voxel[1] - 1, 1] == 0  # not face-adjacent: only 26-connectivity links it
    assert label[ring_voxel[0] - 1, ring_voxel[1], 1] == 0 and label[ring_voxel[0], ring_voxel[1] - 1, 1] == 0
    assert check_pair(*_write(tmp_path, label, spacing)) == []


def test_whole_ring_scar_slice_not_overlapping_its_neighbour_passes_within_tolerance(tmp_path):
    """Apex: a small all-scar ring just inside the neighbouring slice's larger healthy ring (no 26-contact)."""
    i, j = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    r = np.hypot(i - CENTRE, j - CENTRE)
    label = _ring_label(scar_slices=())
    label[..., 4] = 0
    label[..., 4][(r >= 1.5) & (r <= 3.0)] = 2  # apical slice, whole ring scar, radius below the next ring's
    assert not _touches_healthy(label)
    assert check_pair(*_write(tmp_path, label, (1.5, 1.5, 10.0))) == []


def test_anisotropic_spacing_in_plane(tmp_path):
    """The same array: a blob 3 voxels away along axis 0 is 4.5 mm away at 1.5 mm (passes), 6 mm at 2 mm."""
    label = _ring_label()
    assert label[23, 15, 3] == 1 and not label[24:27, 14:18, 3].any()
    label[27:29, 15:17, 3] = 2
    assert check_pair(*_write(tmp_path / "fine", label, (1.5, 1.5, 10.0))) == []
    assert check_pair(*_write(tmp_path / "fine_z", label, (1.5, 2.0, 10.0))) == []  # the other in-plane axis
    problems = check_pair(*_write(tmp_path / "coarse", label, (2.0, 1.5, 10.0), rotate=True))
    assert len(problems) == 1 and _gap_mm(problems[0]) == pytest.approx(6.0, abs=0.05), problems


def test_anisotropic_spacing_across_slices(tmp_path):
    """A scar blob above the base with one empty slice in between: the gap is the slice spacing."""
    label = _ring_label(n_slices=8)
    label[21:23, 15:17, 6] = 2  # above healthy ring voxels of slice 4; slice 5 is empty
    assert (label[21:23, 15:17, 4] == 1).all() and not label[..., 5].any()
    assert check_pair(*_write(tmp_path / "thin", label, (1.5, 1.5, 4.0))) == []
    problems = check_pair(*_write(tmp_path / "thick", label, (1.5, 1.5, 8.0)))
    assert len(problems) == 1 and _gap_mm(problems[0]) == pytest.approx(8.0, abs=0.05), problems
    assert "scar component of 4 voxels" in problems[0]


def test_many_stray_components_are_listed_then_counted(tmp_path):
    label = _ring_label()
    spots = [(0, 0), (0, 6), (0, 12), (0, 18), (0, 24), (0, 30), (31, 0)]
    for n, (a, b) in enumerate(spots):
        label[a, b: b + 1 + (n == 0), 3] = 2  # the first is 2 voxels: listed first
    problems = check_pair(*_write(tmp_path, label))
    assert len(problems) == validate.SCAR_COMPONENTS_SHOWN + 1, problems
    assert "scar component of 2 voxels at voxel (0, 0, 3)" in problems[0]
    assert "2 more stray scar components (2 voxels)" in problems[-1]


def test_separate_masks_report_a_stray_scar_island_in_the_scar_file(tmp_path):
    label = _ring_label()
    label[0:2, 0:2, 2] = 2  # also inside the myocardium mask: mask_problems alone cannot see it
    affine = _affine((1.5, 1.5, 10.0))
    myo = save_nifti(tmp_path / "myo.nii.gz", (label > 0).astype(np.uint8), affine, dtype=np.uint8)
    scar = save_nifti(tmp_path / "scar.nii.gz", (label == 2).astype(np.uint8), affine, dtype=np.uint8)
    problems = check_masks(myo, scar)
    assert len(problems) == 1 and problems[0].startswith(f"{scar}: scar component of 4 voxels"), problems
    clean = save_nifti(tmp_path / "scar_ok.nii.gz", (_ring_label() == 2).astype(np.uint8), affine, dtype=np.uint8)
    assert check_masks(save_nifti(tmp_path / "myo_ok.nii.gz", (_ring_label() > 0).astype(np.uint8), affine,
                                  dtype=np.uint8), clean) == []


def test_label_problems_checks_components_only_with_an_affine():
    label = _ring_label()
    label[0:3, 0:3, 3] = 2
    assert label_problems(label) == []  # no spacing, no distance in mm: callers without an affine are unchanged
    assert len(label_problems(label, _affine((1.5, 1.5, 10.0)))) == 1
