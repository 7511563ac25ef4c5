"""The procedural LGE phantom: contrast physics, anatomy of the scar, acquisition ranges,
determinism, the cohort files, and the PNG montage helper."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from scipy import ndimage

from lgesynth.data import phantom_params as phantom
from lgesynth.data.phantom_cohort import make_phantom_cohort, subject_pattern
from lgesynth.data.phantom_subject import sample_subject
from lgesynth.io import load_nifti, spacing_from_affine
from lgesynth.viz import mid_slice, save_montage

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CASES = [("ischemic", 0), ("ischemic", 1), ("ischemic", 2), ("non_ischemic", 0), ("non_ischemic", 1), ("none", 0)]


@pytest.fixture(scope="module")
def subjects():
    return {(pattern, k): sample_subject(np.random.default_rng([11, k]), pattern=pattern) for pattern, k in CASES}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom")
    return make_phantom_cohort(out, subjects=6, seed=3, test_fraction=0.34)


def cavity_mask(label):
    """LV blood pool as a reader would find it: holes of the myocardium ring, slice by slice."""
    myo = label > 0
    return np.stack([ndimage.binary_fill_holes(myo[..., z]) & ~myo[..., z] for z in range(label.shape[2])], axis=2)


def heart_coordinates(subject, mask):
    """Recompute from params (independently of the generator) the ellipsoidal radii of endo- and
    epicardium, the long-axis position u, the AHA angle (deg) and the transmural depth of the voxels in mask."""
    h = subject.params["heart"]
    ijk = np.argwhere(mask)
    world = ijk * np.diag(subject.affine)[:3] + subject.affine[:3, 3]
    world[:, :2] -= np.asarray(h["shift_mm"])[ijk[:, 2]]
    a, b, u = ((world - h["center_mm"]) @ np.asarray(h["axes"]).T).T

    def rho(axes):
        return np.sqrt((a / axes[0]) ** 2 + (b / axes[1]) ** 2 + ((u - h["u_center_mm"]) / axes[2]) ** 2)

    rho_endo, rho_epi = rho(h["endo_axes_mm"]), rho(h["epi_axes_mm"])
    tau = (rho_endo - 1) / np.maximum((rho_endo - 1) + (1 - rho_epi), 1e-6)
    return rho_endo, rho_epi, u, np.degrees(np.arctan2(b, a)), tau


def test_scar_and_blood_brighter_than_remote_by_the_stated_contrast(subjects):
    for (pattern, k), s in subjects.items():
        remote = s.image[s.label == 1].mean()
        blood = s.image[cavity_mask(s.label)].mean()
        assert blood / remote >= phantom.MIN_BLOOD_REMOTE_RATIO, (pattern, k, blood / remote)
        if pattern == "none":
            assert not (s.label == 2).any()
        else:
            scar = s.image[s.label == 2]
            assert scar.size > 0
            assert scar.mean() / remote >= phantom.MIN_SCAR_REMOTE_RATIO, (pattern, k, scar.mean() / remote)


def test_scar_lies_in_the_myocardial_shell_of_the_stated_geometry(subjects):
    for (pattern, k), s in subjects.items():
        dz = s.params["spacing_mm"][2]
        for mask in (s.label == 2, s.label > 0):
            if not mask.any():
                continue
            rho_endo, rho_epi, u, _, _ = heart_coordinates(s, mask)
            in_shell = (rho_endo >= 0.9) & (rho_epi <= 1.1) & (u >= -dz / 2)  # ripple and thick slices: 10 %
            assert in_shell.mean() >= 0.97, (pattern, k, in_shell.mean())
        rho_endo, rho_epi, u, _, _ = heart_coordinates(s, s.label == 0)
        assert ((rho_endo >= 1.0) & (rho_epi <= 1.0) & (u >= 0)).mean() < 0.05  # background is mostly elsewhere


def test_ischemic_scar_is_subendocardial_in_its_territory_and_nonischemic_spares_the_endocardium(subjects):
    territory_ok = {"LAD": lambda deg: 0 <= deg <= 130, "RCA": lambda deg: -130 <= deg <= 0, "LCx": lambda deg: abs(deg) >= 110}
    for (pattern, k), s in subjects.items():
        if pattern == "none":
            continue
        _, _, _, phi, tau = heart_coordinates(s, s.label == 2)
        *_, tau_myo = heart_coordinates(s, s.label > 0)
        inner_scar, inner_myo = np.mean(tau < 0.15), np.mean(tau_myo < 0.15)
        if pattern == "ischemic":
            mean_deg = np.degrees(np.angle(np.exp(1j * np.radians(phi)).mean()))
            assert territory_ok[s.params["territory"]](mean_deg), (k, s.params["territory"], mean_deg)
            assert inner_scar >= 1.2 * inner_myo, (k, inner_scar, inner_myo)  # wave-front: from the endocardium
            assert 0.03 <= s.params["scar_burden"] <= 0.5
        else:
            assert inner_scar <= 0.5 * inner_myo, (k, inner_scar, inner_myo)  # mid-wall / epicardial
            assert 0.01 <= s.params["scar_burden"] <= 0.2


def test_acquisition_is_in_the_stated_ranges(subjects):
    for s in subjects.values():
        nx, ny, nz = s.image.shape
        assert s.image.dtype == np.float32 and s.label.dtype == np.uint8 and s.label.shape == s.image.shape
        assert np.isfinite(s.image).all() and s.image.min() >= 0  # magnitude image (Rician)
        assert phantom.SLICES_RANGE[0] <= nz <= phantom.SLICES_RANGE[1]
        assert 128 <= nx <= 192 and 128 <= ny <= 192
        sx, sy, sz = spacing_from_affine(s.affine)
        assert phantom.INPLANE_SPACING_MM[0] <= sx == sy <= phantom.INPLANE_SPACING_MM[1]
        assert phantom.SLICE_THICKNESS_MM[0] <= sz <= phantom.SLICE_THICKNESS_MM[1]
        e_a, e_b, e_u = np.asarray(s.params["heart"]["axes"])
        assert e_a[0] < 0 and e_b[1] > 0 and e_u[2] >= np.cos(np.radians(12.01))  # RV left, anterior up, base->apex +z
        slices_with_myo = (s.label > 0).any(axis=(0, 1)).sum()
        assert slices_with_myo >= nz - 2 and slices_with_myo == s.params["slices_with_myocardium"]


def test_thick_slices_carry_partial_volume(subjects):
    """Tissue is averaged over the slice thickness: many voxels are part myocardium, the label is the
    majority, and the image follows the fraction (cavity voxels with some myocardium are darker)."""
    s = subjects[("none", 0)]
    fraction, label, image = s.myocardium_fraction, s.label, s.image
    assert np.array_equal(label > 0, fraction >= 0.5)
    assert ((fraction > 0) & (fraction < 1)).sum() > 0.15 * (label > 0).sum()
    cavity = cavity_mask(label)
    pure_blood, part_myo = image[cavity & (fraction == 0)].mean(), image[cavity & (fraction > 0)].mean()
    assert pure_blood > part_myo > image[label == 1].mean()


def test_patterns_follow_the_stated_proportions():
    counts = Counter(subject_pattern(0, k) for k in range(100))
    for pattern, prob in phantom.PATTERN_PROBS.items():
        assert abs(counts[pattern] - 100 * prob) <= 1, counts
    assert [subject_pattern(0, k) for k in range(10)] == [subject_pattern(0, k) for k in range(20)][:10]


def test_cohort_files_split_and_montage(cohort):
    root = cohort.parent
    doc = json.loads(cohort.read_text())
    assert set(doc) >= {"training", "test"} and doc["training"] and doc["test"]
    entries = doc["training"] + doc["test"]
    assert sorted(e["id"] for e in entries) == [f"ph_{k:04d}" for k in range(1, 7)]
    assert {e["scar"] for e in doc["training"]} == {True, False}
    for e in entries:
        assert set(e) == {"id", "image", "label", "scar", "pattern"}
        image, affine = load_nifti(root / e["image"])
        label, label_affine = load_nifti(root / e["label"])
        assert image.dtype == np.float32 and label.dtype == np.uint8 and np.allclose(affine, label_affine)
        assert e["scar"] == bool((label == 2).any()) and (e["pattern"] == "none") == (not e["scar"])
        assert e["pattern"] in phantom.PATTERN_PROBS
    png = root / "montage.png"
    assert png.read_bytes()[:8] == PNG_MAGIC
    import matplotlib.image

    pixels = matplotlib.image.imread(png)
    assert pixels.ndim == 3 and min(pixels.shape[:2]) > 200 and pixels[..., :3].std() > 0.05
    params = json.loads((root / "phantom.json").read_text())
    assert params["seed"] == 3 and len(params["params"]) == 6


def test_same_seed_same_bytes_and_subject_k_independent_of_cohort_size(cohort, tmp_path):
    root = cohort.parent
    make_phantom_cohort(tmp_path / "again", subjects=2, seed=3)
    make_phantom_cohort(tmp_path / "other", subjects=1, seed=4)
    for folder in ("imagesTr", "labelsTr"):
        for sid in ("ph_0001", "ph_0002"):
            assert (tmp_path / "again" / folder / f"{sid}.nii.gz").read_bytes() == (root / folder / f"{sid}.nii.gz").read_bytes()
        assert (tmp_path / "other" / folder / "ph_0001.nii.gz").read_bytes() != (root / folder / "ph_0001.nii.gz").read_bytes()


def test_cohort_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="subjects"):
        make_phantom_cohort(tmp_path, subjects=0)
    with pytest.raises(ValueError, match="pattern"):
        sample_subject(np.random.default_rng(0), pattern="dilated")


def test_mid_slice_and_montage_helpers(tmp_path):
    label = np.zeros((8, 8, 10), np.uint8)
    label[2:6, 2:6, 3:8] = 1  # myocardium on slices 3..7
    label[3, 3, 5] = 2
    assert mid_slice(label) == 5
    assert mid_slice(np.zeros((4, 4, 6), np.uint8)) == 3
    images = [np.random.default_rng(i).random((40, 32)) for i in range(3)]
    labels = [np.pad(np.ones((20, 12), np.uint8), 10), None, np.zeros((40, 32), np.uint8)]
    path = save_montage(tmp_path / "m.png", images, labels, titles=["a", "b", "c"], ncols=2)
    assert path.read_bytes()[:8] == PNG_MAGIC and not list(tmp_path.glob(".*tmp*"))
    with pytest.raises(ValueError, match="one per panel"):
        save_montage(tmp_path / "bad.png", images, labels[:2])
