"""nnU-Net-style DynUNet planning: topology from spacing/shape, 2D/3D rule, budget, plan file, network."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from lgesynth.errors import DataError
from lgesynth.seg.cost_calibration import calibrate_plan, measure_step_seconds, refine_plan
from lgesynth.seg.cost_model import seconds_per_iteration
from lgesynth.seg.network import build_dynunet
from lgesynth.seg.plan import PLAN_FORMAT, load_plan, make_plan, write_plan
from lgesynth.seg.topology import pool_and_kernels

ANISO = ((1.4, 1.4, 8.0), (160, 160, 10))


def _patch_voxels(plan):
    return math.prod(plan["patch_size"])


def test_anisotropic_pools_in_plane_first_and_slices_once_close():
    plan = make_plan(ANISO, preset="paper")
    net = plan["network"]
    assert plan["configuration"] == "3d" and plan["slice_axis"] == 2
    assert net["strides"][0] == [1, 1, 1]
    assert net["strides"][1] == [2, 2, 1] and net["strides"][2] == [2, 2, 1]
    assert net["kernel_size"][0] == [3, 3, 1]  # slices 5.7x coarser: no through-plane kernel
    # the slice axis is pooled exactly once, at the stage where in-plane spacing (1.4 * 4 = 5.6 mm) is within 2x of 8 mm
    z_pooled = [i for i, s in enumerate(net["strides"]) if s[2] == 2]
    assert z_pooled == [3]
    assert net["kernel_size"][2] == [3, 3, 3]  # 5.6 vs 8 mm: within 2x
    assert net["upsample_kernel_size"] == net["strides"][1:]
    assert all(p % 2 ** k == 0 for p, k in zip(plan["patch_size"], [5, 5, 1]))
    assert net["filters"][0] == 32 and max(net["filters"]) == 320
    assert net["deep_supervision"] and net["deep_supr_num"] == len(net["strides"]) - 3


def test_slice_axis_first_is_handled_like_last():
    plan = make_plan(((8.0, 1.4, 1.4), (10, 160, 160)), preset="paper")
    assert plan["slice_axis"] == 0
    assert plan["network"]["strides"][1] == [1, 2, 2] and plan["network"]["kernel_size"][0] == [1, 3, 3]


def test_isotropic_pools_all_axes_together():
    plan = make_plan(((1.0, 1.0, 1.0), (64, 64, 64)), preset="paper")
    net = plan["network"]
    assert plan["configuration"] == "3d"
    assert all(s == [2, 2, 2] for s in net["strides"][1:])
    assert all(k == [3, 3, 3] for k in net["kernel_size"])
    assert plan["patch_size"] == [64, 64, 64] and len(net["strides"]) == 5  # 64 -> 4 in 4 poolings


def test_too_few_slices_gives_2d_and_dims_override_gives_3d():
    plan = make_plan(((1.0, 1.0, 10.0), (256, 256, 7)), preset="paper")  # EMIDEC-like: 7 < 8 slices
    assert plan["configuration"] == "2d" and plan["network"]["spatial_dims"] == 2
    assert plan["spatial_axes"] == [0, 1] and plan["patch_size"] == [256, 256]
    assert any("2D" in w for w in plan["why"])
    forced = make_plan(((1.0, 1.0, 10.0), (256, 256, 7)), preset="paper", dims=3)
    assert forced["configuration"] == "3d" and all(s[2] == 1 for s in forced["network"]["strides"])
    assert forced["patch_size"][2] == 7


def test_pool_rule_needs_enough_voxels_and_close_spacing():
    # both pooled once (9 >= 2 * 4); then axis 1 (5) is done and axis 0, pooled alone, needs >= 3 * 4
    assert pool_and_kernels((1.0, 1.0), (20, 9))["pools_per_axis"] == [1, 1]  # 10 < 12: stop
    topo = pool_and_kernels((1.0, 1.0), (28, 9))
    assert topo["pools_per_axis"] == [2, 1]  # 14 >= 12: pooled alone once more
    assert topo["patch_size"] == [28, 10] and topo["strides"] == [[1, 1], [2, 2], [2, 1]]


def test_target_spacing_uses_10th_percentile_for_anisotropic_cohorts():
    z = [5.0] + [10.0] * 9
    fp = {"summary": {"median_spacing_mm": [1.0, 1.0, 10.0], "median_shape": [256, 256, 8], "num_cases": 10},
          "cases": [{"spacing_mm": [1.0, 1.0, s]} for s in z]}
    plan = make_plan(fp, preset="paper")
    assert plan["target_spacing_mm"][2] == pytest.approx(np.percentile(z, 10))
    assert plan["median_shape_resampled"][2] == round(8 * 10.0 / np.percentile(z, 10))
    bare = make_plan(((1.0, 1.0, 10.0), (256, 256, 8)), preset="paper")
    assert bare["target_spacing_mm"] == [1.0, 1.0, 10.0]
    assert any("only the median was given" in w for w in bare["why"])


def test_cost_model_reproduces_the_measurements():
    assert seconds_per_iteration(2, (96, 96, 8), 32) == pytest.approx(1.75)
    assert seconds_per_iteration(2, (96, 96, 8), 16) == pytest.approx(0.47)
    assert seconds_per_iteration(2, (96, 96, 8), 8) < 0.47


def test_smaller_budget_never_gets_more_and_fits():
    plans = [make_plan(ANISO, preset="cpu", budget_minutes=b) for b in (1.0, 1.5, 3.0, 9.0, 30.0, 120.0)]
    for small, large in zip(plans, plans[1:]):
        assert small["budget"]["base_filters"] <= large["budget"]["base_filters"]
        assert _patch_voxels(small) <= _patch_voxels(large)
        assert small["budget"]["predicted_minutes"] < large["budget"]["predicted_minutes"]
    for plan in plans:
        assert plan["budget"]["predicted_minutes"] <= plan["budget"]["budget_minutes"]
        t = plan["training"]
        assert t["iterations"] == t["epochs"] * t["iterations_per_epoch"] >= 1
    assert plans[-1]["budget"]["base_filters"] > plans[0]["budget"]["base_filters"]
    smoke, cpu = make_plan(ANISO, preset="smoke"), make_plan(ANISO, preset="cpu")
    assert smoke["budget"]["budget_minutes"] < cpu["budget"]["budget_minutes"]
    assert _patch_voxels(smoke) < _patch_voxels(cpu) and smoke["training"]["iterations"] < cpu["training"]["iterations"]
    assert cpu["budget"]["candidates"][-1]["chosen"]


def test_budget_too_small_for_one_iteration_says_so():
    with pytest.raises(ValueError, match="cannot fit one training iteration"):
        make_plan(ANISO, preset="cpu", budget_minutes=0.001)


def test_plan_file_round_trips_and_the_network_runs(tmp_path):
    plan = make_plan(((1.4, 1.4, 8.0), (32, 32, 10)), preset="smoke", budget_minutes=0.1)
    assert plan["network"]["strides"] == [[1, 1, 1], [2, 2, 1], [2, 2, 1], [2, 2, 2]]
    path = write_plan(tmp_path / "plan.json", plan)
    text = path.read_text()
    assert '"why"' in text and json.loads(text)["format"] == PLAN_FORMAT
    loaded = load_plan(path)
    assert loaded == plan
    net = build_dynunet(loaded)
    x = torch.zeros(1, 1, *loaded["patch_size"])
    heads = loaded["network"]["deep_supr_num"]
    with torch.no_grad():
        assert net.train()(x).shape == (1, 1 + heads, 3, *loaded["patch_size"])
        assert net.eval()(x).shape == (1, 3, *loaded["patch_size"])
    assert len(loaded["deep_supervision_weights"]) == 1 + heads
    assert sum(loaded["deep_supervision_weights"]) == pytest.approx(1.0)


def test_load_plan_names_the_file(tmp_path):
    bad = tmp_path / "not_a_plan.json"
    bad.write_text('{"patch_size": [1]}')
    with pytest.raises(DataError, match="not_a_plan.json.*format"):
        load_plan(bad)
    with pytest.raises(DataError, match="missing.json"):
        load_plan(tmp_path / "missing.json")


def test_refine_rescales_the_cost_model():
    plan = make_plan(ANISO, preset="cpu")
    slower = refine_plan(plan, measured_seconds=3 * plan["budget"]["seconds_per_iteration"])
    assert slower["budget"]["cost_model"]["scale"] == pytest.approx(3.0)
    assert slower["budget"]["predicted_minutes"] <= slower["budget"]["budget_minutes"]
    assert _patch_voxels(slower) * slower["budget"]["base_filters"] < _patch_voxels(plan) * plan["budget"]["base_filters"]
    assert "rescaled" in slower["why"][-1]


def test_calibration_repeats_until_the_chosen_network_is_predicted_right():
    """A machine 3x slower than the model with a fixed 0.05 s overhead (not scaled): one rescale
    over-corrects the small network it then picks, so calibration times that one too."""
    plan = make_plan(ANISO, preset="cpu")
    model = lambda p: 0.05 + 3 * (p["budget"]["seconds_per_iteration"] / p["budget"]["cost_model"]["scale"])  # noqa: E731
    measured = []

    def machine(p):
        measured.append(model(p))
        return measured[-1]

    calibrated = calibrate_plan(plan, rounds=4, tolerance=0.05, measure=machine, pause=0)
    assert len(measured) >= 2
    assert calibrated["budget"]["seconds_per_iteration"] == pytest.approx(model(calibrated), rel=0.05)
    assert calibrated["budget"]["predicted_minutes"] <= calibrated["budget"]["budget_minutes"]
    assert calibrated["why"][-1].startswith("calibrated")
    same = calibrate_plan(plan, measure=lambda p: p["budget"]["seconds_per_iteration"])  # the model is right
    assert same["budget"] == plan["budget"] and same["why"][-1].startswith("calibrated")


def test_a_timing_slowed_by_a_passing_load_is_taken_again():
    """The first timing runs 2.2x slow (another job), the repeat at the model's speed: the plan stays."""
    plan = make_plan(ANISO, preset="cpu")
    timings = iter([2.2, 1.0, 1.0])

    def machine(p):
        return next(timings) * p["budget"]["seconds_per_iteration"]

    calibrated = calibrate_plan(plan, measure=machine, pause=0)
    assert calibrated["budget"] == plan["budget"]
    assert calibrated["why"][-2].startswith("timing repeated") and calibrated["why"][-1].startswith("calibrated")
    slow = calibrate_plan(plan, rounds=1, measure=lambda p: 2.0 * p["budget"]["seconds_per_iteration"], pause=0)
    assert slow["budget"]["cost_model"]["scale"] == pytest.approx(2.0 * plan["budget"]["cost_model"]["scale"])  # a slow machine stays slow


def test_measure_step_seconds_on_a_tiny_plan():
    plan = make_plan(((1.0, 1.0, 10.0), (32, 32, 4)), preset="smoke", budget_minutes=0.05)
    assert plan["configuration"] == "2d" and plan["patch_size"] == [32, 32]
    seconds = measure_step_seconds(plan, steps=1)
    assert 0 < seconds < 30
