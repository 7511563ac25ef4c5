"""Quality report of a synthetic cohort against the real cohort it learned from.

Per volume: plausibility and features (``synth.features``), accumulated per cohort in
:class:`CohortStats` (``synth.stats``). Two real cohorts are compared with (both stored in the
edm_synth models folder by the train run's export, so a report needs no training data):

- the **source** cohort (``source.{json,safetensors}``): the training subjects' own volumes and labels
  on the canonical grid, each at its own voxel size. What the generator should match.
- the **reference** (``reference.{json,safetensors}``): the training cohort as the inr2vec decoder
  renders it (decoded training latents), or real pairs of ``--reference_datalist``. What the EDM
  learned from; memorisation and latent distances are measured against it.

Per cohort (:func:`quality_report`):

- **distribution match**, per feature of ``FEATURES``: sample mean and SD; against the source:
  ``source_mean``, ``source_std``, ``mean_shift_sd`` = (sample mean - source mean) / source SD,
  ``sd_ratio`` = sample SD / source SD, and the two-sample Kolmogorov-Smirnov statistic and p-value
  (``scipy.stats.ks_2samp``) ``ks_source_statistic``, ``ks_source_pvalue``; against the reference:
  ``reference_mean``, ``reference_std``, ``ks_statistic``, ``ks_pvalue``; and the reference's own
  shift from the source, ``reference_shift_sd`` and ``reference_sd_ratio`` (the decoder's bias).
  Without source stats the source columns are null and ``source.available`` is false with the reason.
- **diversity** and **memorisation** (``synth.memorisation``); ``copies_flagged``.

Figures (``synth.figures``): ``report.png`` (histograms: samples, source, decoded training cohort) and
``nearest.png`` (16 samples beside their nearest training subjects). :class:`CohortEvaluator` is
the ``evaluate.yaml`` engine.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
from ignite.engine import Engine

from lgesynth.engines.base import BundleEngine
from lgesynth.io import load_nifti, spacing_from_affine, write_json
from lgesynth.synth.features import FEATURES, mean_or_nan
from lgesynth.synth.figures import NEAREST_FILE, NEAREST_SAMPLES, save_nearest_figure, save_report_figure
from lgesynth.synth.memorisation import (COPY_NEIGHBOURS, COPY_PERCENTILE, COPY_RATIO, dice_distances, diversity,
                                         latent_distances, memorisation, nearest_neighbours)
from lgesynth.synth.stats import CohortStats, load_source_stats, reference_from_datalist, source_stats

__all__ = ["CohortEvaluator", "CohortStats", "quality_report", "report_metrics", "write_report", "comparison_cohorts",
           "reference_from_datalist", "source_stats", "save_report_figure", "save_nearest_figure", "dice_distances",
           "latent_distances", "nearest_neighbours", "COPY_NEIGHBOURS", "COPY_PERCENTILE", "COPY_RATIO", "NEAREST_FILE"]

SOURCE_DESCRIPTION = ("the training subjects' own volumes and labels, re-made on the canonical grid from the source "
                      "files of the INR bank, each at its own canonical voxel size (models_dir/source.json)")
DECODED_DESCRIPTION = ("the training subjects' latents rendered by the inr2vec decoder on the canonical grid, each at "
                       "its own canonical voxel size (models_dir/reference.json)")


def _clean(x):
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def _sd(v: np.ndarray) -> float:
    return float(v.std(ddof=1)) if v.size > 1 else float("nan")


def _ratio(num: float, den: float) -> float:
    return num / den if math.isfinite(num) and math.isfinite(den) and den > 0 else float("nan")


def _ks(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    from scipy.stats import ks_2samp

    if not (a.size and b.size):
        return float("nan"), float("nan")
    ks = ks_2samp(a, b)
    return float(ks.statistic), float(ks.pvalue)


def feature_rows(samples: CohortStats, reference: CohortStats, source: CohortStats | None = None) -> dict:
    """Per feature the distribution-match row (see module doc); source columns NaN without ``source``."""
    rows = {}
    for name in FEATURES:
        a, b = samples.values(name), reference.values(name)
        row = {"n_sample": int(a.size), "n_reference": int(b.size), "sample_mean": mean_or_nan(a), "sample_std": _sd(a),
               "reference_mean": mean_or_nan(b), "reference_std": _sd(b)}
        row["ks_statistic"], row["ks_pvalue"] = _ks(a, b)
        s = source.values(name) if source is not None else np.zeros(0)
        s_mean, s_sd = mean_or_nan(s), _sd(s)
        row.update(n_source=int(s.size) if source is not None else None, source_mean=s_mean, source_std=s_sd,
                   mean_shift_sd=_ratio(row["sample_mean"] - s_mean, s_sd), sd_ratio=_ratio(row["sample_std"], s_sd),
                   reference_shift_sd=_ratio(row["reference_mean"] - s_mean, s_sd),
                   reference_sd_ratio=_ratio(row["reference_std"], s_sd))
        row["ks_source_statistic"], row["ks_source_pvalue"] = _ks(a, s)
        rows[name] = row
    return rows


def quality_report(samples: CohortStats, reference: CohortStats, standardizer=None, source: CohortStats | None = None,
                   source_missing: str | None = None) -> dict:
    """The cohort report (see module doc) as a JSON-ready dict (NaN -> null).

    Args:
        samples, reference: the synthetic and the training cohort on one ``grid_shape``.
        standardizer: ``LatentStandardizer`` of the EDM; latent distances are taken between
            standardised latents (raw latents when None), over the latent's dims only (not the scale
            dims the EDM may model after it).
        source: the source cohort's stats (None: the source columns are null).
        source_missing: why there is no ``source`` (reported under ``source.reason``).
    """
    if tuple(samples.grid_shape) != tuple(reference.grid_shape):
        raise ValueError(f"cohorts on different grids: {samples.grid_shape} vs {reference.grid_shape}")
    out: dict = {"num_samples": len(samples), "num_reference": len(reference),
                 "num_source": len(source) if source is not None else None,
                 "plausible_fraction": samples.plausible_fraction,
                 "reference_plausible_fraction": reference.plausible_fraction,
                 "source_plausible_fraction": source.plausible_fraction if source is not None else None,
                 "source": ({"available": True, "description": SOURCE_DESCRIPTION, "count": len(source)}
                            if source is not None else
                            {"available": False, "reason": source_missing or "no source-cohort statistics given"})}
    reasons: dict[str, int] = {}
    for problems in samples.problems:
        for reason in {re.sub(r"\d+", "N", p.split(": ", 1)[1] if p.startswith("slice ") else p) for p in problems}:
            reasons[reason] = reasons.get(reason, 0) + 1
    out["implausible_reasons"] = reasons
    out["features"] = feature_rows(samples, reference, source)

    lat_s = lat_r = None
    if samples.latents is not None and reference.latents is not None:
        lat_s, lat_r = samples.latents.cpu(), reference.latents.cpu()
        if standardizer is not None:
            head = standardizer.head(lat_s.shape[1])
            lat_s, lat_r = head.standardize(lat_s), head.standardize(lat_r)
    out["diversity"] = diversity(samples, lat_s)
    mem, flagged = memorisation(samples, reference, lat_s, lat_r)
    out["memorisation"] = mem
    out["copies_flagged"] = int(flagged.sum())
    out["copies_flagged_image"] = mem["image"]["flagged"]
    out["copies_flagged_latent"] = mem.get("latent", {}).get("flagged")
    return _clean(out)


def report_metrics(report: dict) -> dict[str, float]:
    """Scalar figures of a report (for MLflow / ``state.metrics``): counts, ``ks_<feature>`` (vs the
    reference), ``shift_sd_<feature>``, ``sd_ratio_<feature>``, ``ks_source_<feature>`` (vs the source,
    when present), ``diversity_<space>_<mean|min>``."""
    out = {k: report[k] for k in ("plausible_fraction", "copies_flagged", "copies_flagged_image", "copies_flagged_latent",
                                  "num_samples") if isinstance(report.get(k), (int, float))}
    for name, row in report.get("features", {}).items():
        for key, metric in (("ks_statistic", "ks"), ("mean_shift_sd", "shift_sd"), ("sd_ratio", "sd_ratio"),
                            ("ks_source_statistic", "ks_source")):
            if row.get(key) is not None:
                out[f"{metric}_{name}"] = row[key]
    for space, row in report.get("diversity", {}).items():
        for k, v in row.items():
            if v is not None:
                out[f"diversity_{space}_{k}"] = v
    return out


def write_report(output_dir: str | Path, samples: CohortStats, reference: CohortStats, standardizer=None,
                 extra: dict | None = None, source: CohortStats | None = None, source_missing: str | None = None) -> dict:
    """``report.png``, ``nearest.png`` and, last, ``report.json`` in ``output_dir``; returns the report.

    ``extra`` is merged into the report (it may not replace the computed sections)."""
    report = quality_report(samples, reference, standardizer, source, source_missing)
    report.update({k: v for k, v in _clean(dict(extra or {})).items() if k not in report})
    out = Path(output_dir)
    decoded = report.get("reference", {}).get("description", DECODED_DESCRIPTION) == DECODED_DESCRIPTION
    save_report_figure(out / "report.png", samples, reference, report, source,
                       "decoded training" if decoded else "reference")
    report["nearest"] = _clean(save_nearest_figure(out / NEAREST_FILE, report, samples, source, reference))
    write_json(out / "report.json", report)
    return report


def comparison_cohorts(models_dir: str | Path, record: dict, reference_datalist: str | None = None
                       ) -> tuple[CohortStats, dict, CohortStats | None, str | None]:
    """``(reference, its description {"description", "count"}, source or None, why the source is missing)``
    from the edm_synth ``models_dir`` (``record``: its generator.json); ``reference_datalist``: real
    pairs instead of the decoded reference (latent figures then use the stored training latents)."""
    stored = CohortStats.load(models_dir)
    if reference_datalist:
        reference = reference_from_datalist(reference_datalist, record["grid"], latents=stored.latents)
        what = f"real pairs of {reference_datalist} on the canonical grid, each at its own canonical voxel size"
    else:
        reference, what = stored, DECODED_DESCRIPTION
    source, missing = load_source_stats(models_dir, record)
    return reference, {"description": what, "count": len(reference)}, source, missing


# ------------------------------------------------------------------------------------- evaluate.yaml
class CohortEvaluator(BundleEngine):
    """Report of a synthetic cohort (its ``datalist.json``) against the source and the reference cohorts;
    one iteration per volume.

    Args:
        cohort: the synthetic datalist (its ``training`` entries, rejected ones excluded, are assessed;
            sampled latents are read from ``latents.json`` beside it when present).
        models_dir: the edm_synth models folder (grid, standardiser, source and reference stats).
        output_dir: where ``report.json``, ``report.png`` and ``nearest.png`` go.
        reference_datalist: real training pairs to compare with instead of the stored decoded
            reference (brought onto the canonical grid; latent-space figures then use the stored
            training latents).
    """

    def __init__(self, cohort: str, models_dir: str, output_dir: str, reference_datalist: str | None = None,
                 val_handlers=(), progress: bool = True):
        from lgesynth.data.datalist import load_datalist
        from lgesynth.edm import LatentStandardizer
        from lgesynth.synth.generator import load_generator_record

        super().__init__()
        self.cohort, self.models_dir, self.output_dir = str(cohort), str(models_dir), Path(output_dir)
        self.record = load_generator_record(models_dir)
        self.standardizer = LatentStandardizer.load(Path(models_dir) / self.record["files"]["standardizer"])
        self.reference, self.reference_info, self.source, self.source_missing = comparison_cohorts(
            models_dir, self.record, reference_datalist)
        self.entries = load_datalist(cohort, "training")
        self.samples = CohortStats(tuple(self.record["grid"]["shape"]), keep_slices=NEAREST_SAMPLES)
        lat_dir = Path(cohort).parent
        if (lat_dir / "latents.json").is_file():
            from lgesynth.inr2vec.latents import load_latents

            lat = load_latents(lat_dir)
            index = {sid: i for i, sid in enumerate(lat.ids)}
            if all(e["id"] in index for e in self.entries):
                self.samples.latents = lat.latents[[index[e["id"]] for e in self.entries]]
        self._bar = None
        if progress:
            from tqdm import tqdm

            self._bar = tqdm(total=len(self.entries), desc="edm_synth evaluate", unit="volume")
        self.attach_handlers(val_handlers, finish=self._finish)  # the handlers log what _finish writes

    def run_data(self) -> list[int]:
        """Every volume in one epoch; the report is written at its end."""
        return list(range(len(self.entries)))

    def run_params(self) -> dict:
        return {"cohort": self.cohort, "models_dir": self.models_dir, "volumes": len(self.entries),
                "reference": self.reference_info["description"], "source": self.source is not None}

    def _process(self, engine: Engine, index: int) -> dict:
        e = self.entries[index]
        image, affine = load_nifti(e["image"])
        label, _ = load_nifti(e["label"])
        row = self.samples.add(e["id"], image, label, spacing_from_affine(affine))
        if self._bar is not None:
            self._bar.update(1)
        return row

    def _finish(self, engine: Engine) -> None:
        report = write_report(self.output_dir, self.samples, self.reference, self.standardizer,
                              {"cohort": self.cohort, "reference": self.reference_info}, self.source, self.source_missing)
        engine.state.metrics = report_metrics(report)
        if self._bar is not None:
            self._bar.close()
