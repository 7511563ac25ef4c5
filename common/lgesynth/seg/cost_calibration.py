"""Calibrating a plan to the machine that trains it: time the planned network here and re-plan.

The figures of :mod:`lgesynth.seg.cost_model` came from an AVX-512 EPYC; on an AVX2 EPYC the smoke
plan's 3D width-8 network took 2.0-2.9 s per step (1 thread, shared machine) where the model predicts
0.26 s, and an EMIDEC 2D plan 3x its prediction: the cost per voxel depends on the CPU's vector units
and on the load. Hence :func:`calibrate_plan`: ``lgesynth experiment`` (and the pipeline) times the
planned network on the machine it runs on and re-plans (``calibrate``, on by default), so a budget
holds where it is spent. A real iteration of train.yaml costs ``ITERATION_OVERHEAD`` = 1.5x the bare
step timed (augmentation, Dice + CE on every head, handlers), so calibration times
:func:`measure_iteration_seconds`. The timing chooses the network and patch; how many epochs fit is measured
during training (:mod:`lgesynth.seg.time_budget`), since a timed step can still miss the real iteration by
half (the EMIDEC ROI plan: 0.062 s timed, 0.08-0.12 s trained).
"""

from __future__ import annotations

import time

from lgesynth.seg.cavity import add_cavity_class, has_cavity_class, training_classes
from lgesynth.seg.network import IN_CHANNELS, build_dynunet
from lgesynth.seg.plan import make_plan
from lgesynth.seg.precision import AutocastInferer

# A train.yaml iteration over the bare step of measure_step_seconds, quiet AVX2 host: 0.37-0.38 s vs 0.24 s
# (1.55x) for the smoke phantom plan (3D, width 8, patch 56 x 64 x 12, num_workers 2); 0.67 s vs 0.36 s (1.86x) for
# the EMIDEC cpu plan (2D, width 8, 6 slices of 160 x 192). With 1.5 that arm took 7.2 of its 7 minutes.
ITERATION_OVERHEAD = 1.5


def measure_step_seconds(plan: dict, steps: int = 3, seed: int = 0) -> float:
    """Wall time (s) of one training step of the planned DynUNet on random data: the fastest of
    ``steps`` steps after a warm-up (the minimum is what the machine can do; other jobs on the shared
    cores only ever add time, by up to 20x when torch's threads contend with them). Batch and patch
    from the plan, SGD, cross-entropy over the deep supervision heads, the forward pass in the plan's
    ``training.precision`` (:mod:`lgesynth.seg.precision`)."""
    import torch

    torch.manual_seed(seed)
    net = build_dynunet(plan).train()
    forward = AutocastInferer(plan["training"].get("precision", "fp32"), "cpu")
    optimiser = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.99, nesterov=True)
    shape = (plan["batch_size"], IN_CHANNELS, *plan["patch_size"])
    image = torch.randn(shape)
    target = torch.randint(0, training_classes(plan), (shape[0], *shape[2:]))
    weights = plan["deep_supervision_weights"]

    def step():
        optimiser.zero_grad(set_to_none=True)
        out = forward(image, net)  # (batch, 1 + heads, classes, *patch), in the plan's training precision
        loss = sum(w * torch.nn.functional.cross_entropy(out[:, i], target) for i, w in enumerate(weights))
        loss.backward()
        optimiser.step()

    step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return min(times)


def measure_iteration_seconds(plan: dict, steps: int = 3, seed: int = 0) -> float:
    """What one training iteration of ``train.yaml`` costs here (s): :func:`measure_step_seconds` (the bare
    network step) times ``ITERATION_OVERHEAD`` (augmentation in the loader, Dice + CE on every
    deep-supervision head, handlers; measured, see its comment)."""
    return ITERATION_OVERHEAD * measure_step_seconds(plan, steps, seed)


def refine_plan(plan: dict, measured_seconds: float | None = None) -> dict:
    """Re-plan with the cost model rescaled so that it predicts ``measured_seconds`` (measured now
    with :func:`measure_iteration_seconds` when not given) for this plan's network."""
    if measured_seconds is None:
        measured_seconds = measure_iteration_seconds(plan)
    inputs = plan["inputs"]
    scale = inputs["seconds_scale"] * measured_seconds / plan["budget"]["seconds_per_iteration"]
    new = make_plan((inputs["median_spacing_mm"], inputs["median_shape"]), preset=inputs["preset"],
                    budget_minutes=inputs["budget_minutes"], dims=inputs["dims"], res_block=inputs["res_block"],
                    seconds_scale=scale, target_spacing_mm=plan["target_spacing_mm"], cascade=plan.get("cascade"))
    if has_cavity_class(plan):
        new = add_cavity_class(new)
    new["why"].append(f"cost model rescaled x{scale:.2f}: a measured iteration took {measured_seconds:.3f} s where "
                      f"{plan['budget']['seconds_per_iteration']:.3f} s was predicted")
    return new


def calibrate_plan(plan: dict, rounds: int = 3, tolerance: float = 0.2, measure=measure_iteration_seconds,
                   pause: float = 5.0) -> dict:
    """Re-plan until the chosen network's measured iteration is within ``tolerance`` of the prediction.

    One rescale fits the cost model's scale to one network; when that changes the choice (a smaller
    patch or width), the fixed per-iteration part of the model rarely scales like the rest, so the new
    choice is timed as well, up to ``rounds`` measurements. ``measure(plan) -> seconds`` per iteration.
    A measurement slower than predicted is taken again after ``pause`` seconds and the faster one kept:
    other jobs on the cores only ever add time, and one timing taken under a passing load once shrank
    a 50-minute EMIDEC plan to 18 minutes of training (scar_seg docs).
    """
    for _ in range(rounds):
        seconds = measure(plan)
        predicted = plan["budget"]["seconds_per_iteration"]
        if seconds > predicted * (1.0 + tolerance):
            time.sleep(pause)
            again = measure(plan)
            if again < seconds:
                plan = {**plan, "why": plan["why"] + [f"timing repeated: {seconds:.3f} s, then {again:.3f} s; the faster kept"]}
                seconds = again
        if abs(seconds / predicted - 1.0) <= tolerance:
            return {**plan, "why": plan["why"] + [f"calibrated: a measured iteration took {seconds:.3f} s, {predicted:.3f} s predicted"]}
        plan = refine_plan(plan, measured_seconds=seconds)
    return plan
