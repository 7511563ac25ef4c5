"""Canonical grid: shape, intensity scaling, round trip to the original grid, world positions,
coordinates at another spacing, and the errors users see."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lgesynth.data.canonical import CanonicalGrid, canonical_transforms
from lgesynth.data.canonical_case import from_canonical, to_canonical, to_canonical_arrays
from lgesynth.data.canonical_coords import canonical_coords, coords_for_spacing, physical_aspect
from lgesynth.data.canonical_intensity import denormalise_intensity
from lgesynth.data.canonical_orientation import slice_last_orientation
from lgesynth.dice import dice
from lgesynth.errors import DataError
from lgesynth.io import save_nifti, spacing_from_affine

SPACING = (1.4, 1.4, 8.0)


def ring_case(shape=(64, 64, 9), spacing=SPACING, centre=(31.3, 33.1), seed=0, aspect=1.0):
    """A short-axis stack: tapering myocardial ring with a scar sector, bright blood and scar.

    The first and last slices hold no myocardium; ``aspect`` stretches the ring along x. Returns
    image (x, y, z), label, affine.
    """
    nx, ny, nz = shape
    x = (np.arange(nx) - centre[0]) * spacing[0] / aspect
    y = (np.arange(ny) - centre[1]) * spacing[1]
    xx, yy = np.meshgrid(x, y, indexing="ij")
    r, theta = np.hypot(xx, yy), np.arctan2(yy, xx)
    label = np.zeros(shape, np.uint8)
    image = 100.0 + 20.0 * np.cos(xx / 30.0)[..., None] * np.ones(shape)
    for k in range(1, nz - 1):
        f = 1.0 - 0.5 * (k / (nz - 1)) ** 2  # smaller towards the apex
        ring = (r >= 17 * f) & (r <= 25 * f)
        scar = ring & (theta > 0.3) & (theta < 1.5)
        label[..., k][ring] = 1
        label[..., k][scar] = 2
        image[..., k][r < 17 * f] += 200.0
        image[..., k][scar] += 300.0
    image += np.random.default_rng(seed).normal(0.0, 5.0, shape)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = (-40.0, 25.0, -30.0)
    return image.astype(np.float32), label, affine


def reoriented(image, label, affine):
    """The same physical case stored slice-axis-first, with one flipped axis: (z, x, -y)."""
    perm = (2, 0, 1)
    image, label = np.transpose(image, perm), np.transpose(label, perm)
    affine = affine[:, [*perm, 3]]
    image, label = image[:, :, ::-1].copy(), label[:, :, ::-1].copy()
    flip = np.eye(4)
    flip[2, 2], flip[2, 3] = -1.0, label.shape[2] - 1
    return image, label, affine @ flip


def rotated(affine, degrees=20.0):
    """The affine of an oblique acquisition: world rotated about an in-plane-ish axis."""
    a = np.deg2rad(degrees)
    rot = np.eye(4)
    rot[:3, :3] = [[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]]
    return rot @ affine


def world_centroid(mask, affine):
    ijk = np.argwhere(mask).mean(0)
    return (affine @ np.append(ijk, 1.0))[:3]


CASES = {
    "axis_aligned": lambda: ring_case(),
    "slice_first_flipped": lambda: reoriented(*ring_case()),
    "oblique": lambda: (lambda im, lb, af: (im, lb, rotated(af)))(*ring_case()),
}


def test_canonical_shape_and_intensity_scaling():
    image, label, affine = ring_case()
    case = to_canonical_arrays(image, label, affine)
    assert case.image.shape == case.label.shape == (96, 96, 12)
    assert case.image.dtype == np.float32 and case.label.dtype == np.uint8
    assert case.image.min() >= -1.0 and case.image.max() <= 1.0
    # the robust percentiles land on -1 and +1, clipping about 0.5 % at each end
    np.testing.assert_allclose(np.percentile(case.image, [0.5, 99.5]), [-1.0, 1.0], atol=2e-3)
    assert 0.002 < np.mean(case.image <= -1 + 1e-6) < 0.01
    assert 0.002 < np.mean(case.image >= 1 - 1e-6) < 0.01
    lo, hi = case.meta["intensity_lo"], case.meta["intensity_hi"]
    assert image.min() <= lo < hi <= image.max()
    np.testing.assert_allclose(denormalise_intensity(np.array([-1.0, 1.0]), case.meta), [lo, hi])
    # every myocardial slice is kept: the canonical first and last slices hold myocardium
    assert (case.label[..., 0] > 0).any() and (case.label[..., -1] > 0).any()
    assert set(np.unique(case.label)) == {0, 1, 2}


@pytest.mark.parametrize("in_plane", ["fit", "square"])
def test_meta_is_json_and_crop_box_follows_in_plane(in_plane):
    """An elliptic ring (1.4 x as long along x): ``fit`` crops each axis to the myocardium + 10 mm either
    side, so the ring fills the grid along both axes (its aspect is in the voxel size); ``square`` crops a
    square in mm, so the ring keeps its aspect in the shape."""
    image, label, affine = ring_case(aspect=1.4)
    case = to_canonical_arrays(image, label, affine, grid=CanonicalGrid(in_plane=in_plane))
    meta = json.loads(json.dumps(case.meta))
    extent = np.asarray(meta["extent_mm"])
    idx = np.argwhere(label > 0)
    myo_mm = (idx.max(0) - idx.min(0) + 1)[:2] * np.asarray(SPACING[:2])
    assert myo_mm[0] > 1.3 * myo_mm[1]
    want = myo_mm + 20.0 if in_plane == "fit" else np.full(2, myo_mm.max() + 20.0)
    np.testing.assert_allclose(extent[:2], want, atol=SPACING[0])
    canonical = np.argwhere(case.label > 0)
    canonical_extent = canonical.max(0)[:2] - canonical.min(0)[:2] + 1
    aspect = canonical_extent[0] / canonical_extent[1]
    assert (aspect < 1.15) if in_plane == "fit" else (aspect > 1.3)  # fit: the fixed 10 mm margins remain
    voxel = spacing_from_affine(case.affine)
    assert (voxel[0] > 1.2 * voxel[1]) if in_plane == "fit" else voxel[0] == pytest.approx(voxel[1])
    assert meta["crop_box_original"][2] == [1, 8]  # the slices with myocardium, no more
    back = from_canonical(case.label, meta)
    assert back.shape == label.shape and dice(back > 0, label > 0) > 0.9


def test_grid_in_plane_default_records_and_errors():
    assert CanonicalGrid().in_plane == "fit" and CanonicalGrid.from_dict({"shape": [8, 8, 4]}).in_plane == "fit"
    # a bank recorded before the choice existed was cropped square
    assert CanonicalGrid.from_record({"shape": [8, 8, 4]}).in_plane == "square"
    assert CanonicalGrid.from_record(CanonicalGrid(in_plane="fit").to_dict()).in_plane == "fit"
    with pytest.raises(ValueError, match="in_plane"):
        CanonicalGrid(in_plane="round")


@pytest.mark.parametrize("name", list(CASES))
def test_round_trip_returns_labels_on_the_original_grid(name):
    image, label, affine = CASES[name]()
    case = to_canonical_arrays(image, label, affine)
    back = from_canonical(case.label, json.loads(json.dumps(case.meta)))
    assert back.shape == label.shape and back.dtype == np.uint8
    myo, scar = dice(back > 0, label > 0), dice(back == 2, label == 2)
    print(f"{name}: round-trip Dice myocardium {myo:.4f}, scar {scar:.4f}")
    assert myo >= 0.98 and scar >= 0.95
    np.testing.assert_allclose(case.meta["original_affine"], affine)
    # image: back in original units; outside the crop the de-normalised background
    image_back = from_canonical(case.image, case.meta, kind="image")
    inside = label > 0
    assert np.median(np.abs(image_back[inside] - image[inside])) < 0.05 * np.ptp(image)
    outside = np.ones(label.shape, bool)
    box = case.meta["crop_box_original"]
    outside[tuple(slice(max(lo, 0), hi) for lo, hi in box)] = False
    np.testing.assert_allclose(image_back[outside], case.meta["intensity_lo"], rtol=1e-5)


def test_orientation_only_permutes_and_flips():
    image, label, affine = ring_case()
    reference = to_canonical_arrays(image, label, affine)
    perm, flip = slice_last_orientation(reoriented(image, label, affine)[2])
    assert perm[-1] == 0 and perm == [1, 2, 0] and flip == [False, True, False]
    for name in ("slice_first_flipped", "oblique"):
        case = to_canonical_arrays(*CASES[name]())
        # the same physical case gives the same canonical arrays, whatever the storage order
        np.testing.assert_array_equal(case.label, reference.label)
        np.testing.assert_allclose(case.image, reference.image, atol=1e-5)
        np.testing.assert_allclose(case.meta["canonical_spacing_mm"], reference.meta["canonical_spacing_mm"])


@pytest.mark.parametrize("name", list(CASES))
def test_canonical_affine_keeps_world_positions(name):
    image, label, affine = CASES[name]()
    case = to_canonical_arrays(image, label, affine)
    original = world_centroid(label > 0, affine)
    canonical = world_centroid(case.label > 0, case.affine)
    assert np.linalg.norm(canonical - original) < 1.0, (canonical, original)  # mm
    assert np.linalg.norm(world_centroid(case.label == 2, case.affine) - world_centroid(label == 2, affine)) < 1.5


@pytest.mark.parametrize("in_plane", ["square", "fit"])
def test_coords_and_super_resolution_keep_physical_extent(in_plane):
    image, label, affine = ring_case()
    case = to_canonical_arrays(image, label, affine, grid=CanonicalGrid(in_plane=in_plane))
    a = physical_aspect(case.meta)
    extent = np.asarray(case.meta["extent_mm"])
    assert a == pytest.approx(extent[2] / extent[:2].mean())
    coords = canonical_coords(case.label.shape, a)
    assert coords.shape == (96 * 96 * 12, 3) and coords.dtype == torch.float32
    grid = coords.reshape(96, 96, 12, 3)
    assert grid[0, 0, 0].tolist() == pytest.approx([-1 + 1 / 96, -1 + 1 / 96, a * (-1 + 1 / 12)])
    assert grid[-1, -1, -1].tolist() == pytest.approx([1 - 1 / 96, 1 - 1 / 96, a * (1 - 1 / 12)])
    # one coordinate unit is half the box along x and y, and half their mean along z (the same on every
    # axis when the box is square in mm)
    unit_mm = np.array([extent[0], extent[1], extent[:2].mean()]) / 2
    step_mm = (grid[1, 1, 1] - grid[0, 0, 0]).numpy() * unit_mm
    np.testing.assert_allclose(step_mm, case.meta["canonical_spacing_mm"], rtol=1e-5)

    coords_1mm, shape, affine_1mm = coords_for_spacing(case.meta, 1.0)
    assert coords_1mm.shape == (int(np.prod(shape)), 3)
    np.testing.assert_allclose(spacing_from_affine(affine_1mm), 1.0, atol=0.05)
    # the same physical box: the outer corner of voxel 0 is at the same world position
    corner = np.array([-0.5, -0.5, -0.5, 1.0])
    np.testing.assert_allclose(affine_1mm @ corner, case.affine @ corner, atol=1e-6)
    # render the canonical label at 1 mm by nearest lookup: the myocardial volume is kept (ml)
    c = coords_1mm.numpy()
    idx = [np.clip(np.floor((c[:, k] / s + 1) / 2 * n), 0, n - 1).astype(int)
           for k, (n, s) in enumerate(zip(case.label.shape, (1.0, 1.0, a)))]
    label_1mm = case.label[tuple(idx)].reshape(shape)
    ml = lambda mask, aff: mask.sum() * np.prod(spacing_from_affine(aff)) / 1000.0  # noqa: E731
    assert ml(label_1mm > 0, affine_1mm) == pytest.approx(ml(label > 0, affine), rel=0.03)
    assert ml(label_1mm == 2, affine_1mm) == pytest.approx(ml(label == 2, affine), rel=0.05)
    # and its world centroid is where the original myocardium is
    assert np.linalg.norm(world_centroid(label_1mm > 0, affine_1mm) - world_centroid(label > 0, affine)) < 1.0


def test_monai_compose_from_files_and_its_inverse(tmp_path):
    image, label, affine = CASES["slice_first_flipped"]()
    save_nifti(tmp_path / "img.nii.gz", image, affine, dtype=np.float32)
    save_nifti(tmp_path / "lab.nii.gz", label, affine, dtype=np.uint8)
    grid = CanonicalGrid(shape=(64, 64, 10))
    case = to_canonical(tmp_path / "img.nii.gz", tmp_path / "lab.nii.gz", grid)
    assert case.label.shape == (64, 64, 10) and case.meta["source"]["label"].endswith("lab.nii.gz")

    from monai.bundle import ConfigParser  # as a bundle config would build it

    parser = ConfigParser({"transforms": {"_target_": "lgesynth.data.canonical.canonical_transforms",
                                          "grid": {"shape": [64, 64, 10]}}})
    xform = parser.get_parsed_content("transforms")
    out = xform({"image": str(tmp_path / "img.nii.gz"), "label": str(tmp_path / "lab.nii.gz")})
    np.testing.assert_array_equal(out["label"][0].numpy(), case.label)
    np.testing.assert_allclose(out["image"][0].numpy(), case.image, atol=1e-5)
    np.testing.assert_allclose(out["label"].affine.numpy(), case.affine, atol=1e-5)
    inverted = xform.inverse(out)
    back = inverted["label"]
    assert tuple(back.shape[1:]) == label.shape
    np.testing.assert_allclose(back.affine.numpy(), affine, atol=1e-5)
    assert dice(back[0].numpy() > 0.5, label > 0) >= 0.98
    np.testing.assert_array_equal(back[0].numpy().astype(np.uint8), from_canonical(case.label, case.meta))


def test_label_only_case(tmp_path):
    _, label, affine = ring_case()
    case = to_canonical_arrays(None, label, affine)
    assert case.image is None and case.label.shape == (96, 96, 12) and "intensity_lo" not in case.meta
    assert dice(from_canonical(case.label, case.meta) > 0, label > 0) >= 0.98
    save_nifti(tmp_path / "lab.nii.gz", label, affine, dtype=np.uint8)  # and the label-only Compose
    out = canonical_transforms(keys=("label",))({"label": str(tmp_path / "lab.nii.gz")})
    np.testing.assert_array_equal(out["label"][0].numpy(), case.label)


def test_errors_name_the_file(tmp_path):
    image, label, affine = ring_case()
    save_nifti(tmp_path / "img.nii.gz", image, affine, dtype=np.float32)
    save_nifti(tmp_path / "empty.nii.gz", np.zeros_like(label), affine, dtype=np.uint8)
    save_nifti(tmp_path / "small.nii.gz", label[:, :, :5], affine, dtype=np.uint8)
    save_nifti(tmp_path / "emidec.nii.gz", label * 2, affine, dtype=np.uint8)
    with pytest.raises(DataError, match=r"empty\.nii\.gz: label has no myocardium"):
        to_canonical(tmp_path / "img.nii.gz", tmp_path / "empty.nii.gz")
    with pytest.raises(DataError, match=r"small\.nii\.gz: shape \(64, 64, 5\) differs"):
        to_canonical(tmp_path / "img.nii.gz", tmp_path / "small.nii.gz")
    with pytest.raises(DataError, match=r"emidec\.nii\.gz: label values \[4\]"):
        to_canonical(tmp_path / "img.nii.gz", tmp_path / "emidec.nii.gz")
    with pytest.raises(DataError, match="no myocardium"):
        to_canonical_arrays(image, np.zeros_like(label), affine)
