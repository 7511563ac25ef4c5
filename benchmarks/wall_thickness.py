"""Does a wall-thickness estimator read the walls or their edges? Two estimators on one pipeline run's three cohorts.

    python benchmarks/wall_thickness.py --run runs/cpu_phantom --json /tmp/wall.json

Cohorts (as the edm_synth report measures them): ``source``, the generator's training subjects' own labels
on the canonical grid at their own voxel sizes; ``decoded``, the same subjects' latents decoded there;
``samples``, the label files of ``RUN/synthetic/datalist.json``. Estimators, per volume:
- ``ring`` (``synth.features.volume_features``): mean over ring slices of ``sqrt(A_epi/pi) - sqrt(A_endo/pi)``;
- ``ridge``: mean of ``2 EDT - s`` over the ridges of the in-plane distance transform of every slice with
  myocardium (``synth.features.ridge_thickness``, what the plausibility check's apical cap uses).
Prints, per estimator, each cohort's mean and SD and its shift from the source in source SDs, and the samples' SD ratio
and KS statistic against the source.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from scipy.stats import ks_2samp

from edm_span import add_run_arguments, load_run  # the sibling benchmark's helpers
from lgesynth.data.canonical import CanonicalGrid
from lgesynth.data.canonical_case import to_canonical
from lgesynth.data.datalist import load_datalist
from lgesynth.engines.edm import EdmData
from lgesynth.inr.bank import load_bank
from lgesynth.io import spacing_from_affine
from lgesynth.synth.features import ridge_thickness, volume_features
from lgesynth.synth.generator import decode_samples, sample_grid


def both_estimates(label: np.ndarray, spacing_mm) -> tuple[float, float]:
    """``(ring, ridge)`` wall thickness (mm) of one label (x, y, z), slice axis last."""
    ring = volume_features(None, label, spacing_mm)["wall_thickness_mm"]
    myo, s_plane = np.isin(label, (1, 2)), np.asarray(spacing_mm, dtype=np.float64)[:2]
    ridges = [ridge_thickness(myo[..., k], s_plane) for k in range(myo.shape[2]) if myo[..., k].any()]
    return ring, float(np.concatenate(ridges).mean()) if ridges else float("nan")


def finite(v: np.ndarray) -> np.ndarray:
    return v[np.isfinite(v)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(ap)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    if not args.run:
        ap.error("give --run (the source bank and the samples are read from it)")
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    gen, latents = load_run(ap, args)
    ids = json.loads((run / "edm_synth" / "models" / "source.json").read_text())["ids"]
    bank = load_bank(run / "inr_fit")
    grid, by_id = CanonicalGrid.from_dict(bank.fit.get("grid")), {s["id"]: s for s in bank.subjects}
    cohorts: dict[str, list[tuple[float, float]]] = {"source": [], "decoded": [], "samples": []}
    for sid in ids:
        src = by_id[sid]["source"]
        case = to_canonical(None, src["label"], grid)
        cohorts["source"].append(both_estimates(case.label, spacing_from_affine(case.affine)))
    data = EdmData(str(latents), scale=bool(gen.scale_dims))
    w, spacing = gen.split(data.x[[data.ids.index(sid) for sid in ids]].to(gen.device))
    spacing = np.asarray(spacing)
    grids = [sample_grid(gen.record, s) for s in spacing]
    cohorts["decoded"] = [both_estimates(label, spacing[i])
                          for i, _, label in decode_samples(gen.decoder, w.cpu(), grids)]
    for e in load_datalist(run / "synthetic" / "datalist.json", ("training",)):
        img = nib.load(e["label"])
        cohorts["samples"].append(both_estimates(np.asarray(img.dataobj), spacing_from_affine(img.affine)))
    out: dict = {"run": str(run)}
    for j, estimator in enumerate(("ring", "ridge")):
        values = {name: np.array([v[j] for v in rows], dtype=np.float64) for name, rows in cohorts.items()}
        mean, sd = float(np.nanmean(values["source"])), float(np.nanstd(values["source"], ddof=1))
        out[estimator] = {"source_mean_mm": round(mean, 3), "source_sd_mm": round(sd, 3),
                          **{f"{name}_{stat}": value for name, v in values.items() if name != "source"
                             for stat, value in (("mean_mm", round(float(np.nanmean(v)), 3)),
                                                 ("sd_mm", round(float(np.nanstd(v, ddof=1)), 3)),
                                                 ("shift_sd", round(float((np.nanmean(v) - mean) / sd), 3)))},
                          "samples_sd_ratio": round(float(np.nanstd(values["samples"], ddof=1) / sd), 3),
                          "samples_ks_source": round(float(ks_2samp(finite(values["samples"]),
                                                                    finite(values["source"])).statistic), 3)}
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
