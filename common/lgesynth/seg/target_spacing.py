"""The target spacing a cohort is resampled to, as nnU-Net v2's ExperimentPlanner chooses it.

The median spacing. For anisotropic data (max / min spacing > ``ANISO_THRESHOLD`` = 3 and the coarse
axis has < 1/3 of the voxels of the others) nnU-Net takes the 10th percentile of the coarse axis'
spacings instead (never finer than the in-plane spacing). So do we when the fingerprint has per-case
spacings (or its p5/p25, interpolated); from a bare median we keep it.
"""

from __future__ import annotations

import numpy as np

ANISO_THRESHOLD = 3.0


def target_spacing(spacing_mm, shape, info: dict | None = None) -> tuple[np.ndarray, str]:
    """Target spacing (3,) in mm and the reason in words (module doc).

    Args:
        spacing_mm, shape: the cohort's median spacing (3,) in mm and median shape (3,) in voxels.
        info: ``{"summary": fingerprint summary, "case_spacings": [(3,) per case]}`` when known.
    """
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
