"""The dataset fingerprint measures what the synthetic phantom was built with."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import INTENSITY, RING_INNER_MM, synthetic_lge, write_tiny_datalist

from lgesynth.data.fingerprint import (blood_pool_mask, case_fingerprint, compare_table, fingerprint, fingerprint_table,
                                       print_fingerprint, remote_mask, write_fingerprint)
from lgesynth.data.importers import import_emidec

EMIDEC = Path(__file__).resolve().parents[2] / "shared/data/emidec50"
VOXEL_ML = 1.5 * 1.5 * 8.0 / 1000


def _cavity() -> np.ndarray:
    """The fixture's LV cavity: inside the inner ring radius, on the ring slices 1..4. (32, 32, 6) bool."""
    r = np.hypot(*np.meshgrid((np.arange(32) - 15.5) * 1.5, (np.arange(32) - 15.5) * 1.5, indexing="ij"))
    cavity = np.zeros((32, 32, 6), dtype=bool)
    cavity[..., 1:5] = (r < RING_INNER_MM)[..., None]
    return cavity


def test_case_fingerprint_measures_the_phantom_exactly():
    image, label, affine = synthetic_lge(noise=0.0)
    fp = case_fingerprint(image, label, affine)
    assert fp["spacing_mm"] == [1.5, 1.5, 8.0] and fp["shape"] == [32, 32, 6] and fp["slice_axis"] == 2
    assert fp["slices_with_myocardium"] == 4
    assert fp["myocardium_ml"] == pytest.approx((label > 0).sum() * VOXEL_ML)
    assert fp["scar_burden"] == pytest.approx(64 / 512)
    assert fp["blood_pool_ml"] == pytest.approx(_cavity().sum() * VOXEL_ML)
    p1, p99 = np.percentile(image[image != 0], [1, 99])
    assert fp["normaliser"] == pytest.approx([p1, p99])
    scaled = {k: (v - p1) / (p99 - p1) for k, v in INTENSITY.items()}
    assert fp["intensity"]["remote"]["p50"] == pytest.approx(scaled["myocardium"])
    assert fp["intensity"]["blood_pool"]["p5"] == pytest.approx(scaled["blood"])
    # offset-free contrasts: the background level (p1) is subtracted before the ratio
    assert fp["contrast"]["scar_remote"] == pytest.approx(scaled["scar"] / scaled["myocardium"])
    assert fp["contrast"]["blood_remote"] == pytest.approx(scaled["blood"] / scaled["myocardium"])


def test_no_scar_case_has_no_scar_numbers():
    fp = case_fingerprint(*synthetic_lge(scar_degrees=0.0))
    assert fp["has_scar"] is False and fp["scar_burden"] == 0.0
    assert fp["intensity"]["scar"] is None and fp["contrast"]["scar_remote"] is None
    assert fp["contrast"]["blood_remote"] > 3


def test_regions_follow_the_slice_axis():
    image, label, affine = synthetic_lge(noise=0.0)
    np.testing.assert_array_equal(blood_pool_mask(label > 0, axis=2), _cavity())
    # the same case with the slices on axis 0
    moved = case_fingerprint(np.moveaxis(image, 2, 0), np.moveaxis(label, 2, 0), np.diag([8.0, 1.5, 1.5, 1.0]))
    assert moved["slice_axis"] == 0 and moved["slices_with_myocardium"] == 4
    assert moved["blood_pool_ml"] == pytest.approx(_cavity().sum() * VOXEL_ML)


def test_remote_myocardium_leaves_out_the_border_zone():
    _, label, _ = synthetic_lge(noise=0.0)
    remote = remote_mask(label, np.array([1.5, 1.5, 8.0]), axis=2)
    assert not (remote & (label != 1)).any()
    np.testing.assert_array_equal(remote[..., 1], label[..., 1] == 1)  # no scar on this slice: all remote
    scar_slice = label[..., 2]
    near = np.zeros_like(scar_slice, dtype=bool)  # healthy voxels within 2 steps (3 mm) of scar in plane
    for dx in range(-2, 3):
        for dy in range(-2, 3):
            if abs(dx) + abs(dy) <= 2:
                near |= np.roll(np.roll(scar_slice == 2, dx, 0), dy, 1)
    np.testing.assert_array_equal(remote[..., 2], (scar_slice == 1) & ~near)


def test_cohort_summary_json_and_tables(tiny_datalist, tmp_path, capsys):
    fp = fingerprint(tiny_datalist)
    s = fp["summary"]
    assert s["median_spacing_mm"] == [1.5, 1.5, 8.0] and s["median_shape"] == [32, 32, 6]
    assert s["num_cases"] == 4 and s["num_with_scar"] == 2 and s["sections"] == {"training": 3, "test": 1}
    assert s["scar_burden"]["n"] == 2 and s["scar_burden"]["median"] == pytest.approx(0.125)
    assert s["intensity"]["scar"]["p50"]["n"] == 2 and s["intensity"]["remote"]["p50"]["n"] == 4
    assert [c["id"] for c in fp["cases"]] == ["p001", "p002", "p003", "p004"]
    assert fingerprint(tiny_datalist, sections="test")["summary"]["num_cases"] == 1

    path = write_fingerprint(tmp_path / "fp" / "fingerprint.json", fp)
    assert json.loads(path.read_text()) == json.loads(json.dumps(fp))

    table = fingerprint_table(fp)
    assert "4 cases (training 3, test 1), 2 with scar" in table
    assert any(line.startswith("spacing axis 2 (mm)") and "8.00" in line for line in table.splitlines())
    assert any(line.startswith("scar burden (%), scar cases") and "12.5" in line for line in table.splitlines())
    print_fingerprint(fp)
    assert capsys.readouterr().out.strip() == table

    other = fingerprint(write_tiny_datalist(tmp_path / "big", n_cases=3, shape=(40, 40, 8), spacing_mm=(1.25, 1.25, 10.0)))
    both = compare_table(fp, other, ("phantom", "bigger"))
    header, cases = both.splitlines()[:2]
    assert "phantom" in header and "bigger" in header
    assert "4 (2 with scar)" in cases and "3 (2 with scar)" in cases
    assert any(line.startswith("shape axis 2 (voxels)") and "6 [6-6]" in line and "8 [8-8]" in line for line in both.splitlines())


@pytest.mark.real_data
@pytest.mark.skipif(not EMIDEC.is_dir(), reason=f"{EMIDEC} not present")
def test_real_emidec50_fingerprint(tmp_path):
    datalist = import_emidec(EMIDEC, tmp_path / "emidec50")
    fp = fingerprint(datalist)
    s = fp["summary"]
    assert s["median_spacing_mm"] == [1.0, 1.0, 10.0] and s["median_shape"] == [256, 256, 7]
    assert s["num_with_scar"] == 34 and 0.1 < s["scar_burden"]["median"] < 0.3  # README: about 20 %
    assert s["blood_pool_ml"]["n"] == 50 and s["blood_pool_ml"]["min"] > 0
