"""Planning scar_seg's heart-ROI cascade from a cohort's fingerprint (nnU-Net plans a cascade when the
full-resolution patch cannot afford the object's context; here a CPU budget cannot afford the field of view).

The myocardium covers about 1 % of an LGE slice (EMIDEC: 256 x 256 mm fields of view around hearts of
~50 mm), so a network on whole slices spends its minutes on background. Two plans, two networks:

- **localizer** (stage 1): the same DynUNet on the stack downsampled in plane by ``f``, the smallest power
  of 2 that brings the median field of view to at most ``LOCALIZER_EDGE`` voxels per in-plane axis (slices
  untouched). The image is resampled to the fine target spacing first and then averaged over f x f blocks
  (:func:`lgesynth.seg.cascade.downsample_image`), in training and at inference alike; labels take the
  block's maximum, so a thin wall survives. Trained once per experiment on the real training cases, with
  its own small budget (``PRESETS[preset]["localizer_minutes"]``).
- **roi** (stage 2): myocardium and scar at the fine target spacing inside the in-plane box of the
  myocardium grown by ``ROI_MARGIN_MM`` on every side, all slices. Its patch is planned, as nnU-Net plans
  the patch from the median shape, from the median box of the training labels (the fingerprint's
  ``myocardium_extent_mm``) plus the margins; larger hearts are covered by the sliding window. Its width
  ladder is ``ROI_WIDTHS`` (16, then 8): on EMIDEC's ROI at 4 and 8 minutes, width 16 with twice the
  iterations beat width 32 (test Dice myocardium 0.788 against 0.771 at 8 minutes). It is trained with the
  LV cavity as a fourth class (``cavity_class``, :mod:`lgesynth.seg.cavity`), which its inferer folds into
  background.

``plan["cascade"]`` records the stage and its geometry, ``plan["why"]`` starts with the reasons.
"""

from __future__ import annotations

import math

import numpy as np

from lgesynth.data.validate import slice_axis
from lgesynth.seg.cavity import add_cavity_class
from lgesynth.seg.plan import PRESETS, cohort_source, make_plan
from lgesynth.seg.target_spacing import target_spacing

STAGES = ("full", "localizer", "roi")
LOCALIZER_EDGE = 64  # voxels per in-plane axis of the localizer's median field of view, at most
ROI_MARGIN_MM = 12.0  # context around the myocardium's box, each side: the localizer's error and the scar's neighbourhood
ROI_WIDTHS = (16, 8)  # the ROI network's width ladder: no width 32 (module doc)
CAVITY_CLASS = True  # the ROI network learns the LV cavity as a fourth class (lgesynth/seg/cavity.py)


def _cohort(fp: dict) -> tuple[np.ndarray, np.ndarray, dict, int, np.ndarray]:
    """(median spacing, median shape, make_plan's info, slice axis, fine target spacing) of a fingerprint."""
    spacing, shape, info = cohort_source(fp)
    axis = slice_axis(tuple(int(round(n)) for n in shape), spacing)
    target, _ = target_spacing(spacing, shape, info)
    return spacing, shape, info, axis, np.asarray([float(t) for t in target])


def localizer_factor(field_of_view_mm, in_plane_spacing_mm, edge: int = LOCALIZER_EDGE) -> int:
    """The smallest power of 2 f with every in-plane field of view / (spacing · f) <= ``edge`` voxels."""
    voxels = max(float(fov) / float(s) for fov, s in zip(field_of_view_mm, in_plane_spacing_mm))
    return 2 ** max(0, math.ceil(math.log2(voxels / edge)))


