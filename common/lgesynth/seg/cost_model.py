"""The CPU cost model: predicted seconds per training iteration of a planned DynUNet.

Measured on a 2-core CPU, a 3D DynUNet of nnU-Net width (32…320) takes 1.75 s per training iteration
(batch 2, patch 96 × 96 × 8) and 0.47 s at half width (16…160). The model is

    seconds/iteration = s · (t0 + c · voxels_per_iteration · f(width)),
    voxels_per_iteration = batch × patch voxels.

Between widths 32 and 16 time follows w² (w = base filters / 32): f = 1, 1/4, and the two figures fix
c = 1.16e-5 s per voxel and a fixed t0 = 0.043 s per iteration. Below 16 it does not: instance norm,
activations and the full-resolution deep-supervision outputs grow with w or not at all, and halving
16 -> 8 saved only 2.4-2.7x (single thread, minimum of interleaved steps), so f(8) = 1/10 rather than
1/16 (other widths: log-log interpolation, w² above 32, linear below 8). Time is linear in voxels (a
4.2x larger patch took 4.1x longer), and 2D costs 0.8-0.9x of 3D per voxel, so 2D uses the same c
(slightly conservative). s = 1 unless :func:`lgesynth.seg.cost_calibration.refine_plan` rescales the
model from an iteration timed on the machine that trains.
"""

from __future__ import annotations

import math

import numpy as np

# (base filters, batch, patch, seconds per iteration) measured on the 2-core CPU.
MEASURED = ((32, 2, (96, 96, 8), 1.75), (16, 2, (96, 96, 8), 0.47))
# Relative cost per voxel of each base width (module doc): w² for 32 and 16, measured for 8.
WIDTH_COST = {32: 1.0, 16: 0.25, 8: 0.1}


def width_cost(base_filters: float) -> float:
    """f(width): cost per voxel relative to base 32 (``WIDTH_COST``, log-log interpolated)."""
    anchors = sorted(WIDTH_COST)
    if base_filters >= anchors[-1]:
        return WIDTH_COST[anchors[-1]] * (base_filters / anchors[-1]) ** 2
    if base_filters <= anchors[0]:
        return WIDTH_COST[anchors[0]] * base_filters / anchors[0]
    logs = [math.log(a) for a in anchors]
    return math.exp(float(np.interp(math.log(base_filters), logs, [math.log(WIDTH_COST[a]) for a in anchors])))


def _fit(measured=MEASURED) -> tuple[float, float]:
    """(t0 s, c s/voxel) through both measurements of t = t0 + c · batch · voxels · f(width)."""
    (f1, b1, p1, t1), (f2, b2, p2, t2) = measured
    x1, x2 = b1 * math.prod(p1) * width_cost(f1), b2 * math.prod(p2) * width_cost(f2)
    c = (t1 - t2) / (x1 - x2)
    return t1 - c * x1, c


T0_SECONDS, C_SECONDS_PER_VOXEL = _fit()


def seconds_per_iteration(batch: int, patch, base_filters: int, scale: float = 1.0) -> float:
    """Predicted seconds for one training iteration of ``batch`` patches of shape ``patch`` (voxels per
    axis) through a DynUNet of ``base_filters``, times ``scale`` (module doc)."""
    return scale * (T0_SECONDS + C_SECONDS_PER_VOXEL * batch * math.prod(patch) * width_cost(base_filters))


def cost_model_record(scale: float) -> dict:
    """The model with its constants and measurements, as a plan records it (``plan["budget"]["cost_model"]``)."""
    return {"formula": "scale * (t0 + c * batch * patch_voxels * f(base_filters))",
            "t0_seconds": T0_SECONDS, "c_seconds_per_voxel": C_SECONDS_PER_VOXEL,
            "f": {str(k): v for k, v in WIDTH_COST.items()},
            "scale": float(scale),
            "measured": [{"base_filters": f, "batch": b, "patch": list(p), "seconds": s} for f, b, p, s in MEASURED]}
