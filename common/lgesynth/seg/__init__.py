"""Segmentation: nnU-Net-style DynUNet planning under a compute budget, and regional metrics."""

from lgesynth.seg.metrics import hd95_mm, regional_metrics, scar_burden  # noqa: F401
from lgesynth.seg.cost_calibration import (  # noqa: F401
    calibrate_plan,
    measure_iteration_seconds,
    measure_step_seconds,
    refine_plan,
)
from lgesynth.seg.network import build_dynunet  # noqa: F401
from lgesynth.seg.plan import load_plan, make_plan, write_plan  # noqa: F401
from lgesynth.seg.regions import REGIONS, split_thirds  # noqa: F401
