"""nnU-Net-style planning of a MONAI DynUNet from the data, under an explicit compute budget.

From the median spacing and shape of a cohort (a fingerprint, :mod:`lgesynth.data.fingerprint`, or
just the two vectors) the planner derives, as nnU-Net v2's ExperimentPlanner does:

1. **Target spacing** (:mod:`lgesynth.seg.target_spacing`): the median, or for anisotropic data the
   10th percentile of the coarse axis' spacings when the fingerprint has them.
2. **Topology** (:mod:`lgesynth.seg.topology`): pool in plane first on thick-slice stacks, kernel 1
   along slices that are > 2x coarser, the patch padded to a multiple of 2^(pools per axis).
3. **2D or 3D**: nnU-Net trains both and picks by cross-validation; we decide from the data instead:
   **3D when the 3D topology pools the slice axis at least once** (enough slices, >= 2 × MIN_EDGE after
   resampling, to learn through-plane context at two scales), **otherwise 2D** on the in-plane axes.
   ``dims=2`` or ``dims=3`` overrides this.
4. **Network** (:mod:`lgesynth.seg.network`): filters 32 doubling per stage, capped, scaled by the
   width factor; deep supervision loss weights 1/2^i normalised. **Optimiser**: :mod:`lgesynth.seg.optimizer`.

**Compute budget.** :mod:`lgesynth.seg.cost_model` predicts seconds per training iteration;
:mod:`lgesynth.seg.cost_calibration` rescales it from an iteration timed on the machine that trains.
A share ``TRAIN_FRACTION`` of the budget is for training steps, the rest for validation, data
loading and start-up. Candidates are tried in order: width 32, 16, 8 at the full patch, then width 8
with ever smaller patches (the longest side in mm first; the slice axis of anisotropic data is
never cut); the first that fits at least 200 · √(budget minutes) iterations (245 for 1.5 min, 600 for
9 min) is taken and given all the iterations the budget affords. Growing the minimum with the square
root of the budget spends a larger budget on both a larger network / patch and more iterations, and
keeps the choice monotone: a candidate qualifies when its seconds/iteration are
<= 0.75 · 60 · √budget / 200, so a smaller budget never gets a wider network or a larger patch.
Presets: ``smoke`` 1.5 min per arm, ``cpu`` 9 min per arm, ``paper`` nnU-Net's default (full width
and patch, 1000 epochs × 250 iterations, on a GPU; its CPU time is only reported).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from lgesynth.data.validate import slice_axis
from lgesynth.errors import DataError
from lgesynth.io import write_json
from lgesynth.seg.cost_model import cost_model_record, seconds_per_iteration
from lgesynth.seg.network import BASE_FILTERS, network_spec
from lgesynth.seg.optimizer import OPTIMIZER_REASONS, optimizer_for
from lgesynth.seg.target_spacing import ANISO_THRESHOLD, target_spacing
from lgesynth.seg.topology import MIN_EDGE, PAPER_PATCH_VOXELS, cap_patch, pool_and_kernels, shrink_patch

PLAN_FORMAT = "lgesynth-seg-plan/1"
WIDTHS = (32, 16, 8)
MIN_ITERATIONS_PER_SQRT_MINUTE = 200  # the least iterations a budget must buy: 200 · sqrt(budget minutes)
TRAIN_FRACTION = 0.75
PRESETS = {  # localizer_minutes: the cascade's first stage (lgesynth.seg.cascade_plan), trained once per experiment
    "smoke": {"budget_minutes": 1.5, "localizer_minutes": 0.5, "epochs": 2, "device": "cpu"},
    "cpu": {"budget_minutes": 9.0, "localizer_minutes": 1.5, "epochs": 10, "device": "cpu"},
    "paper": {"budget_minutes": None, "localizer_minutes": None, "epochs": 1000, "iterations_per_epoch": 250,
              "device": "cuda"},
}


def cohort_source(source) -> tuple[np.ndarray, np.ndarray, dict]:
    """(median spacing (3,), median shape (3,), ``{"summary", "case_spacings"}`` of a fingerprint or {}) from any
    input :func:`make_plan` accepts."""
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


def make_plan(source, preset: str = "cpu", budget_minutes: float | None = None, dims: int | str = "auto",
              res_block: bool = False, seconds_scale: float = 1.0, target_spacing_mm=None,
              cascade: dict | None = None) -> dict:
    """Plan a DynUNet for a cohort.

    Args:
        source: a fingerprint dict (``{"summary": {"median_spacing_mm", "median_shape", ...}, "cases": [...]}``),
            its summary alone, a path to its JSON, or a pair ``(median_spacing_mm (3,), median_shape (3,))``.
        preset: ``"smoke"``, ``"cpu"`` or ``"paper"`` (module doc).
        budget_minutes: training time per arm on the 2-core CPU; default: the preset's (none for paper).
        dims: ``"auto"`` (module doc, step 3), 2 or 3.
        res_block: residual blocks in the DynUNet (nnU-Net's default: plain convolutions).
        seconds_scale: multiplies the cost model (:func:`lgesynth.seg.cost_calibration.refine_plan` sets it
            from a measured step).
        target_spacing_mm: (3,) use this target spacing instead of deriving it (nnU-Net's
            ``overwrite_target_spacing``).
        cascade: the stage of a heart-ROI cascade this network is (:mod:`lgesynth.seg.cascade_plan`), stored as
            ``plan["cascade"]`` with its ``"why"`` lines first in ``plan["why"]``, and its ``"widths"`` (if any)
            replacing the ladder's 32/16/8; None for a single-stage plan.
    Returns:
        the plan, a JSON-ready dict; ``plan["why"]`` lists every decision in words.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    settings = PRESETS[preset]
    budget = settings["budget_minutes"] if budget_minutes is None else float(budget_minutes)
    spacing_in, shape_in, info = cohort_source(source)
    why: list[str] = list((cascade or {}).get("why", []))
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
    topo3 = pool_and_kernels(target, cap_patch(target, shape.tolist(), 3, axis, aniso))
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
    topo = pool_and_kernels(spacing, cap_patch(target, shape.tolist(), dims, axis, aniso, axes))
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
    widths = tuple((cascade or {}).get("widths", WIDTHS))
    choice, candidates = _choose(spacing, topo["patch_size"], shrinkable, batch, preset, budget, seconds_scale, widths)
    min_iterations = None if budget is None else min_iterations_for(budget)
    base, patch_size, sec, iterations = choice
    final = pool_and_kernels(spacing, patch_size)
    network = network_spec(final, dims, base, res_block)
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
                   f"{sec:.2f} s/iteration predicted -> {epochs * per_epoch} iterations; the first of widths "
                   f"{'/'.join(map(str, widths))} at "
                   f"the full patch, then smaller patches, that fits >= 200 x sqrt(budget minutes) = {min_iterations} iterations"
                   + ("" if iterations >= min_iterations else
                      f" -- none did, so the cheapest candidate was taken with only {iterations} iterations"))
    optimizer = optimizer_for(preset, budget)
    why.append(OPTIMIZER_REASONS[optimizer["name"]])
    precision = "fp32" if preset == "paper" else "auto"
    if precision == "auto":
        why.append("precision auto: the forward pass in bf16 autocast where the training CPU or GPU computes bf16 "
                   "natively (AVX512-BF16 / AMX; a 2D ROI step 1.5x faster on a Zen 4 EPYC), float32 elsewhere "
                   "(lgesynth.seg.precision); the calibration times the step in the precision it will train in")
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
                     "foreground_oversampling": 0.33, "precision": precision},
        "budget": {"preset": preset, "budget_minutes": budget, "train_fraction": TRAIN_FRACTION,
                   "base_filters": base, "width_factor": base / BASE_FILTERS, "seconds_per_iteration": sec,
                   "predicted_minutes": sec * total / 60.0,
                   "cost_model": cost_model_record(seconds_scale),
                   "candidates": candidates},
        **({"cascade": cascade} if cascade else {}),
        "why": why,
    }


def min_iterations_for(budget_minutes: float) -> int:
    """The least iterations a budget must buy before the planner stops shrinking (module doc)."""
    return int(math.ceil(MIN_ITERATIONS_PER_SQRT_MINUTE * math.sqrt(budget_minutes)))


def _choose(spacing, full_patch, shrinkable, batch, preset, budget, scale, widths=WIDTHS):
    """(base filters, patch, seconds/iteration, iterations) and the candidates table (module doc)."""
    if preset == "paper" and budget is None:
        sec = seconds_per_iteration(batch, full_patch, BASE_FILTERS, scale)
        total = PRESETS["paper"]["epochs"] * PRESETS["paper"]["iterations_per_epoch"]
        return (BASE_FILTERS, list(full_patch), sec, total), []
    train_seconds = budget * 60.0 * TRAIN_FRACTION
    ladder = [(w, list(full_patch)) for w in widths]
    patch = list(full_patch)
    while (patch := shrink_patch(spacing, patch, shrinkable)) is not None:
        ladder.append((widths[-1], patch))
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
                         f"{base} patch {patch}, needs {sec / TRAIN_FRACTION / 60:.2g} min); give a larger budget")
    return (base, patch, sec, iterations), table


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
