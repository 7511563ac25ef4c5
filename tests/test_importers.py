"""Importers map other label conventions to ours, keep the images as they are, and report bad cases."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import synthetic_lge

from lgesynth.data.datalist import load_datalist
from lgesynth.data.importers import import_emidec, import_masks
from lgesynth.data.validate import check_datalist
from lgesynth.errors import DataError
from lgesynth.io import load_nifti, save_nifti

EMIDEC = Path(__file__).resolve().parents[2] / "shared/data/emidec50"


def _emidec_case(src: Path, case_id: str, scar: bool, seed: int = 0) -> tuple[Path, Path, np.ndarray]:
    """An EMIDEC-layout case; returns (image path, contour path, the expected lgesynth label).

    Contour: 1 cavity (inside the ring), 2 myocardium, 3 infarct, 4 no-reflow (the infarct of the
    first scar slice).
    """
    image, label, affine = synthetic_lge(scar_degrees=90.0 if scar else 0.0, seed=seed)
    r = np.hypot(*np.meshgrid((np.arange(32) - 15.5) * 1.5, (np.arange(32) - 15.5) * 1.5, indexing="ij"))
    contour = np.zeros(label.shape, dtype=np.uint8)
    for k in range(1, 5):
        contour[..., k][r < 7.5] = 1
    contour[label == 1] = 2
    contour[label == 2] = 3
    contour[..., 2][label[..., 2] == 2] = 4
    image_path = save_nifti(src / case_id / "Images" / f"{case_id}.nii.gz", np.round(image), affine, dtype=np.int16)
    contour_path = save_nifti(src / case_id / "Contours" / f"{case_id}.nii.gz", contour, affine, dtype=np.uint8)
    return image_path, contour_path, label


@pytest.fixture
def emidec_tree(tmp_path) -> Path:
    """Six EMIDEC-layout cases: Case_N001..N002 without infarct, Case_P003..P006 with."""
    src = tmp_path / "emidec"
    for i in range(1, 7):
        _emidec_case(src, f"Case_{'N' if i <= 2 else 'P'}{i:03d}", scar=i > 2, seed=i)
    (src / "README.md").write_text("not a case")
    return src


def test_emidec_labels_mapped_and_images_kept(emidec_tree, tmp_path):
    datalist = import_emidec(emidec_tree, tmp_path / "out", test_fraction=0.5, seed=1)
    assert datalist == tmp_path / "out" / "datalist.json"
    entries = {e["id"]: e for e in load_datalist(datalist)}
    assert sorted(entries) == ["Case_N001", "Case_N002", "Case_P003", "Case_P004", "Case_P005", "Case_P006"]
    source = emidec_tree / "Case_P003"
    label, label_affine = load_nifti(entries["Case_P003"]["label"])
    expected = _emidec_case(tmp_path / "again", "Case_P003", scar=True, seed=3)[2]
    assert label.dtype == np.uint8
    np.testing.assert_array_equal(label, expected)  # cavity -> 0, myocardium -> 1, infarct and no-reflow -> 2
    image, affine = load_nifti(entries["Case_P003"]["image"])
    original, original_affine = load_nifti(source / "Images/Case_P003.nii.gz")
    assert image.dtype == np.int16
    np.testing.assert_array_equal(image, original)
    np.testing.assert_array_equal(affine, original_affine)
    np.testing.assert_array_equal(label_affine, original_affine)
    assert entries["Case_P003"]["source"] == str(source / "Images/Case_P003.nii.gz")
    assert entries["Case_P003"]["source_label"] == str(source / "Contours/Case_P003.nii.gz")
    assert [entries[i]["scar"] for i in sorted(entries)] == [False, False, True, True, True, True]
    assert check_datalist(datalist) == []


def test_emidec_split_is_stratified_seeded_and_relative(emidec_tree, tmp_path):
    datalist = import_emidec(emidec_tree, tmp_path / "a", test_fraction=0.5, seed=1)
    doc = json.loads(datalist.read_text())
    test = doc["test"]
    assert len(test) == 3 and sum(e["scar"] for e in test) == 2  # one of 2 normal, two of 4 infarct cases
    assert doc["numTraining"] == 3 and doc["numTest"] == 3 and doc["licence"] == "CC BY-NC-SA 4.0"
    assert doc["labels"] == {"0": "background", "1": "healthy myocardium", "2": "scar"}
    assert all(e["image"] == f"imagesTr/{e['id']}.nii.gz" for e in doc["training"] + test)
    again = json.loads(import_emidec(emidec_tree, tmp_path / "b", test_fraction=0.5, seed=1).read_text())
    assert [e["id"] for e in again["test"]] == [e["id"] for e in test]


def test_emidec_bad_cases_stop_the_import_and_name_every_file(emidec_tree, tmp_path):
    image = emidec_tree / "Case_P004/Images/Case_P004.nii.gz"
    image.write_bytes(image.read_bytes()[:300])  # truncated
    contour = emidec_tree / "Case_P005/Contours/Case_P005.nii.gz"
    data, affine = load_nifti(contour)
    data[0, 0, 0] = 9
    save_nifti(contour, data, affine, dtype=np.uint8)
    (emidec_tree / "Case_N002/Contours/Case_N002.nii.gz").unlink()
    with pytest.raises(DataError) as info:
        import_emidec(emidec_tree, tmp_path / "out")
    message = str(info.value)
    assert message.startswith(f"{emidec_tree}: 3 of 6 cases have problems; datalist not written")
    assert f"\n  {image}: cannot read as NIfTI" in message
    assert f"\n  {contour}: contour values 9 are not EMIDEC labels" in message
    assert f"\n  {emidec_tree / 'Case_N002/Contours/Case_N002.nii.gz'}: file not found" in message
    assert not (tmp_path / "out/datalist.json").exists()


def test_emidec_skip_bad_warns_and_records(emidec_tree, tmp_path):
    image = emidec_tree / "Case_P004/Images/Case_P004.nii.gz"
    image.write_bytes(b"not a nifti")
    with pytest.warns(UserWarning, match=f"{image}: .*case Case_P004 skipped"):
        datalist = import_emidec(emidec_tree, tmp_path / "out", skip_bad=True)
    doc = json.loads(datalist.read_text())
    assert "Case_P004" not in [e["id"] for e in doc["training"] + doc["test"]]
    assert [s["id"] for s in doc["skipped"]] == ["Case_P004"] and str(image) in doc["skipped"][0]["problems"][0]


def test_emidec_contour_on_another_grid(emidec_tree, tmp_path):
    contour = emidec_tree / "Case_P003/Contours/Case_P003.nii.gz"
    data, affine = load_nifti(contour)
    save_nifti(contour, data[:, :, :5], affine, dtype=np.uint8)
    with pytest.raises(DataError, match=f"{contour}: shape \\(32, 32, 5\\) differs from its image"):
        import_emidec(emidec_tree, tmp_path / "out")


def test_not_an_emidec_folder(tmp_path):
    with pytest.raises(DataError, match="no EMIDEC cases found"):
        import_emidec(tmp_path, tmp_path / "out")


def _mask_files(folder: Path, ids: list[str], layout: str) -> None:
    """Images and separate masks: ``layout="folders"`` (images/, myo/, scar/ by stem) or ``"flat"`` (one folder, suffixes)."""
    for i, case_id in enumerate(ids):
        image, label, affine = synthetic_lge(scar_degrees=90.0 if i % 2 == 0 else 0.0, seed=i)
        names = {"folders": (f"images/{case_id}", f"myo/{case_id}", f"scar/{case_id}"),
                 "flat": (f"raw/{case_id}_lge", f"raw/{case_id}_myo", f"raw/{case_id}_scar")}[layout]
        save_nifti(folder / f"{names[0]}.nii.gz", image, affine, dtype=np.float32)
        save_nifti(folder / f"{names[1]}.nii.gz", (label > 0) * 255, affine, dtype=np.uint8)  # nonzero = inside
        save_nifti(folder / f"{names[2]}.nii.gz", label == 2, affine, dtype=np.uint8)


def test_import_masks_from_folders(tmp_path):
    _mask_files(tmp_path, ["a1", "a2", "a3"], "folders")
    datalist = import_masks(tmp_path / "images", tmp_path / "myo", tmp_path / "scar", tmp_path / "out", test_fraction=0.0)
    entries = load_datalist(datalist)
    assert [e["id"] for e in entries] == ["a1", "a2", "a3"] and [e["scar"] for e in entries] == [True, False, True]
    label, _ = load_nifti(entries[0]["label"])
    np.testing.assert_array_equal(label, synthetic_lge(seed=0)[1])
    assert entries[0]["source_scar"] == str(tmp_path / "scar/a1.nii.gz")
    assert check_datalist(datalist) == []
    no_scar = load_datalist(import_masks(tmp_path / "images", tmp_path / "myo", None, tmp_path / "no_scar"))
    assert [e["scar"] for e in no_scar] == [False, False, False]
    assert set(load_nifti(no_scar[0]["label"])[0].ravel()) == {0, 1}


def test_import_masks_from_glob_patterns(tmp_path):
    _mask_files(tmp_path, ["s01", "s02", "s03", "s04"], "flat")
    raw = tmp_path / "raw"
    datalist = import_masks(f"{raw}/*_lge.nii.gz", f"{raw}/*_myo.nii.gz", f"{raw}/*_scar.nii.gz", tmp_path / "out",
                            test_fraction=0.5)
    doc = json.loads(datalist.read_text())
    assert sorted(e["id"] for e in doc["training"] + doc["test"]) == ["s01", "s02", "s03", "s04"]
    assert sorted(e["scar"] for e in doc["test"]) == [False, True]


def test_import_masks_scar_outside_myocardium_is_an_error_or_clipped(tmp_path):
    _mask_files(tmp_path, ["a1", "a2"], "folders")
    scar_path = tmp_path / "scar/a1.nii.gz"
    scar, affine = load_nifti(scar_path)
    scar[0, 0, 0] = 1
    save_nifti(scar_path, scar, affine, dtype=np.uint8)
    with pytest.raises(DataError, match=f"{scar_path}: 1 of 65 scar voxels .* outside the myocardium mask"):
        import_masks(tmp_path / "images", tmp_path / "myo", tmp_path / "scar", tmp_path / "out")
    with pytest.warns(UserWarning, match=f"{scar_path}: 1 of 65 scar voxels .* clipped"):
        datalist = import_masks(tmp_path / "images", tmp_path / "myo", tmp_path / "scar", tmp_path / "out", clip_scar=True)
    label, _ = load_nifti(load_datalist(datalist)[0]["label"])
    assert label[0, 0, 0] == 0 and (label == 2).sum() == 64


def test_import_masks_unmatched_ids_are_named(tmp_path):
    _mask_files(tmp_path, ["a1", "a2"], "folders")
    (tmp_path / "scar/a2.nii.gz").rename(tmp_path / "scar/a2_typo.nii.gz")
    with pytest.raises(DataError) as info:
        import_masks(tmp_path / "images", tmp_path / "myo", tmp_path / "scar", tmp_path / "out")
    message = str(info.value)
    assert f"{tmp_path / 'images/a2.nii.gz'}: no scar file with id 'a2'" in message
    assert f"{tmp_path / 'scar/a2_typo.nii.gz'}: no image file with id 'a2_typo'" in message
    with pytest.raises(DataError, match="no myocardium mask files found"):
        import_masks(tmp_path / "images", tmp_path / "nothing/*.nii.gz", tmp_path / "scar", tmp_path / "out")


@pytest.mark.real_data
@pytest.mark.skipif(not EMIDEC.is_dir(), reason=f"{EMIDEC} not present")
def test_real_emidec50_imports_and_validates(tmp_path):
    start = time.perf_counter()
    datalist = import_emidec(EMIDEC, tmp_path / "emidec50")
    entries = load_datalist(datalist)
    assert len(entries) == 50
    assert sum(e["scar"] for e in entries) == 34  # the 34 Case_P… cases have infarct
    assert all(e["scar"] == e["id"].startswith("Case_P") for e in entries)
    assert check_datalist(datalist) == []
    print(f"emidec50: import + validate {time.perf_counter() - start:.1f} s")
