"""Segmentation: nnU-Net-style DynUNet planning under a compute budget, and regional metrics."""

from lgesynth.seg.metrics import dice, hd95_mm, regional_metrics, scar_burden  # noqa: F401
from lgesynth.seg.plan import (  # noqa: F401
    build_dynunet,
    calibrate_plan,
    load_plan,
    make_plan,
    measure_iteration_seconds,
    measure_step_seconds,
    refine_plan,
    write_plan,
)
from lgesynth.seg.regions import REGIONS, split_thirds  # noqa: F401
