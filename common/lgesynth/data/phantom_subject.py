"""One procedural LGE phantom subject: a short-axis stack with myocardium and scar labels.

Each subject is drawn from its own generator (``phantom_cohort`` seeds it by ``(seed, index)``),
so the same generator state gives the same bytes. Generation, all lengths in mm:

1. **Parameters** (``phantom_params``): matrix, in-plane spacing, slice thickness and count, heart
   geometry and pose (the LV placed off centre), signal levels and contrast targets.
2. **Anatomy** (``phantom_anatomy``): torso and heart painted on ``SUBSLICES`` planes per slice.
3. **Scar** (``phantom_scar``): ischemic or non-ischemic scar on the myocardium.
4. **Acquisition** (``phantom_acquisition``): slice averaging, PSF, coil field, solved blood and
   scar levels, Rician noise.

Heart frame (``params["heart"]``): ``center_mm`` is the LV centre on the base plane in stack world
coordinates, ``axes`` the rows ``e_a`` (towards the septum / RV), ``e_b = e_a x e_u`` (anterior),
``e_u`` (base -> apex); a point p of slice k has ``(a, b, u) = axes @ (p - center_mm - shift_mm[k])``
(in-plane shift only). AHA angle ``phi = atan2(b, a)``: 0 mid-septum, +90 deg anterior, 180 deg
lateral, -90 deg inferior. The myocardium is ``rho_endo > 1, rho_epi <= 1, u >= 0`` with
``rho = sqrt((a/A)^2 + (b/B)^2 + ((u - u_c)/L)^2) / (1 + ripple(phi))``. Displayed with x to the right
and y up, a slice looks like a standard short-axis view (anterior up, RV on the left).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lgesynth.data.phantom_acquisition import acquire, rendering_planes, stack_affine
from lgesynth.data.phantom_anatomy import heart_frame, paint_heart, paint_torso
from lgesynth.data.phantom_params import PATTERN_PROBS, sample_params
from lgesynth.data.phantom_scar import paint_scar


@dataclass
class PhantomSubject:
    """One phantom stack: ``image`` (x, y, z) float32, ``label`` (x, y, z) uint8 in {0, 1, 2},
    ``affine`` (4, 4) diagonal (spacing) with translation, ``params`` (JSON-serialisable), and
    ``myocardium_fraction`` (x, y, z) float32: the share of each voxel's slab that is myocardium
    (through-plane partial volume; ``label > 0`` is ``myocardium_fraction >= 0.5``)."""

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    params: dict = field(default_factory=dict)
    myocardium_fraction: np.ndarray | None = None


def sample_subject(rng: np.random.Generator, pattern: str | None = None) -> PhantomSubject:
    """Draw one phantom subject from ``rng``.

    Args:
        rng: the subject's generator (e.g. ``np.random.default_rng([seed, index])``).
        pattern: force ``"ischemic"``, ``"non_ischemic"`` or ``"none"``; default: drawn with
            ``PATTERN_PROBS``.
    Returns:
        :class:`PhantomSubject`; ``params`` holds the drawn parameters (``phantom_params``) plus the
        measured ``scar_burden`` (scar / myocardium voxels of the label), ``mvo_fraction`` and
        ``slices_with_myocardium``.
    """
    if pattern is not None and pattern not in PATTERN_PROBS:
        raise ValueError(f"pattern must be one of {list(PATTERN_PROBS)}, got {pattern!r}")
    p = sample_params(rng, pattern)
    planes = rendering_planes(p)
    tissue = np.zeros(planes.shape, dtype=np.float32)
    paint_torso(rng, tissue, planes, p)
    frame = heart_frame(planes, p["heart"])
    heart = tissue[frame.box]  # a view: painting it paints tissue
    myo, cavity = paint_heart(rng, heart, frame, p)
    scar, scar_weight, mvo_fraction = paint_scar(rng, heart, frame, myo, p)
    myo, cavity, scar, scar_weight = (frame.to_grid(a, tissue.shape) for a in (myo, cavity, scar, scar_weight))
    image, label, myo_frac = acquire(rng, tissue, myo, cavity, scar, scar_weight, p)
    p["scar_burden"] = float((label == 2).sum() / max(int((label > 0).sum()), 1))
    p["mvo_fraction"] = mvo_fraction
    p["slices_with_myocardium"] = int((label > 0).any(axis=(0, 1)).sum())
    return PhantomSubject(image=image, label=label, affine=stack_affine(planes, p), params=p,
                          myocardium_fraction=myo_frac)
