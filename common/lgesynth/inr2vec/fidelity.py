"""Does the decoder render a subject's masks at their true size, and its scar as bright? Per subject and cohort.

A decoder whose masks are dilated or eroded passes that bias to every sample the generator makes,
and one that pulls every subject towards the cohort mean narrows the samples' spread. Measured on
the canonical grid, decoded label against the canonical label of the same subject:

    myo_ratio   = decoded / true myocardium voxels     (1: unbiased; > 1 dilated)
    scar_ratio  = decoded / true scar voxels           (NaN without true scar)
    wall_ratio  = decoded / true wall thickness        (``synth.features.volume_features``, mm)

    contrast_scar_true / _decoded   scar minus healthy-myocardium mean intensity (canonical units,
                                    ``volume_features``' ``contrast_scar_remote``), each image with its own label

and per cohort (one role: train / val / test) the median and 10th / 90th percentiles of each ratio,
the coefficient of variation (SD / mean) of the myocardium and scar voxel counts, true and
decoded (a decoded CV under the true one is a cohort rendered too alike), and the decoded scar
contrast's mean shift in SDs of the true one and its SD ratio (the synthetic-cohort report's measures).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lgesynth.io import atomic_path
from lgesynth.synth.features import volume_features

RATIOS = ("myo_ratio", "scar_ratio", "wall_ratio")
COLUMNS = ("myo_voxels_true", "myo_voxels_decoded", "myo_ratio", "scar_voxels_true", "scar_voxels_decoded", "scar_ratio",
           "wall_mm_true", "wall_mm_decoded", "wall_ratio", "contrast_scar_true", "contrast_scar_decoded")


def _ratio(decoded: float, true: float) -> float:
    return float(decoded / true) if true > 0 and np.isfinite(decoded) and np.isfinite(true) else float("nan")


def mask_fidelity(decoded: np.ndarray, true: np.ndarray, spacing_mm, decoded_image: np.ndarray | None = None,
                  true_image: np.ndarray | None = None) -> dict[str, float]:
    """``COLUMNS`` of one subject from its decoded and true labels ``(X, Y, Z)`` (0/1/2, slice axis last)
    on one grid of voxel size ``spacing_mm (3,)``; with the two images (canonical units) also the scar
    contrasts, each image with its own label (NaN without them, or where a label has no scar or no
    healthy myocardium). One ``volume_features`` pass per label gives wall thickness and contrast."""
    if decoded.shape != true.shape:
        raise ValueError(f"decoded label {decoded.shape} and true label {true.shape} are on different grids")
    out = {}
    for name, region in (("myo", (1, 2)), ("scar", (2,))):
        t, d = int(np.isin(true, region).sum()), int(np.isin(decoded, region).sum())
        out.update({f"{name}_voxels_true": t, f"{name}_voxels_decoded": d, f"{name}_ratio": _ratio(d, t)})
    f_true, f_dec = volume_features(true_image, true, spacing_mm), volume_features(decoded_image, decoded, spacing_mm)
    out.update(wall_mm_true=f_true["wall_thickness_mm"], wall_mm_decoded=f_dec["wall_thickness_mm"],
               wall_ratio=_ratio(f_dec["wall_thickness_mm"], f_true["wall_thickness_mm"]),
               contrast_scar_true=f_true["contrast_scar_remote"], contrast_scar_decoded=f_dec["contrast_scar_remote"])
    return out


def _finite(values) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    return v[np.isfinite(v)]


def coefficient_of_variation(values) -> float:
    """SD (ddof 1) / mean of the finite values; NaN for fewer than two or a zero mean."""
    v = _finite(values)
    return float(v.std(ddof=1) / v.mean()) if v.size > 1 and v.mean() > 0 else float("nan")


def cohort_fidelity(rows: list[dict], tag: str) -> dict[str, float]:
    """Summary of ``mask_fidelity`` rows of one role, keys suffixed ``_<tag>``: ``<ratio>_median``, ``_p10``,
    ``_p90`` of every ratio, ``<myo|scar>_voxels_cv_true`` / ``_cv_decoded``."""
    out = {}
    for key in RATIOS:
        v = _finite([r.get(key, np.nan) for r in rows])
        for stat, q in (("median", 50), ("p10", 10), ("p90", 90)):
            out[f"{key}_{stat}_{tag}"] = float(np.percentile(v, q)) if v.size else float("nan")
    for name in ("myo", "scar"):
        for which in ("true", "decoded"):
            out[f"{name}_voxels_cv_{which}_{tag}"] = coefficient_of_variation([r.get(f"{name}_voxels_{which}") for r in rows])
    true = np.asarray([r.get("contrast_scar_true", np.nan) for r in rows], dtype=np.float64)
    dec = np.asarray([r.get("contrast_scar_decoded", np.nan) for r in rows], dtype=np.float64)
    both = np.isfinite(true) & np.isfinite(dec)
    sd = true[both].std(ddof=1) if both.sum() > 1 else float("nan")
    ok = both.sum() > 1 and sd > 0
    out[f"contrast_scar_shift_sd_{tag}"] = float((dec[both].mean() - true[both].mean()) / sd) if ok else float("nan")
    out[f"contrast_scar_sd_ratio_{tag}"] = float(dec[both].std(ddof=1) / sd) if ok else float("nan")
    return out


def save_fidelity_figure(path: str | Path, rows: list[dict], roles=("train", "val", "test")) -> Path:
    """Two panels, atomically: decoded vs true myocardium voxels per subject (identity line: unbiased) and
    the histogram of ``myo_ratio`` per role."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.4))
    FigureCanvasAgg(fig)
    scatter, hist = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    colours = {"train": "tab:blue", "val": "tab:green", "test": "tab:orange"}
    ratios = _finite([r.get("myo_ratio") for r in rows])
    bins = np.linspace(min(0.7, ratios.min(initial=1.0)), max(1.3, ratios.max(initial=1.0)), 25)
    top = 1.0
    for role in roles:
        part = [r for r in rows if r.get("role") == role]
        if not part:
            continue
        t = np.asarray([r["myo_voxels_true"] for r in part], dtype=np.float64)
        d = np.asarray([r["myo_voxels_decoded"] for r in part], dtype=np.float64)
        role_ratios = _finite([r["myo_ratio"] for r in part])
        top = max(top, float(t.max()), float(d.max()))
        med = float(np.median(role_ratios)) if role_ratios.size else float("nan")
        scatter.scatter(t, d, s=10, color=colours.get(role), label=f"{role} (n={len(part)}, median x{med:.3f})")
        hist.hist(role_ratios, bins=bins, alpha=0.5, color=colours.get(role), label=role)
    scatter.plot([0, top], [0, top], color="k", lw=0.8)
    scatter.set_xlabel("true myocardium (voxels)", fontsize=8)
    scatter.set_ylabel("decoded myocardium (voxels)", fontsize=8)
    scatter.legend(fontsize=6)
    hist.axvline(1.0, color="k", lw=0.8)
    hist.set_xlabel("decoded / true myocardium", fontsize=8)
    hist.legend(fontsize=6)
    for ax in (scatter, hist):
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90, metadata={"Software": None})
    return Path(path)