def localizer_plan(fp: dict, preset: str = "cpu", budget_minutes: float | None = None) -> dict:
    """The stage-1 plan: the fingerprint's cohort downsampled in plane (module doc)."""
    spacing, shape, info, axis, target = _cohort(fp)
    in_plane = [a for a in range(3) if a != axis]
    fov = shape * spacing
    f = localizer_factor([fov[a] for a in in_plane], [target[a] for a in in_plane])
    factor = [1 if a == axis else f for a in range(3)]
    coarse = target * np.asarray(factor, float)
    budget = PRESETS[preset]["localizer_minutes"] if budget_minutes is None else float(budget_minutes)
    cascade = {"stage": "localizer", "downsample": factor, "input_spacing_mm": [float(t) for t in target],
               "why": [f"cascade stage 1, the localizer: the stack at the target spacing {[round(float(t), 3) for t in target]} "
                       f"mm averaged over {f} x {f} in-plane blocks ({[round(float(c), 3) for c in coarse]} mm), the smallest "
                       f"power of 2 that brings the median field of view ({[round(float(fov[a])) for a in in_plane]} mm) to "
                       f"<= {LOCALIZER_EDGE} voxels per axis; it only has to find the heart"]}
    return make_plan((spacing, shape), preset=preset, budget_minutes=budget, target_spacing_mm=[float(c) for c in coarse], cascade=cascade)


def roi_plan(fp: dict, preset: str = "cpu", budget_minutes: float | None = None,
             margin_mm: float = ROI_MARGIN_MM, cavity_class: bool = CAVITY_CLASS) -> dict:
    """The stage-2 plan: the fine network over the myocardium's box plus margins (module doc); with
    ``cavity_class``, trained with the LV cavity as a fourth class (:mod:`lgesynth.seg.cavity`).

    Raises:
        ValueError: when the fingerprint has no myocardium extents (a cohort without myocardium labels).
    """
    spacing, shape, info, axis, target = _cohort(fp)
    extent = fp["summary"].get("myocardium_extent_mm") or {}
    if not extent.get("n") or not extent["n"][0]:
        raise ValueError("the fingerprint has no myocardium extents (no training label holds myocardium): "
                         "a cascade cannot be planned; train single-stage (--cascade_stage full, lgesynth experiment "
                         "--nocascade)")
    median, largest = np.asarray(extent["median"], float), np.asarray(extent["max"], float)
    roi_mm = np.where(np.arange(3) == axis, shape * spacing, np.minimum(median + 2 * margin_mm, shape * spacing))
    roi_shape = np.maximum(np.round(roi_mm / spacing), 1)
    cascade = {"stage": "roi", "margin_mm": float(margin_mm), "roi_mm": [float(r) for r in roi_mm],
               "why": [f"cascade stage 2, the ROI: myocardium and scar at full resolution inside the myocardium's in-plane "
                       f"box + {margin_mm:g} mm each side (the localizer finds the box at inference); planned from the "
                       f"median box of the training labels, {[round(float(median[a])) for a in range(3) if a != axis]} mm "
                       f"(largest {[round(float(largest[a])) for a in range(3) if a != axis]} mm: covered by the sliding "
                       f"window), so the median ROI is {[round(float(roi_mm[a])) for a in range(3) if a != axis]} mm in plane, "
                       "all slices",
                       f"widths {'/'.join(map(str, ROI_WIDTHS))}: on the ROI the budget's iterations pay more than width (EMIDEC, "
                       "cpu budgets: width 16 with twice the iterations beat width 32 at 4 and at 8 minutes; docs/experiments.md)"],
               "widths": list(ROI_WIDTHS)}
    plan = make_plan((spacing, roi_shape), preset=preset, budget_minutes=budget_minutes, target_spacing_mm=target.tolist(),
                     cascade=cascade)
    return add_cavity_class(plan) if cavity_class else plan


def stage_plan(fp: dict, stage: str, preset: str = "cpu", budget_minutes: float | None = None) -> dict:
    """The plan of one ``stage`` (``"full"``: the single-stage plan of :func:`lgesynth.seg.plan.make_plan`)."""
    if stage not in STAGES:
        raise ValueError(f"unknown cascade stage {stage!r}; choose one of {list(STAGES)}")
    if stage == "localizer":
        return localizer_plan(fp, preset, budget_minutes)
    if stage == "roi":
        return roi_plan(fp, preset, budget_minutes)
    return make_plan(fp, preset=preset, budget_minutes=budget_minutes)


def plan_stage(plan: dict) -> str:
    """``"full"``, ``"localizer"`` or ``"roi"``: which network of a cascade ``plan`` builds."""
    return (plan.get("cascade") or {}).get("stage", "full")
