"""Regional metrics: Dice, HD95 in mm, burden error, basal / mid / apical thirds with the apex from anatomy."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lgesynth.dice import dice
from lgesynth.seg.metrics import hd95_mm, regional_metrics, scar_burden
from lgesynth.seg.regions import REGIONS, split_thirds, third_sizes

SPACING = (1.5, 1.5, 8.0)


def cone_label(n_myo: int = 9, n_total: int = 11, size: int = 40, apex_high: bool = True,
               open_base: bool = False, scar_slices=None) -> np.ndarray:
    """Slices 1..n_myo hold a ring whose radius shrinks towards the apex (high index when ``apex_high``).

    Scar: the 0-90 degree sector of the ring on ``scar_slices`` (default: all myocardial slices).
    ``open_base`` removes a 120-degree arc of the two basal rings (an open LVOT-like ring).
    """
    x = (np.arange(size) - (size - 1) / 2) * SPACING[0]
    xx, yy = np.meshgrid(x, x, indexing="ij")
    r, angle = np.hypot(xx, yy), np.degrees(np.arctan2(yy, xx))
    label = np.zeros((size, size, n_total), dtype=np.uint8)
    scar_slices = range(n_myo) if scar_slices is None else scar_slices
    for i in range(n_myo):  # i = 0 at the base
        outer = 25.0 - 2.0 * i
        ring = (r <= outer) & (r >= outer - 6.0)
        if open_base and i < 2:
            ring &= ~((angle > 120) | (angle < -120))
        k = 1 + i if apex_high else n_myo - i
        label[..., k][ring] = 1
        if i in scar_slices:
            label[..., k][ring & (angle >= 0) & (angle <= 90)] = 2
    return label


def test_dice_of_two_boxes():
    a = np.zeros((10, 10, 4), bool)
    b = np.zeros_like(a)
    a[2:6, 2:6, 1:3] = True  # 32 voxels
    b[3:7, 2:6, 1:3] = True  # shifted by one: overlap 3 * 4 * 2 = 24
    assert dice(a, b) == pytest.approx(2 * 24 / 64)
    assert dice(a, a) == 1.0


def test_hd95_in_mm_with_anisotropic_spacing():
    spacing = (1.4, 1.4, 8.0)
    truth = np.zeros((16, 16, 6), bool)
    truth[2:8, 2:8, 2] = True  # a one-voxel-thick plate: every voxel is surface
    in_plane = np.roll(truth, 3, axis=0)  # distances 3, 2, 1, 0, 0, 0 voxels per row: 95th pct = 3 voxels
    assert hd95_mm(in_plane, truth, spacing) == pytest.approx(3 * 1.4)
    through = np.roll(truth, 1, axis=2)  # one slice up: every distance is one slice
    assert hd95_mm(through, truth, spacing) == pytest.approx(8.0)
    assert hd95_mm(truth, truth, spacing) == 0.0


def test_hd95_agrees_with_monai_on_shifted_ellipsoids():
    from monai.metrics import compute_hausdorff_distance

    spacing = (1.3, 0.9, 6.0)
    grid = np.indices((40, 36, 12)).astype(float)
    centre = np.array([20, 18, 6.0])[:, None, None, None]
    radii = np.array([12, 10, 4.0])[:, None, None, None]
    truth = (((grid - centre) / radii) ** 2).sum(0) <= 1
    pred = (((grid - centre - np.array([2, -1, 1.0])[:, None, None, None]) / (radii * 0.9)) ** 2).sum(0) <= 1
    ours = hd95_mm(pred, truth, spacing)
    theirs = float(compute_hausdorff_distance(pred[None, None], truth[None, None], include_background=True,
                                              percentile=95, spacing=spacing)[0, 0])
    assert ours > 1.0 and ours == pytest.approx(theirs, rel=1e-5)


def test_empty_mask_conventions():
    empty, some = np.zeros((8, 8, 3), bool), np.zeros((8, 8, 3), bool)
    some[2:4, 2:4, 1] = True
    assert math.isnan(dice(empty, empty)) and hd95_mm(empty, empty, SPACING) == 0.0
    assert dice(some, empty) == 0.0 and math.isnan(hd95_mm(some, empty, SPACING))
    assert dice(empty, some) == 0.0 and math.isnan(hd95_mm(empty, some, SPACING))


def test_scar_free_heart_has_no_scar_dice_unless_scar_is_predicted():
    truth = np.where(cone_label() == 2, 1, cone_label())
    m = regional_metrics(truth, truth, SPACING)
    assert m["dice_myo"] == 1.0 and all(math.isnan(m[f"dice_scar{r}"]) for r in ("", "_basal", "_mid", "_apical"))
    pred = truth.copy()
    pred[..., 8][pred[..., 8] == 1] = 2  # scar predicted on one apical slice
    m = regional_metrics(pred, truth, SPACING)
    assert m["dice_scar"] == 0.0 and m["dice_scar_apical"] == 0.0 and math.isnan(m["dice_scar_basal"])


def test_scar_burden_error_in_percentage_points():
    truth = np.zeros((10, 10, 1), np.uint8)
    truth[:, :, 0] = 1  # 100 myocardium voxels
    truth[:2, :, 0] = 2  # 20 scar: 20 %
    pred = truth.copy()
    pred[2, :, 0] = 2  # 30 scar: 30 %
    assert scar_burden(truth) == pytest.approx(0.2)
    metrics = regional_metrics(pred, truth, (1.0, 1.0, 8.0), axis=2)
    assert metrics["burden_error_pp"] == pytest.approx(10.0)
    assert metrics["burden_true_pct"] == pytest.approx(20.0) and metrics["burden_pred_pct"] == pytest.approx(30.0)


def test_thirds_of_nine_slices_with_apex_found_in_either_order():
    assert split_thirds(cone_label(), SPACING) == {"basal": [1, 2, 3], "mid": [4, 5, 6], "apical": [7, 8, 9]}
    reversed_ = cone_label(apex_high=False)
    assert np.array_equal(reversed_, cone_label()[..., ::-1])
    assert split_thirds(reversed_, SPACING) == {"basal": [7, 8, 9], "mid": [4, 5, 6], "apical": [1, 2, 3]}


def test_open_basal_ring_does_not_move_the_apex():
    assert split_thirds(cone_label(open_base=True), SPACING)["apical"] == [7, 8, 9]
    assert split_thirds(cone_label(open_base=True, apex_high=False), SPACING)["apical"] == [1, 2, 3]


def test_uneven_slice_counts_favour_mid_then_base():
    assert third_sizes(9) == (3, 3, 3) and third_sizes(8) == (3, 3, 2) and third_sizes(7) == (2, 3, 2)
    thirds = split_thirds(cone_label(n_myo=7, n_total=9), SPACING)
    assert [len(thirds[r]) for r in REGIONS] == [2, 3, 2] and thirds["apical"] == [6, 7]


def test_regional_metrics_localise_a_missed_apical_scar():
    truth = cone_label()
    pred = truth.copy()
    pred[..., 7:10][pred[..., 7:10] == 2] = 1  # the prediction misses the apical scar
    m = regional_metrics(pred, truth, SPACING)
    assert m["dice_myo"] == 1.0 and m["hd95_myo"] == 0.0
    assert m["dice_scar_basal"] == 1.0 and m["dice_scar_mid"] == 1.0 and m["dice_scar_apical"] == 0.0
    assert m["hd95_scar_basal"] == 0.0 and math.isnan(m["hd95_scar_apical"])
    n_scar_true, n_scar_apical = int((truth == 2).sum()), int((truth[..., 7:10] == 2).sum())
    assert m["dice_scar"] == pytest.approx(2 * (n_scar_true - n_scar_apical) / (2 * n_scar_true - n_scar_apical))
    n_myo = int((truth > 0).sum())
    assert m["burden_error_pp"] == pytest.approx(-100.0 * n_scar_apical / n_myo)
    assert m["hd95_scar"] > 0 and m["n_slices_apical"] == 3
    for name in ("myo", "scar"):
        for key in ("dice", "hd95"):
            assert {f"{key}_{name}_{r}" for r in REGIONS} <= m.keys()
