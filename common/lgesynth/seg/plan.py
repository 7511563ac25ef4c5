"""nnU-Net-style planning of a MONAI DynUNet from the data, under an explicit compute budget.

From the median spacing and shape of a cohort (a fingerprint, :mod:`lgesynth.data.fingerprint`, or
just the two vectors) the planner derives, as nnU-Net v2's ExperimentPlanner does:

1. **Target spacing**: the median. For anisotropic data (max / min spacing > ``ANISO_THRESHOLD`` = 3
   and the coarse axis has < 1/3 of the voxels of the others) nnU-Net takes the 10th percentile of
   the coarse axis' spacings instead (never finer than the in-plane spacing). We do the same when the
   fingerprint has per-case spacings (or its p5/p25, interpolated); from a bare median we keep it.
2. **Topology** (:func:`pool_and_kernels`): repeatedly halve every axis that (a) still has at least
   2 × ``MIN_EDGE`` voxels and (b) whose current spacing is within 2× of the finest current spacing,
   so thick-slice stacks pool in plane first, (2, 2, 1), and pool through-plane only once the in-plane
   spacing has caught up. A kernel is 3 on an axis whose spacing is within 2× of the finest, else 1
   ((3, 3, 1) while the slices are too coarse); the bottleneck is always 3. The patch is padded to a
   multiple of 2^(pools per axis).
3. **2D or 3D**: nnU-Net trains both and picks by cross-validation; we decide from the data instead:
   **3D when the 3D topology pools the slice axis at least once** (enough slices, >= 2 × MIN_EDGE after
   resampling, to learn through-plane context at two scales), **otherwise 2D** on the in-plane axes.
   ``dims=2`` or ``dims=3`` overrides this.
4. **Filters**: 32 doubling per stage, capped at 320 (3D) / 512 (2D), all scaled by the width factor;
   instance norm, leaky ReLU (0.01), no residual blocks (nnU-Net's default; ``res_block`` to change).
   Deep supervision on every decoder resolution but the lowest (nnU-Net gives the lowest weight 0):
   ``deep_supr_num`` = stages − 3 (at least 1), loss weights 1/2^i normalised.

**Compute budget.** Measured on this 2-core CPU, a 3D DynUNet of nnU-Net width (32…320) takes
1.75 s per training iteration (batch 2, patch 96 × 96 × 8) and 0.47 s at half width (16…160). The
cost model is seconds/iteration = s · (t0 + c · voxels_per_iteration · f(width)), voxels_per_iteration
= batch × patch voxels. Between widths 32 and 16 time follows w² (w = base filters / 32): f = 1, 1/4,
and the two figures fix c = 1.16e-5 s per voxel and a fixed t0 = 0.043 s per iteration. Below 16 it
does not: instance norm, activations and the full-resolution deep-supervision outputs grow with w
or not at all, and halving 16 -> 8 saved only 2.4-2.7x in our timings (single thread, minimum of
interleaved steps), so f(8) = 1/10 rather than 1/16 (other widths: log-log interpolation, w² above
32, linear below 8). Time is linear in voxels (a 4.2x larger patch took 4.1x longer), and 2D costs
0.8-0.9x of 3D per voxel, so 2D uses the same c (slightly conservative). s = 1 unless
:func:`refine_plan` rescales the model from a measured step. Those figures came from an AVX-512 EPYC;
on the AVX2 EPYC that later ran this project the smoke plan's 3D width-8 network took 2.0-2.9 s per
step (1 thread, shared machine) where the model predicts 0.26 s, and an EMIDEC 2D plan 3x its
prediction: the cost per voxel depends on the CPU's vector units and on the load. Hence
:func:`calibrate_plan`: ``lgesynth experiment`` (and the pipeline) times the planned network on the
machine it runs on and re-plans (``calibrate``, on by default), so a budget holds where it is spent.
A real iteration of train.yaml costs ``ITERATION_OVERHEAD`` = 1.5x the bare step timed (augmentation,
Dice + CE on every head, handlers), so calibration times :func:`measure_iteration_seconds`.
A share ``TRAIN_FRACTION`` of the budget is for training steps, the rest for validation, data
loading and start-up. Candidates are tried in order: width 32, 16, 8 at the full patch, then width 8
with ever smaller patches (the longest side in mm first; the slice axis of anisotropic data is
never cut); the first that fits at least 200 · √(budget minutes) iterations (245 for 1.5 min, 600 for
9 min) is taken and given all the iterations the budget affords. Growing the minimum with the square
root of the budget spends a larger budget on both a larger network / patch and more iterations, and
keeps the choice monotone: a candidate qualifies when its seconds/iteration are
<= 0.75 · 60 · √budget / 200, so a smaller budget never gets a wider network or a larger patch. Presets: ``smoke`` 1.5 min per arm, ``cpu`` 9 min per arm, ``paper`` nnU-Net's default
(full width and patch, 1000 epochs × 250 iterations, on a GPU; its CPU time is only reported).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from lgesynth.data.validate import slice_axis
from lgesynth.errors import DataError
from lgesynth.io import write_json

PLAN_FORMAT = "lgesynth-seg-plan/1"
ANISO_THRESHOLD = 3.0
MIN_EDGE = 4  # voxels per axis in the bottleneck (nnU-Net's min feature map edge)
BASE_FILTERS, MAX_FILTERS = 32, {2: 512, 3: 320}
WIDTHS = (32, 16, 8)
MIN_PATCH_EDGE = 32  # budget shrinking stops here (voxels per shrinkable axis)
PAPER_PATCH_VOXELS = {2: 512 ** 2, 3: 128 ** 3}  # stand-in for nnU-Net's 8 GB VRAM estimate
MIN_ITERATIONS_PER_SQRT_MINUTE = 200  # the least iterations a budget must buy: 200 · sqrt(budget minutes)
TRAIN_FRACTION = 0.75
N_CLASSES, IN_CHANNELS = 3, 1
PRESETS = {
    "smoke": {"budget_minutes": 1.5, "epochs": 2, "device": "cpu"},
    "cpu": {"budget_minutes": 9.0, "epochs": 10, "device": "cpu"},
    "paper": {"budget_minutes": None, "epochs": 1000, "iterations_per_epoch": 250, "device": "cuda"},
}
# (base filters, batch, patch, seconds per iteration) measured on the 2-core CPU.
MEASURED = ((32, 2, (96, 96, 8), 1.75), (16, 2, (96, 96, 8), 0.47))
# A train.yaml iteration over the bare step of measure_step_seconds, quiet AVX2 host: 0.37-0.38 s vs 0.24 s
# (1.55x) for the smoke phantom plan (3D, width 8, patch 56 x 64 x 12, num_workers 2); 0.67 s vs 0.36 s (1.86x) for
# the EMIDEC cpu plan (2D, width 8, 6 slices of 160 x 192). With 1.5 that arm took 7.2 of its 7 minutes.
ITERATION_OVERHEAD = 1.5
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


def _calibrate(measured=MEASURED) -> tuple[float, float]:
    """(t0 s, c s/voxel) through both measurements of t = t0 + c · batch · voxels · f(width)."""
    (f1, b1, p1, t1), (f2, b2, p2, t2) = measured
    x1, x2 = b1 * math.prod(p1) * width_cost(f1), b2 * math.prod(p2) * width_cost(f2)
    c = (t1 - t2) / (x1 - x2)
    return t1 - c * x1, c


T0_SECONDS, C_SECONDS_PER_VOXEL = _calibrate()


def seconds_per_iteration(batch: int, patch, base_filters: int, scale: float = 1.0) -> float:
    """Predicted seconds for one training iteration on the 2-core CPU (module doc)."""
    return scale * (T0_SECONDS + C_SECONDS_PER_VOXEL * batch * math.prod(patch) * width_cost(base_filters))


# ---------------------------------------------------------------------------------------------
# inputs and target spacing
# ---------------------------------------------------------------------------------------------


def _read_source(source) -> tuple[np.ndarray, np.ndarray, dict]:
    """(median spacing (3,), median shape (3,), fingerprint summary or {}) from any accepted input."""
    if isinstance(source, (str, Path)):
        try:
            source = json.loads(Path(source).read_text())
        except (OSError, ValueError) as exc:
            raise DataError(source, f"cannot read the fingerprint JSON ({exc}); run `lgesynth stats` first") from None
    if isinstance(source, dict):
        summary = source.get("summary", source)
        cases = source.get("cases", [])
        if "median_spacing_mm" not in summary or "median_shape" not in summary:
            raise ValueError("fingerprint needs summary.median_spacing_mm and summary.median_shape")
        info = {"summary": summary, "case_spacings": [c["spacing_mm"] for c in cases if "spacing_mm" in c]}
        return np.asarray(summary["median_spacing_mm"], float), np.asarray(summary["median_shape"], float), info
    spacing, shape = source
    return np.asarray(spacing, float), np.asarray(shape, float), {}


def target_spacing(spacing_mm, shape, info: dict | None = None) -> tuple[np.ndarray, str]:
    """Target spacing (3,) and the reason, after nnU-Net (module doc, step 1)."""
    spacing, shape, info = np.asarray(spacing_mm, float), np.asarray(shape, float), info or {}
    coarse = int(np.argmax(spacing))
    others = [a for a in range(3) if a != coarse]
    aniso_spacing = spacing[coarse] > ANISO_THRESHOLD * max(spacing[others])
    aniso_voxels = shape[coarse] * ANISO_THRESHOLD < min(shape[others])
    if not (aniso_spacing and aniso_voxels):
        return spacing, "target spacing = median spacing (not anisotropic by nnU-Net's test: ratio <= 3 or enough slices)"
    p10, how = None, ""
    if len(info.get("case_spacings", [])) >= 2:
        p10, how = float(np.percentile([s[coarse] for s in info["case_spacings"]], 10)), "per-case spacings"
    elif info.get("summary", {}).get("spacing_mm", {}).get("p5") and info["summary"]["spacing_mm"].get("p25"):
        p5, p25 = info["summary"]["spacing_mm"]["p5"][coarse], info["summary"]["spacing_mm"]["p25"][coarse]
        p10, how = p5 + (p25 - p5) * (10 - 5) / (25 - 5), "interpolated between the fingerprint's p5 and p25"
    if p10 is None:
        return spacing, (f"anisotropic (axis {coarse}: {spacing[coarse]:g} mm vs {max(spacing[others]):g} mm); nnU-Net "
                         "would take the 10th percentile of that axis' spacings, but only the median was given: kept")
    target = spacing.copy()
    target[coarse] = max(p10, max(spacing[others]) + 1e-5)
    return target, (f"anisotropic (axis {coarse}: {spacing[coarse]:g} mm vs {max(spacing[others]):g} mm): that axis "
                    f"resampled to its 10th percentile spacing {target[coarse]:.3g} mm ({how}), as nnU-Net")


# ---------------------------------------------------------------------------------------------
# topology
# ---------------------------------------------------------------------------------------------


def pool_and_kernels(spacing_mm, patch, min_edge: int = MIN_EDGE) -> dict:
    """Strides and kernel sizes per stage for a patch at a spacing (module doc, step 2).

    Returns:
        ``{"strides": [[1,..], ...], "kernel_size": [...], "pools_per_axis": [...], "patch_size": [...]}``:
        one stride and one kernel per stage (the first stride is 1), the patch padded to a multiple
        of 2^(pools per axis).
    """
    dims = len(spacing_mm)
    spacing = [float(s) for s in spacing_mm]
    size = [int(p) for p in patch]
    strides, kernels, pools = [[1] * dims], [], [0] * dims
    kernel = [1] * dims
    while True:
        poolable = [a for a in range(dims) if size[a] >= 2 * min_edge]
        if poolable:
            finest = min(spacing[a] for a in poolable)
            poolable = [a for a in poolable if spacing[a] < 2 * finest]
        # halving a lone axis is only worth it while it keeps >= 1.5 bottleneck edges (as nnU-Net)
        if not poolable or (len(poolable) == 1 and size[poolable[0]] < 3 * min_edge):
            break
        finest_all = min(spacing)
        kernel = [3 if kernel[a] == 3 or spacing[a] < 2 * finest_all else 1 for a in range(dims)]
        kernels.append(kernel)
        strides.append([2 if a in poolable else 1 for a in range(dims)])
        for a in poolable:
            pools[a] += 1
            spacing[a] *= 2
            size[a] = math.ceil(size[a] / 2)
    kernels.append([3] * dims)
    padded = [math.ceil(int(p) / 2 ** k) * 2 ** k for p, k in zip(patch, pools)]
    return {"strides": strides, "kernel_size": kernels, "pools_per_axis": pools, "patch_size": padded}


def _shrink(spacing, patch, axes, floor: int = MIN_PATCH_EDGE):
    """The next smaller valid patch: cut the longest (mm) of ``axes`` to the next size that its
    topology accepts; None when no axis can shrink above ``floor`` with >= 3 stages left."""
    for axis in sorted(axes, key=lambda a: -patch[a] * spacing[a]):
        for raw in range(patch[axis] - 1, floor - 1, -1):
            trial = list(patch)
            trial[axis] = raw
            topo = pool_and_kernels(spacing, trial)
            if len(topo["strides"]) >= 3 and math.prod(topo["patch_size"]) < math.prod(patch):
                return topo["patch_size"]
    return None


def _network(topo: dict, dims: int, base_filters: int, res_block: bool) -> dict:
    n_stages = len(topo["strides"])
    cap = MAX_FILTERS[dims] * base_filters // BASE_FILTERS
    return {
        "spatial_dims": dims, "in_channels": IN_CHANNELS, "out_channels": N_CLASSES,
        "kernel_size": topo["kernel_size"], "strides": topo["strides"], "upsample_kernel_size": topo["strides"][1:],
        "filters": [min(base_filters * 2 ** i, cap) for i in range(n_stages)],
        "norm_name": ["INSTANCE", {"affine": True}], "act_name": ["leakyrelu", {"inplace": True, "negative_slope": 0.01}],
        "deep_supervision": True, "deep_supr_num": max(1, n_stages - 3), "res_block": bool(res_block),
    }


# ---------------------------------------------------------------------------------------------
# the plan
# ---------------------------------------------------------------------------------------------


def make_plan(source, preset: str = "cpu", budget_minutes: float | None = None, dims: int | str = "auto",
              res_block: bool = False, seconds_scale: float = 1.0, target_spacing_mm=None) -> dict:
    """Plan a DynUNet for a cohort.

    Args:
        source: a fingerprint dict (``{"summary": {"median_spacing_mm", "median_shape", ...}, "cases": [...]}``),
            its summary alone, a path to its JSON, or a pair ``(median_spacing_mm (3,), median_shape (3,))``.
        preset: ``"smoke"``, ``"cpu"`` or ``"paper"`` (module doc).
        budget_minutes: training time per arm on the 2-core CPU; default: the preset's (none for paper).
        dims: ``"auto"`` (module doc, step 3), 2 or 3.
        res_block: residual blocks in the DynUNet (nnU-Net's default: plain convolutions).
        seconds_scale: multiplies the cost model (:func:`refine_plan` sets it from a measured step).
        target_spacing_mm: (3,) use this target spacing instead of deriving it (nnU-Net's
            ``overwrite_target_spacing``).
    Returns:
        the plan, a JSON-ready dict; ``plan["why"]`` lists every decision in words.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    settings = PRESETS[preset]
    budget = settings["budget_minutes"] if budget_minutes is None else float(budget_minutes)
    spacing_in, shape_in, info = _read_source(source)
    why: list[str] = []
    axis = slice_axis(tuple(int(round(n)) for n in shape_in), spacing_in)
    why.append(f"slice axis {axis}: the axis with the fewest voxels (median shape {[int(round(n)) for n in shape_in]})")
    if target_spacing_mm is None:
        target, reason = target_spacing(spacing_in, shape_in, info)
    else:
        target, reason = np.asarray(target_spacing_mm, float), f"target spacing {list(target_spacing_mm)} mm: set by the caller"
    why.append(reason)
    shape = np.maximum(np.round(shape_in * spacing_in / target), 1).astype(int)
    if not np.array_equal(shape, np.round(shape_in)):
        why.append(f"median shape after resampling to the target spacing: {shape.tolist()}")
    aniso = float(max(target) / min(target)) > ANISO_THRESHOLD

    dims_arg = dims
    topo3 = pool_and_kernels(target, _cap(target, shape.tolist(), 3, axis, aniso))
    pooled = topo3["pools_per_axis"][axis]
    if dims == "auto":
        dims = 3 if pooled >= 1 else 2
        why.append(f"{dims}D: the 3D topology pools the slice axis {pooled} time(s); rule: 3D when it is pooled at "
                   f"least once (needs >= {2 * MIN_EDGE} slices at a spacing within 2x of the pooled in-plane one), "
                   "else 2D on the in-plane axes (nnU-Net plans both and picks by cross-validation)")
    else:
        dims = int(dims)
        why.append(f"{dims}D: set by the caller (the 3D topology would pool the slice axis {pooled} time(s))")
    axes = list(range(3)) if dims == 3 else [a for a in range(3) if a != axis]
    spacing = [float(target[a]) for a in axes]
    topo = pool_and_kernels(spacing, _cap(target, shape.tolist(), dims, axis, aniso, axes))
    if len(topo["strides"]) < 3:
        raise ValueError(f"median shape {shape.tolist()} is too small for a U-Net (DynUNet needs >= 2 poolings: "
                         f">= {4 * MIN_EDGE} voxels on the pooled axes)")
    why.append(f"full patch {topo['patch_size']}: the median shape, padded to a multiple of 2^pools "
               f"{topo['pools_per_axis']} (nnU-Net clips its initial patch to the median shape), capped at "
               f"{PAPER_PATCH_VOXELS[dims]} voxels as a stand-in for nnU-Net's 8 GB GPU memory estimate")
    if dims == 3 and aniso:
        why.append("anisotropic: pool in plane first, (2, 2, 1), and the slice axis only once its spacing is within "
                   "2x of the in-plane one; kernel 1 along the slices while they are > 2x coarser, e.g. (3, 3, 1)")
    median_slices = int(shape[axis])
    batch = 2 if dims == 3 else (12 if preset == "paper" else int(np.clip(median_slices, 2, 12)))
    why.append(f"batch {batch}: " + ("nnU-Net's 3D batch (its minimum and reference)" if dims == 3 else
               "nnU-Net's 2D reference batch" if preset == "paper" else
               "one median volume's worth of slices (clipped to 2..12)"))

    shrinkable = [i for i, a in enumerate(axes) if not (dims == 3 and aniso and a == axis)]
    choice, candidates = _choose(spacing, topo["patch_size"], shrinkable, batch, preset, budget, seconds_scale)
    min_iterations = None if budget is None else min_iterations_for(budget)
    base, patch_size, sec, iterations = choice
    final = pool_and_kernels(spacing, patch_size)
    network = _network(final, dims, base, res_block)
    epochs = settings["epochs"]
    if preset == "paper" and budget is None:
        per_epoch = settings["iterations_per_epoch"]
        why.append(f"paper preset: nnU-Net's default, width 32 (filters up to {network['filters'][-1]}), full patch, "
                   f"{epochs} epochs x {per_epoch} iterations, on a GPU; on this CPU it would take "
                   f"{sec * epochs * per_epoch / 3600:.0f} h")
    else:
        epochs = max(1, min(epochs, iterations))
        per_epoch = max(1, iterations // epochs)
        why.append(f"budget {budget:g} min per arm, {TRAIN_FRACTION:.0%} of it for training steps: width {base} "
                   f"(filters {network['filters'][0]}..{network['filters'][-1]}), patch {patch_size}, "
                   f"{sec:.2f} s/iteration predicted -> {epochs * per_epoch} iterations; the first of widths 32/16/8 at "
                   f"the full patch, then smaller patches, that fits >= 200 x sqrt(budget minutes) = {min_iterations} iterations"
                   + ("" if iterations >= min_iterations else
                      f" -- none did, so the cheapest candidate was taken with only {iterations} iterations"))
    optimizer = optimizer_for(preset, budget)
    why.append(OPTIMIZER_REASONS[optimizer["name"]])
    n_heads = network["deep_supr_num"]
    weights = [0.5 ** i for i in range(n_heads + 1)]
    why.append(f"deep supervision: {n_heads} extra head(s) at the decoder resolutions below full (the lowest "
               f"resolution is left out, as nnU-Net weights it 0); loss weights 1/2^i normalised")
    total = epochs * per_epoch
    return {
        "format": PLAN_FORMAT,
        "inputs": {"median_spacing_mm": [float(s) for s in spacing_in], "median_shape": [int(round(n)) for n in shape_in],
                   "preset": preset, "budget_minutes": budget, "dims": dims_arg,
                   "res_block": bool(res_block), "seconds_scale": float(seconds_scale),
                   "num_cases": info.get("summary", {}).get("num_cases")},
        "configuration": f"{dims}d",
        "slice_axis": axis,
        "spatial_axes": axes,
        "target_spacing_mm": [float(target[a]) for a in range(3)],
        "median_shape_resampled": shape.tolist(),
        "patch_size": list(patch_size),
        "batch_size": batch,
        "network": network,
        "deep_supervision_weights": [w / sum(weights) for w in weights],
        "training": {"iterations": total, "epochs": epochs, "iterations_per_epoch": per_epoch, "device": settings["device"],
                     "optimizer": optimizer,
                     "lr_schedule": "poly, exponent 0.9", "loss": "Dice + cross-entropy, deep supervision",
                     "foreground_oversampling": 0.33},
        "budget": {"preset": preset, "budget_minutes": budget, "train_fraction": TRAIN_FRACTION,
                   "base_filters": base, "width_factor": base / BASE_FILTERS, "seconds_per_iteration": sec,
                   "predicted_minutes": sec * total / 60.0,
                   "cost_model": {"formula": "scale * (t0 + c * batch * patch_voxels * f(base_filters))",
                                  "t0_seconds": T0_SECONDS, "c_seconds_per_voxel": C_SECONDS_PER_VOXEL,
                                  "f": {str(k): v for k, v in WIDTH_COST.items()},
                                  "scale": float(seconds_scale),
                                  "measured": [{"base_filters": f, "batch": b, "patch": list(p), "seconds": s}
                                               for f, b, p, s in MEASURED]},
                   "candidates": candidates},
        "why": why,
    }


def _cap(target, shape, dims, axis, aniso, axes=None) -> list[int]:
    """Median shape on ``axes`` (default all), shrunk until it fits the paper-size voxel cap."""
    axes = list(range(3)) if axes is None else axes
    spacing, patch = [float(target[a]) for a in axes], [int(shape[a]) for a in axes]
    shrinkable = [i for i, a in enumerate(axes) if not (dims == 3 and aniso and a == axis)]
    while math.prod(pool_and_kernels(spacing, patch)["patch_size"]) > PAPER_PATCH_VOXELS[dims]:
        smaller = _shrink(spacing, pool_and_kernels(spacing, patch)["patch_size"], shrinkable)
        if smaller is None:
            break
        patch = smaller
    return patch


NNUNET_SGD = {"name": "SGD", "lr": 0.01, "momentum": 0.99, "nesterov": True, "weight_decay": 3e-5}
BUDGET_ADAMW = {"name": "AdamW", "lr": 2e-3, "weight_decay": 3e-5}
OPTIMIZER_REASONS = {
    "SGD": "optimizer: nnU-Net's SGD (lr 0.01, momentum 0.99, Nesterov), poly LR over 250k iterations",
    "AdamW": ("optimizer: AdamW lr 2e-3, poly LR: nnU-Net's SGD (lr 0.01, momentum 0.99) is tuned for 250k iterations; "
              "under a CPU budget of hundreds of iterations it stays on the all-background plateau (one EMIDEC batch "
              "of 6 slices, 120 steps: SGD predicted no foreground, AdamW reached Dice 0.94)"),
}


def optimizer_for(preset: str, budget_minutes: float | None) -> dict:
    """nnU-Net's SGD for the unbudgeted paper plan; AdamW for CPU budgets (``OPTIMIZER_REASONS`` says why)."""
    return dict(NNUNET_SGD if preset == "paper" and budget_minutes is None else BUDGET_ADAMW)


def build_optimizer(plan: dict, params):
    """The torch optimiser that ``plan["training"]["optimizer"]`` names (``name`` plus its keyword args)."""
    import torch

    settings = dict(plan["training"]["optimizer"])
    name = settings.pop("name")
    if not hasattr(torch.optim, name):
        raise ValueError(f"plan optimizer {name!r} is not in torch.optim; edit plan.json")
    return getattr(torch.optim, name)(params, **settings)


def min_iterations_for(budget_minutes: float) -> int:
    """The least iterations a budget must buy before the planner stops shrinking (module doc)."""
    return int(math.ceil(MIN_ITERATIONS_PER_SQRT_MINUTE * math.sqrt(budget_minutes)))


def _choose(spacing, full_patch, shrinkable, batch, preset, budget, scale):
    """(base filters, patch, seconds/iteration, iterations) and the candidates table (module doc)."""
    if preset == "paper" and budget is None:
        sec = seconds_per_iteration(batch, full_patch, BASE_FILTERS, scale)
        total = PRESETS["paper"]["epochs"] * PRESETS["paper"]["iterations_per_epoch"]
        return (BASE_FILTERS, list(full_patch), sec, total), []
    train_seconds = budget * 60.0 * TRAIN_FRACTION
    ladder = [(w, list(full_patch)) for w in WIDTHS]
    patch = list(full_patch)
    while (patch := _shrink(spacing, patch, shrinkable)) is not None:
        ladder.append((WIDTHS[-1], patch))
    table = []
    for base, patch in ladder:
        sec = seconds_per_iteration(batch, patch, base, scale)
        table.append({"base_filters": base, "patch": patch, "seconds_per_iteration": round(sec, 4),
                      "iterations": int(train_seconds // sec)})
        if table[-1]["iterations"] >= min_iterations_for(budget):
            break  # the first that fits; otherwise the last (cheapest) is taken
    table[-1]["chosen"] = True
    base, patch, iterations = table[-1]["base_filters"], table[-1]["patch"], table[-1]["iterations"]
    sec = seconds_per_iteration(batch, patch, base, scale)
    if iterations < 1:
        raise ValueError(f"a budget of {budget:g} min cannot fit one training iteration (the cheapest plan, width "
                         f"{base} patch {patch}, needs {sec / TRAIN_FRACTION / 60:.2f} min); give a larger budget")
    return (base, patch, sec, iterations), table


# ---------------------------------------------------------------------------------------------
# file, network, measurement
# ---------------------------------------------------------------------------------------------


def write_plan(path: str | Path, plan: dict) -> Path:
    """Write a plan as readable JSON, atomically."""
    return write_json(path, plan)


def load_plan(path: str | Path) -> dict:
    """Read a plan written by :func:`write_plan` (or edited by hand).

    Raises:
        DataError: naming ``path`` when it is missing, not JSON, or not a plan.
    """
    path = Path(path)
    try:
        plan = json.loads(path.read_text())
    except OSError as exc:
        raise DataError(path, f"cannot read the plan ({exc}); create one with lgesynth.seg.make_plan") from None
    except ValueError as exc:
        raise DataError(path, f"not valid JSON ({exc}); fix the edit or re-create the plan") from None
    if not isinstance(plan, dict) or plan.get("format") != PLAN_FORMAT:
        raise DataError(path, f'not a segmentation plan (needs "format": "{PLAN_FORMAT}")')
    missing = [k for k in ("patch_size", "batch_size", "network", "training") if k not in plan]
    if missing:
        raise DataError(path, f"plan lacks {missing}; re-create it with lgesynth.seg.make_plan")
    return plan


def build_dynunet(plan: dict):
    """MONAI ``DynUNet`` from ``plan["network"]`` (deep supervision on, instance norm, leaky ReLU)."""
    from monai.networks.nets import DynUNet

    kwargs = dict(plan["network"])
    for key in ("norm_name", "act_name"):
        if isinstance(kwargs.get(key), list):
            kwargs[key] = (kwargs[key][0], dict(kwargs[key][1]))
    return DynUNet(**kwargs)


def measure_step_seconds(plan: dict, steps: int = 3, seed: int = 0) -> float:
    """Wall time (s) of one training step of the planned DynUNet on random data: the fastest of
    ``steps`` steps after a warm-up (the minimum is what the machine can do; other jobs on the shared
    cores only ever add time, by up to 20x when torch's threads contend with them). Batch and patch
    from the plan, SGD, cross-entropy over the deep supervision heads."""
    import torch

    torch.manual_seed(seed)
    net = build_dynunet(plan).train()
    optimiser = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.99, nesterov=True)
    shape = (plan["batch_size"], IN_CHANNELS, *plan["patch_size"])
    image = torch.randn(shape)
    target = torch.randint(0, N_CLASSES, (shape[0], *shape[2:]))
    weights = plan["deep_supervision_weights"]

    def step():
        optimiser.zero_grad(set_to_none=True)
        out = net(image)  # (batch, 1 + heads, classes, *patch)
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


def refine_plan(plan: dict, measured_seconds: float | None = None) -> dict:
    """Re-plan with the cost model rescaled so that it predicts ``measured_seconds`` (measured now
    with :func:`measure_iteration_seconds` when not given) for this plan's network."""
    if measured_seconds is None:
        measured_seconds = measure_iteration_seconds(plan)
    inputs = plan["inputs"]
    scale = inputs["seconds_scale"] * measured_seconds / plan["budget"]["seconds_per_iteration"]
    new = make_plan((inputs["median_spacing_mm"], inputs["median_shape"]), preset=inputs["preset"],
                    budget_minutes=inputs["budget_minutes"], dims=inputs["dims"], res_block=inputs["res_block"],
                    seconds_scale=scale, target_spacing_mm=plan["target_spacing_mm"])
    new["why"].append(f"cost model rescaled x{scale:.2f}: a measured iteration took {measured_seconds:.3f} s where "
                      f"{plan['budget']['seconds_per_iteration']:.3f} s was predicted")
    return new


def measure_iteration_seconds(plan: dict, steps: int = 3, seed: int = 0) -> float:
    """What one training iteration of ``train.yaml`` costs here: :func:`measure_step_seconds` (the bare
    network step) times ``ITERATION_OVERHEAD`` (augmentation in the loader, Dice + CE on every
    deep-supervision head, handlers; measured, see its comment)."""
    return ITERATION_OVERHEAD * measure_step_seconds(plan, steps, seed)


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
