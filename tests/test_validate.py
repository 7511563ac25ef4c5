"""Validation reports every problem of a dataset, each message starting with the offending file."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import synthetic_lge

from lgesynth.data.validate import check_datalist, check_masks, check_pair, slice_axis, validate_datalist
from lgesynth.errors import DataError
from lgesynth.io import save_nifti


def _one(problems: list[str], path) -> str:
    """The single problem, checked to start with ``path``."""
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{path}: "), problems
    return problems[0]


def test_clean_data_has_no_problems(tiny_datalist, lge_pair):
    assert check_pair(*lge_pair) == []
    assert check_datalist(tiny_datalist) == []
    entries = validate_datalist(tiny_datalist, sections="training")
    assert [e["id"] for e in entries] == ["p001", "p002", "p003"]


def test_corrupt_file_is_a_message_naming_it(lge_pair):
    image_path, label_path = lge_pair
    image_path.write_bytes(image_path.read_bytes()[:200])  # truncated download
    message = _one(check_pair(image_path, label_path), image_path)
    assert "corrupt or truncated" in message


def test_missing_file_is_named(lge_pair, tmp_path):
    missing = tmp_path / "nowhere.nii.gz"
    assert "file not found" in _one(check_pair(lge_pair[0], missing), missing)


def test_label_value_5_is_reported(tmp_path):
    image, label, affine = synthetic_lge()
    label[3, 3, 0] = 5
    image_path = save_nifti(tmp_path / "img.nii.gz", image, affine)
    label_path = save_nifti(tmp_path / "lab.nii.gz", label, affine, dtype=np.uint8)
    message = _one(check_pair(image_path, label_path), label_path)
    assert "label values 5 (1 voxels)" in message


def test_label_on_a_different_grid_is_reported(tmp_path):
    image, label, affine = synthetic_lge()
    image_path = save_nifti(tmp_path / "img.nii.gz", image, affine)
    shifted = affine.copy()
    shifted[0, 3] += 0.75  # half a voxel
    label_path = save_nifti(tmp_path / "shifted.nii.gz", label, shifted, dtype=np.uint8)
    message = _one(check_pair(image_path, label_path), label_path)
    assert "affine differs from its image" in message and "0.75 mm" in message
    cropped_path = save_nifti(tmp_path / "cropped.nii.gz", label[:, :, 1:], affine, dtype=np.uint8)
    message = _one(check_pair(image_path, cropped_path), cropped_path)
    assert "shape (32, 32, 5) differs from its image" in message and str(image_path) in message


def test_tiny_header_rounding_is_the_same_grid(tmp_path):
    image, label, affine = synthetic_lge()
    image_path = save_nifti(tmp_path / "img.nii.gz", image, affine)
    label_path = save_nifti(tmp_path / "lab.nii.gz", label, affine + 1e-5, dtype=np.uint8)
    assert check_pair(image_path, label_path) == []


def test_nan_volume_is_reported(tmp_path):
    image, label, affine = synthetic_lge()
    image[0, 0, :2] = np.nan
    image[1, 1, 1] = np.inf
    image_path = save_nifti(tmp_path / "nan.nii.gz", image, affine, dtype=np.float32)
    label_path = save_nifti(tmp_path / "lab.nii.gz", label, affine, dtype=np.uint8)
    assert "2 NaN and 1 inf voxels" in _one(check_pair(image_path, label_path), image_path)


def test_scar_outside_myocardium_in_separate_masks(tmp_path):
    image, label, affine = synthetic_lge()
    myo = save_nifti(tmp_path / "myo.nii.gz", label > 0, affine, dtype=np.uint8)
    scar = label == 2
    scar[0, 0, 0] = scar[0, 1, 0] = True  # two voxels in the corner, far from the ring
    scar_path = save_nifti(tmp_path / "scar.nii.gz", scar, affine, dtype=np.uint8)
    message = _one(check_masks(myo, scar_path), scar_path)
    assert "2 of 66 scar voxels" in message and "outside the myocardium" in message
    good = save_nifti(tmp_path / "good_scar.nii.gz", label == 2, affine, dtype=np.uint8)
    image_path = save_nifti(tmp_path / "img.nii.gz", image, affine)
    assert check_masks(myo, good, image_path) == []


def test_mask_on_another_grid_than_the_image(tmp_path):
    image, label, affine = synthetic_lge()
    image_path = save_nifti(tmp_path / "img.nii.gz", image, affine)
    myo = save_nifti(tmp_path / "myo.nii.gz", label[:, :, :5] > 0, affine, dtype=np.uint8)
    scar = save_nifti(tmp_path / "scar.nii.gz", label == 2, affine, dtype=np.uint8)
    assert "differs from the image" in _one(check_masks(myo, scar, image_path), myo)


@pytest.mark.parametrize("spacing, problem", [((0.1, 0.1, 8.0), "in-plane spacing 0.1 x 0.1 mm"),
                                              ((1.5, 1.5, 35.0), "slice spacing 35 mm"),
                                              ((1.5, 8.0, 1.5), "in-plane spacing 1.5 x 8 mm")])
def test_implausible_spacing_is_reported(tmp_path, spacing, problem):
    image, label, _ = synthetic_lge()
    affine = np.diag([*spacing, 1.0])
    image_path = save_nifti(tmp_path / "img.nii.gz", image, affine)
    label_path = save_nifti(tmp_path / "lab.nii.gz", label, affine, dtype=np.uint8)
    assert problem in _one(check_pair(image_path, label_path), image_path)


def test_slice_axis_is_the_one_with_fewest_voxels():
    assert slice_axis((256, 256, 8), np.array([1.0, 1.0, 10.0])) == 2
    assert slice_axis((12, 200, 180), np.array([8.0, 1.2, 1.2])) == 0
    assert slice_axis((64, 64, 64), np.array([1.0, 1.0, 1.0])) == 2


def test_empty_myocardium_and_all_scar_are_reported(tmp_path):
    image, label, affine = synthetic_lge()
    image_path = save_nifti(tmp_path / "img.nii.gz", image, affine)
    empty = save_nifti(tmp_path / "empty.nii.gz", np.zeros_like(label), affine, dtype=np.uint8)
    assert "no myocardium" in _one(check_pair(image_path, empty), empty)
    all_scar = save_nifti(tmp_path / "all_scar.nii.gz", (label > 0) * 2, affine, dtype=np.uint8)
    assert "whole myocardium is scar" in _one(check_pair(image_path, all_scar), all_scar)


def test_two_dimensional_image_is_reported(tmp_path):
    image, label, affine = synthetic_lge()
    flat = save_nifti(tmp_path / "flat.nii.gz", image[:, :, 2], affine)  # one 2D slice
    message = _one(check_pair(flat, save_nifti(tmp_path / "lab.nii.gz", label, affine, dtype=np.uint8)), flat)
    assert "expected a 3D volume" in message


def test_datalist_problems_all_listed_and_raised_once(tiny_datalist):
    folder = tiny_datalist.parent
    (folder / "imagesTr/p002.nii.gz").write_bytes(b"\x1f\x8b\x08\x00junk")
    image, label, affine = synthetic_lge(seed=3)
    label[0, 0, 0] = 7
    save_nifti(folder / "labelsTr/p004.nii.gz", label, affine, dtype=np.uint8)
    problems = check_datalist(tiny_datalist)
    assert len(problems) == 2, problems
    assert problems[0].startswith(f"{folder / 'imagesTr/p002.nii.gz'}: ")
    assert problems[1].startswith(f"{folder / 'labelsTr/p004.nii.gz'}: ") and "label values 7" in problems[1]
    with pytest.raises(DataError) as info:
        validate_datalist(tiny_datalist)
    message = str(info.value)
    assert message.startswith(f"{tiny_datalist}: 2 problem(s)")
    assert all(p in message for p in problems)
    assert check_datalist(tiny_datalist, sections="training") == problems[:1]  # p004 is the test case


def test_datalist_structure_problems(tmp_path, tiny_datalist):
    doc = json.loads(tiny_datalist.read_text())
    doc["test"][0]["id"] = "p001"
    del doc["training"][1]["label"]
    tiny_datalist.write_text(json.dumps(doc))
    problems = check_datalist(tiny_datalist)
    assert problems == [f'{tiny_datalist}: entry "p002" (training) has no "label"',
                        f'{tiny_datalist}: entry "p001" (test) repeats the id of an entry in training; ids must be unique']
    assert len(check_datalist(tiny_datalist, require_label=False)) == 1
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert _one(check_datalist(broken), broken)
