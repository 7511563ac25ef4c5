"""Figures of the synthetic-cohort quality report (``synth.report``), written atomically as PNG.

- ``report.png`` (:func:`save_report_figure`): one panel per feature, histograms (densities on shared
  bins) of the samples and of the source cohort (the training subjects' own volumes), with the
  decoded training cohort (what the EDM learned from) as an outline; the title gives the samples'
  mean shift in source SDs, SD ratio and KS statistic against the source (against the decoded
  cohort when the source stats are missing).
- ``nearest.png`` (:func:`save_nearest_figure`): the first ``NEAREST_SAMPLES`` (16) samples, each as
  its mid-ventricular slice beside the mid slice of its nearest training subject in image space
  (the memorisation section's ``nn_image``), with that distance (1 - Dice of the myocardium masks) in
  the title. The training slices come from the stored source stats (the reference's when the
  source does not hold the subject), so the bundle alone can draw it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lgesynth.io import atomic_path
from lgesynth.synth.features import FEATURES

if TYPE_CHECKING:
    from lgesynth.synth.stats import CohortStats

NEAREST_SAMPLES = 16
NEAREST_FILE = "nearest.png"


def _title(name: str, row: dict) -> str:
    """The panel title: against the source when the report has it, else the KS statistic against the reference."""
    parts = [f"shift {row['mean_shift_sd']:+.2f} SD" if row.get("mean_shift_sd") is not None else None,
             f"SD ratio {row['sd_ratio']:.2f}" if row.get("sd_ratio") is not None else None,
             f"KS {row['ks_source_statistic']:.2f}" if row.get("ks_source_statistic") is not None else None]
    if not any(parts) and row.get("ks_statistic") is not None:
        parts = [f"KS {row['ks_statistic']:.2f} vs reference"]
    return "\n".join([name, ", ".join(p for p in parts if p)]) if any(parts) else name


def save_report_figure(path: str | Path, samples: "CohortStats", reference: "CohortStats", report: dict | None = None,
                       source: "CohortStats | None" = None, reference_label: str = "decoded training") -> Path:
    """Histograms of every feature (one panel each, see module doc); returns ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.4 * len(FEATURES), 3.0))
    FigureCanvasAgg(fig)
    for i, name in enumerate(FEATURES):
        ax = fig.add_subplot(1, len(FEATURES), i + 1)
        a, b = samples.values(name), reference.values(name)
        s = source.values(name) if source is not None else np.zeros(0)
        both = np.concatenate([a, b, s])
        if both.size:
            lo, hi = float(both.min()), float(both.max())
            bins = np.linspace(lo, hi if hi > lo else lo + 1e-6, 16)
            for values, style in ((s, dict(alpha=0.45, color="tab:blue", label=f"source (n={s.size})")),
                                  (b, dict(histtype="step", linestyle="--", linewidth=1.2, color="tab:green",
                                           label=f"{reference_label} (n={b.size})")),
                                  (a, dict(alpha=0.45, color="tab:orange", label=f"synthetic (n={a.size})"))):
                if values.size:  # an empty density histogram is 0 / 0
                    ax.hist(values, bins=bins, density=True, **style)
        ax.set_title(_title(name, (report or {}).get("features", {}).get(name, {})), fontsize=8)
        ax.tick_params(labelsize=7)
        if i == 0:
            ax.legend(fontsize=6)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90, metadata={"Software": None})
    return Path(path)


def nearest_panels(report: dict, samples: "CohortStats", training_slices: dict, limit: int = NEAREST_SAMPLES
                   ) -> tuple[list[tuple], list[dict]]:
    """Panels ``(image (x, y), label (x, y), title)`` in pairs (sample, its nearest training subject) and the
    pairs ``{"sample", "training", "distance"}``, for the first ``limit`` samples whose mid slice is kept
    and whose nearest subject's slice is in ``training_slices`` (id -> (image or None, label))."""
    panels, pairs = [], []
    for row in report.get("memorisation", {}).get("per_sample", []):
        if len(pairs) >= limit:
            break
        sid, nn = row["id"], row.get("nn_image")
        if sid not in samples.slices or nn not in training_slices:
            continue
        d = row.get("nn_image_distance")
        for (image, label), title in ((samples.slices[sid], sid),
                                      (training_slices[nn], f"nearest {nn}" + (f" d={d:.3f}" if d is not None else ""))):
            panels.append((label.astype(np.float32) if image is None else image, label, title))
        pairs.append({"sample": sid, "training": nn, "distance": d})
    return panels, pairs


def save_nearest_figure(path: str | Path, report: dict, samples: "CohortStats", source: "CohortStats | None",
                        reference: "CohortStats | None" = None, limit: int = NEAREST_SAMPLES) -> dict:
    """``nearest.png`` (see module doc); returns the report's ``nearest`` section: ``file`` (None when
    nothing could be drawn, with ``reason``), ``distance`` and ``pairs``."""
    from lgesynth.viz import save_montage

    training = {**(reference.slices if reference is not None else {}), **(source.slices if source is not None else {})}
    panels, pairs = nearest_panels(report, samples, training, limit)
    out = {"file": None, "distance": "1 - Dice of the myocardium masks (the memorisation section's nn_image)",
           "pairs": pairs}
    if not panels:
        out["reason"] = ("no mid slices of the training subjects (source stats missing)" if not training
                         else "no sample mid slices or nearest subjects to show")
        Path(path).unlink(missing_ok=True)  # a figure left in the folder would not be this cohort's
        return out
    save_montage(path, [p[0] for p in panels], [p[1] for p in panels], [p[2] for p in panels],
                 ncols=8 if len(panels) >= 8 else len(panels))
    out["file"] = Path(path).name
    return out
