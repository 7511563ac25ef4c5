"""The quality report against the source cohort, on hand-made ring cohorts (no networks).

The source cohort: 8 short-axis stacks of 40 x 40 x 6 voxels at 1.5 x 1.5 x 8 mm, a ring on slices 1..4
whose outer radius (11..14 voxels) and inner radius (6..8 voxels) differ between subjects, a scar
sector on every other one. A "dilated decoder" cohort is the same stacks with the myocardium grown by
one voxel in-plane (4-connected): every wall is two voxels (3 mm) thicker and every myocardium larger,
what a decoder that dilates masks produces.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from lgesynth.synth.features import FEATURES
from lgesynth.synth.figures import nearest_panels
from lgesynth.synth.report import quality_report, report_metrics, write_report
from lgesynth.synth.stats import CohortStats, load_source_stats

SHAPE = (40, 40, 6)
SPACING = (1.5, 1.5, 8.0)


def _ring_case(i: int) -> tuple[np.ndarray, np.ndarray]:
    """Subject ``i``: image (x, y, z) float32 (background 0, blood 1 - 0.03 i, myocardium -1, scar 1.5 + 0.05 i),
    label 0/1/2."""
    x, y = np.meshgrid(np.arange(SHAPE[0]) - 19.5, np.arange(SHAPE[1]) - 19.5, indexing="ij")
    r, angle = np.hypot(x, y), np.degrees(np.arctan2(y, x)) % 360
    outer, inner = 11 + i % 4, 6 + (i // 2) % 3
    label = np.zeros(SHAPE, np.uint8)
    image = np.zeros(SHAPE, np.float32)
    for k in range(1, 5):
        ring = (r <= outer - (k == 4)) & (r >= inner)
        label[..., k][ring] = 1
        image[..., k][r < inner] = 1.0 - 0.03 * i
        image[..., k][ring] = -1.0
        if i % 2 == 0 and k in (2, 3):
            sector = ring & (angle < 60 + 10 * i)
            label[..., k][sector] = 2
            image[..., k][sector] = 1.5 + 0.05 * i
    return image, label


def _dilated(label: np.ndarray) -> np.ndarray:
    """The myocardium grown by one voxel in-plane (scar kept)."""
    cross = np.zeros((3, 3, 3), bool)
    cross[:, :, 1] = ndi.generate_binary_structure(2, 1)
    out = ndi.binary_dilation(label > 0, structure=cross).astype(np.uint8)
    out[label == 2] = 2
    return out


def _cohort(prefix: str, cases, keep_slices=None, latents=None) -> CohortStats:
    stats = CohortStats(SHAPE, keep_slices=keep_slices, latents=latents)
    for i, (image, label) in enumerate(cases):
        stats.add(f"{prefix}{i}", image, label, SPACING)
    return stats


@pytest.fixture(scope="module")
def source():
    return _cohort("t", [_ring_case(i) for i in range(8)])


def test_the_source_against_itself_shows_no_shift_and_an_sd_ratio_of_1(source):
    report = quality_report(source, source, source=source)
    assert report["source"]["available"] and report["num_source"] == 8 and report["source_plausible_fraction"] == 1.0
    for name in FEATURES:
        row = report["features"][name]
        assert row["source_std"] > 0, name
        assert row["mean_shift_sd"] == pytest.approx(0.0, abs=1e-12) and row["sd_ratio"] == pytest.approx(1.0), name
        assert row["ks_source_statistic"] == 0.0 and row["ks_source_pvalue"] == pytest.approx(1.0), name
        assert row["reference_shift_sd"] == pytest.approx(0.0, abs=1e-12), name


def test_a_dilated_cohort_shows_its_bias_against_the_source_but_not_against_itself(source):
    dilated = _cohort("d", [(image, _dilated(label)) for image, label in (_ring_case(i) for i in range(8))])
    samples = _cohort("s", [(image, _dilated(label)) for image, label in (_ring_case(i) for i in range(8))])
    report = quality_report(samples, dilated, source=source)
    for name in ("myocardial_volume_ml", "wall_thickness_mm"):
        row = report["features"][name]
        assert row["mean_shift_sd"] > 0.5, (name, row)        # about one source SD larger
        assert row["sd_ratio"] == pytest.approx(1.0, abs=0.1)  # a shift, not a spread
        assert row["reference_shift_sd"] == pytest.approx(row["mean_shift_sd"])  # the decoded cohort's own bias
        assert row["ks_statistic"] == 0.0                     # against the dilated reference nothing shows
        assert row["ks_source_statistic"] > 0.3
    assert report["features"]["scar_burden"]["mean_shift_sd"] < 0  # same scar in a larger myocardium
    thick = report["features"]["wall_thickness_mm"]
    assert thick["sample_mean"] - thick["source_mean"] == pytest.approx(3.0, abs=0.5)  # two voxels of 1.5 mm
    metrics = report_metrics(report)
    assert metrics["shift_sd_myocardial_volume_ml"] == report["features"]["myocardial_volume_ml"]["mean_shift_sd"]
    assert {f"{k}_{n}" for k in ("shift_sd", "sd_ratio", "ks_source", "ks") for n in ("wall_thickness_mm",)} <= set(metrics)


def test_without_source_stats_the_report_says_why_and_the_source_columns_are_null(source, tmp_path):
    decoded = _cohort("t", [_ring_case(i) for i in range(8)], keep_slices=0)  # as stored: no mid slices
    report = write_report(tmp_path, source, decoded, source_missing="source files unreadable at export")
    assert report["source"] == {"available": False, "reason": "source files unreadable at export"}
    row = report["features"]["myocardial_volume_ml"]
    assert row["source_mean"] is None and row["mean_shift_sd"] is None and row["ks_source_statistic"] is None
    assert row["ks_statistic"] == 0.0 and not any(k.startswith("shift_sd_") for k in report_metrics(report))
    assert report["nearest"]["file"] is None and "source" in report["nearest"]["reason"]
    assert not (tmp_path / "nearest.png").exists() and (tmp_path / "report.png").is_file()


def test_nearest_png_pairs_each_sample_with_the_training_subject_the_memorisation_section_names(source, tmp_path):
    """Samples: training subjects 5, 2, 7 with their walls grown by one voxel, then 18 exact copies cycling over
    the cohort; the memorisation section names each sample's nearest subject and nearest.png shows it."""
    picks = [5, 2, 7] + [i % 8 for i in range(18)]
    cases = [_ring_case(i) for i in picks]
    samples = _cohort("s", [(image, _dilated(label) if j < 3 else label) for j, (image, label) in enumerate(cases)],
                      keep_slices=16)
    assert len(samples.slices) == 16
    source.save(tmp_path, "source")
    stored = CohortStats.load(tmp_path, "source")
    assert set(stored.slices) == set(source.ids)
    for sid in source.ids:
        np.testing.assert_array_equal(stored.slices[sid][1], source.slices[sid][1])
        np.testing.assert_allclose(stored.slices[sid][0], source.slices[sid][0], atol=1e-3)  # float16 on disk
    reference = _cohort("t", [_ring_case(i) for i in range(8)], keep_slices=0)  # like a decoded reference: no slices

    report = write_report(tmp_path / "out", samples, reference, source=stored)
    per_sample = {r["id"]: r for r in report["memorisation"]["per_sample"]}
    assert all(per_sample[f"s{j}"]["nn_image"] == f"t{picks[j]}" for j in range(3, len(picks)))  # the copies
    pairs = report["nearest"]["pairs"]
    assert len(pairs) == 16 and report["nearest"]["file"] == "nearest.png"
    assert [p["sample"] for p in pairs] == [f"s{j}" for j in range(16)]
    assert all(p["training"] == per_sample[p["sample"]]["nn_image"] for p in pairs)
    assert all(p["distance"] == per_sample[p["sample"]]["nn_image_distance"] for p in pairs)
    assert (tmp_path / "out" / "nearest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "out" / "report.json").read_text())["nearest"]["pairs"] == pairs

    panels, _ = nearest_panels(report, samples, stored.slices)
    assert len(panels) == 32
    for j in range(16):  # the right-hand panel is the named subject's stored mid slice
        named = per_sample[f"s{j}"]["nn_image"]
        np.testing.assert_array_equal(panels[2 * j + 1][1], stored.slices[named][1])
        assert panels[2 * j + 1][2].startswith(f"nearest {named} d=") and panels[2 * j][2] == f"s{j}"
    assert panels[7][2] == "nearest t0 d=0.000"  # s3 is a copy of t0


def test_source_stats_without_images_round_trip_and_a_missing_source_is_named(tmp_path):
    stats = _cohort("t", [(None, _ring_case(i)[1]) for i in range(2)], latents=torch.zeros(2, 4))
    stats.save(tmp_path, "source")
    back = CohortStats.load(tmp_path, "source")
    assert back.slices["t0"][0] is None and back.slices["t0"][1].shape == SHAPE[:2]
    assert load_source_stats(tmp_path)[0].ids == ["t0", "t1"]
    stats_missing, why = load_source_stats(tmp_path, {"source": {"missing": "bank not found"}})
    assert stats_missing is None and why == "bank not found"
    none, why = load_source_stats(tmp_path / "empty")
    assert none is None and "source.json not found" in why
    (tmp_path / "source.safetensors").write_bytes(b"torn")
    from lgesynth.errors import DataError

    with pytest.raises(DataError, match="source.json: unreadable cohort statistics"):
        CohortStats.load(tmp_path, "source")
