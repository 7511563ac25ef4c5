"""Quality report of a synthetic cohort against the training cohort.

Per volume: plausibility and features (``synth.features``).

Per cohort (:func:`quality_report`):

- **distribution match**: per feature, the two-sample Kolmogorov-Smirnov statistic and p-value
  (``scipy.stats.ks_2samp``) of synthetic vs training values, with their means and SDs; histograms
  side by side in ``report.png`` (:func:`save_report_figure`).
- **diversity**: pairwise distances between synthetic samples, in latent space (L2 of standardised
  latents) and in image space (Dice distance ``1 - Dice`` of the myocardium masks); mean and min.
- **memorisation**: each sample's nearest training subject in latent space and in image space. Rule
  (relative, as Carlini et al. 2023 judge extraction from diffusion models): a sample *sits on* a
  training subject in a space when its distance to the nearest one is below ``COPY_RATIO`` (1/3) of
  its mean distance to its ``COPY_NEIGHBOURS`` (5) nearest; it is flagged as a **copy**
  (``copies_flagged``) when it sits on the same training subject in both spaces (the space the EDM
  models and what one sees). The counts per space are reported too (``copies_flagged_latent``,
  ``copies_flagged_image``), beside the earlier absolute rule's counts for reference (NN distance
  below the 5th percentile of the train-to-train NN distances, ``flagged_absolute``). The absolute
  rule flags *typical* samples: with an encoder that spreads its training latents apart, it flagged
  21 % of the held-out *real* phantom subjects (edm_synth docs); a sample near the middle of the
  cohort is close to many subjects, a copy is close to one.

:class:`CohortStats` accumulates the per-volume results of a cohort (features, plausibility, myocardium
masks, latents) with bounded memory; the training cohort's is stored in the edm_synth bundle
(``reference.json`` + ``reference.safetensors``) so a report needs no training data.
:class:`CohortEvaluator` is the ``evaluate.yaml`` engine.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events

from lgesynth.io import atomic_path, load_nifti, spacing_from_affine, write_json
from lgesynth.synth.features import FEATURES, mean_or_nan, plausibility_problems, resize_mask, volume_features

COPY_RATIO = 1 / 3
COPY_NEIGHBOURS = 5
COPY_PERCENTILE = 5.0  # the earlier absolute rule, reported for reference


# ------------------------------------------------------------------------------------- per cohort
@dataclass
class CohortStats:
    """Per-volume results of a cohort: ``ids``, ``features`` and ``problems`` per volume, the myocardium
    masks flattened on ``grid_shape`` (``masks (n, X*Y*Z)`` bool) and optionally ``latents (n, dim)``."""

    grid_shape: tuple[int, int, int]
    ids: list[str] = field(default_factory=list)
    features: list[dict] = field(default_factory=list)
    problems: list[list[str]] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    latents: torch.Tensor | None = None

    def add(self, sid: str, image: np.ndarray | None, label: np.ndarray, spacing_mm, axis: int = 2) -> dict:
        """Measure one volume; returns its record (``id``, features, ``plausible``, ``problems``)."""
        label = np.asarray(label)
        myo = np.isin(label, (1, 2))
        feats = volume_features(image, label, spacing_mm, axis)
        problems = plausibility_problems(myo, label == 2, axis, spacing_mm)
        self.ids.append(str(sid))
        self.features.append(feats)
        self.problems.append(problems)
        self.masks.append(resize_mask(myo, self.grid_shape).reshape(-1))
        return {"id": str(sid), **feats, "plausible": not problems, "problems": problems}

    def __len__(self) -> int:
        return len(self.ids)

    def values(self, name: str) -> np.ndarray:
        """Finite values of one feature, (k,) float64."""
        v = np.asarray([f[name] for f in self.features], dtype=np.float64)
        return v[np.isfinite(v)]

    def mask_matrix(self) -> np.ndarray:
        return np.stack(self.masks) if self.masks else np.zeros((0, int(np.prod(self.grid_shape))), dtype=bool)

    @property
    def plausible_fraction(self) -> float:
        return float(np.mean([not p for p in self.problems])) if self.problems else float("nan")

    def save(self, directory: str | Path, name: str = "reference") -> None:
        """``name.safetensors`` (packed masks, latents) then ``name.json`` (ids, features, problems)."""
        from safetensors.torch import save_file

        d = Path(directory)
        tensors = {"masks": torch.from_numpy(np.packbits(self.mask_matrix(), axis=1))}
        if self.latents is not None:
            tensors["latents"] = self.latents.detach().to(torch.float32).contiguous().cpu()
        with atomic_path(d / f"{name}.safetensors") as tmp:
            save_file(tensors, str(tmp))
        write_json(d / f"{name}.json", {"grid_shape": list(self.grid_shape), "ids": self.ids,
                                        "features": [{k: (None if v != v else v) for k, v in f.items()} for f in self.features],
                                        "problems": self.problems})

    @classmethod
    def load(cls, directory: str | Path, name: str = "reference") -> "CohortStats":
        from safetensors.torch import load_file

        from lgesynth.errors import DataError

        d = Path(directory)
        if not (d / f"{name}.json").is_file():
            raise DataError(d / f"{name}.json", "training-cohort statistics not found; the edm_synth train run writes "
                            "them into models_dir at its end (or pass a reference datalist)")
        doc = json.loads((d / f"{name}.json").read_text())
        tensors = load_file(str(d / f"{name}.safetensors"))
        n, P = len(doc["ids"]), int(np.prod(doc["grid_shape"]))
        masks = np.unpackbits(tensors["masks"].numpy(), axis=1, count=P).astype(bool) if n else np.zeros((0, P), bool)
        feats = [{k: (float("nan") if v is None else v) for k, v in f.items()} for f in doc["features"]]
        return cls(tuple(doc["grid_shape"]), list(doc["ids"]), feats, [list(p) for p in doc["problems"]], list(masks),
                   tensors.get("latents"))


def latent_distances(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """L2 distances (n, m) between rows of ``a`` (n, dim) and ``b`` (m, dim), float64."""
    return torch.cdist(a.to(torch.float64), b.to(torch.float64)).numpy()


def dice_distances(a: np.ndarray, b: np.ndarray, chunk: int = 256) -> np.ndarray:
    """``1 - Dice`` (n, m) between the flattened masks ``a`` (n, P) and ``b`` (m, P); 0 for two empty masks."""
    ta, tb = torch.from_numpy(np.asarray(a, dtype=np.float32)), torch.from_numpy(np.asarray(b, dtype=np.float32))
    inter = torch.cat([ta[s: s + chunk] @ tb.T for s in range(0, ta.shape[0], chunk)]) if len(ta) else torch.zeros(0, len(tb))
    size = ta.sum(1, keepdim=True) + tb.sum(1)[None]
    dice = torch.where(size > 0, 2 * inter / size.clamp_min(1), torch.ones_like(inter))
    return (1 - dice).double().numpy()


def _pairwise_summary(d: np.ndarray) -> dict:
    iu = np.triu_indices(d.shape[0], k=1)
    v = d[iu]
    return {"mean": float(v.mean()), "min": float(v.min())} if v.size else {"mean": float("nan"), "min": float("nan")}


def nearest_neighbours(d_st: np.ndarray, d_tt: np.ndarray, ratio: float = COPY_RATIO, k: int = COPY_NEIGHBOURS,
                       percentile: float = COPY_PERCENTILE) -> dict:
    """Memorisation in one space from sample-to-train ``d_st`` (n, m) and train-to-train ``d_tt`` (m, m).

    ``close``: the nearest training subject is nearer than ``ratio`` x the mean distance to the ``k``
    nearest (all m when fewer); ``close_absolute``: NN distance below the ``percentile`` of the
    train-to-train NN distances (leave one out)."""
    d_tt = d_tt.copy()
    np.fill_diagonal(d_tt, np.inf)
    nn_tt = d_tt.min(axis=1) if d_tt.shape[0] > 1 else np.zeros(0)
    threshold = float(np.percentile(nn_tt, percentile)) if nn_tt.size else float("nan")
    n, m = d_st.shape
    if m:
        near = np.sort(d_st, axis=1)[:, : min(k, m)]
        nn, rel = near[:, 0], near[:, 0] / np.maximum(near.mean(axis=1), 1e-12)
    else:
        nn, rel = np.full(n, np.nan), np.full(n, np.nan)
    close = rel < ratio if m > 1 else np.zeros(n, dtype=bool)
    close_abs = nn < threshold if np.isfinite(threshold) else np.zeros(n, dtype=bool)
    return {"threshold": threshold, "nn_distance": nn, "nn_ratio": rel, "nn_index": d_st.argmin(axis=1) if m else None,
            "close": close, "close_absolute": close_abs,
            "train_nn_median": float(np.median(nn_tt)) if nn_tt.size else float("nan")}


def _memorisation_summary(nb: dict, n: int) -> dict:
    return {"flagged": int(nb["close"].sum()), "nn_median": float(np.median(nb["nn_distance"])) if n else float("nan"),
            "nn_ratio_min": float(np.min(nb["nn_ratio"])) if n else float("nan"),
            "nn_ratio_median": float(np.median(nb["nn_ratio"])) if n else float("nan"),
            "train_nn_median": nb["train_nn_median"], "threshold_absolute": nb["threshold"],
            "flagged_absolute": int(nb["close_absolute"].sum())}


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


def quality_report(samples: CohortStats, reference: CohortStats, standardizer=None) -> dict:
    """The cohort report (see module doc) as a JSON-ready dict (NaN -> null).

    Args:
        samples, reference: the synthetic and the training cohort on one ``grid_shape``.
        standardizer: ``LatentStandardizer`` of the EDM; latent distances are taken between
            standardised latents (raw latents when None), over the latent's dims only (not the scale
            dims the EDM may model after it).
    """
    from scipy.stats import ks_2samp

    if tuple(samples.grid_shape) != tuple(reference.grid_shape):
        raise ValueError(f"cohorts on different grids: {samples.grid_shape} vs {reference.grid_shape}")
    out: dict = {"num_samples": len(samples), "num_reference": len(reference),
                 "plausible_fraction": samples.plausible_fraction,
                 "reference_plausible_fraction": reference.plausible_fraction}
    reasons: dict[str, int] = {}
    for problems in samples.problems:
        for reason in {re.sub(r"\d+", "N", p.split(": ", 1)[1] if p.startswith("slice ") else p) for p in problems}:
            reasons[reason] = reasons.get(reason, 0) + 1
    out["implausible_reasons"] = reasons

    features = {}
    for name in FEATURES:
        a, b = samples.values(name), reference.values(name)
        row = {"n_sample": int(a.size), "n_reference": int(b.size),
               "sample_mean": mean_or_nan(a), "sample_std": float(a.std(ddof=1)) if a.size > 1 else float("nan"),
               "reference_mean": mean_or_nan(b), "reference_std": float(b.std(ddof=1)) if b.size > 1 else float("nan"),
               "ks_statistic": float("nan"), "ks_pvalue": float("nan")}
        if a.size and b.size:
            ks = ks_2samp(a, b)
            row["ks_statistic"], row["ks_pvalue"] = float(ks.statistic), float(ks.pvalue)
        features[name] = row
    out["features"] = features

    lat_s = lat_r = None
    if samples.latents is not None and reference.latents is not None:
        lat_s, lat_r = samples.latents.cpu(), reference.latents.cpu()
        if standardizer is not None:
            head = standardizer.head(lat_s.shape[1])
            lat_s, lat_r = head.standardize(lat_s), head.standardize(lat_r)
    ms, mr = samples.mask_matrix(), reference.mask_matrix()
    diversity = {"dice_distance": _pairwise_summary(dice_distances(ms, ms))}
    if lat_s is not None:
        diversity["latent_distance"] = _pairwise_summary(latent_distances(lat_s, lat_s))
    out["diversity"] = diversity

    image = nearest_neighbours(dice_distances(ms, mr), dice_distances(mr, mr))
    mem = {"rule": f"copy = nearer to its nearest training subject than {COPY_RATIO:.3g} x the mean distance to its "
                   f"{COPY_NEIGHBOURS} nearest, in latent space (L2, standardised) and in image space (1 - Dice of "
                   "myocardium masks), with the same nearest subject in both",
           "rule_absolute": f"NN distance below the {COPY_PERCENTILE:g}th percentile of train-to-train NN distances",
           "image": _memorisation_summary(image, len(samples))}
    flagged = image["close"]
    per_sample = [{"id": sid, "nn_image": reference.ids[int(j)] if image["nn_index"] is not None else None,
                   "nn_image_distance": float(d), "nn_image_ratio": float(r)} for sid, j, d, r in
                  zip(samples.ids, image["nn_index"] if image["nn_index"] is not None else [0] * len(samples),
                      image["nn_distance"], image["nn_ratio"])]
    if lat_s is not None:
        latent = nearest_neighbours(latent_distances(lat_s, lat_r), latent_distances(lat_r, lat_r))
        mem["latent"] = _memorisation_summary(latent, len(samples))
        same = (latent["nn_index"] == image["nn_index"]) if image["nn_index"] is not None else np.zeros(len(samples), bool)
        flagged = flagged & latent["close"] & same
        mem["flagged_absolute"] = int((image["close_absolute"] & latent["close_absolute"]).sum())
        for row, j, d, r in zip(per_sample, latent["nn_index"], latent["nn_distance"], latent["nn_ratio"]):
            row.update(nn_latent=reference.ids[int(j)], nn_latent_distance=float(d), nn_latent_ratio=float(r))
    mem["copies"] = [s for s, f in zip(samples.ids, flagged) if f]
    mem["per_sample"] = per_sample
    out["memorisation"] = mem
    out["copies_flagged"] = int(flagged.sum())
    out["copies_flagged_image"] = mem["image"]["flagged"]
    out["copies_flagged_latent"] = mem.get("latent", {}).get("flagged")
    return _clean(out)


def report_metrics(report: dict) -> dict[str, float]:
    """Scalar figures of a report (for MLflow / ``state.metrics``)."""
    out = {k: report[k] for k in ("plausible_fraction", "copies_flagged", "copies_flagged_image", "copies_flagged_latent",
                                  "num_samples") if isinstance(report.get(k), (int, float))}
    for name, row in report.get("features", {}).items():
        if row.get("ks_statistic") is not None:
            out[f"ks_{name}"] = row["ks_statistic"]
    for space, row in report.get("diversity", {}).items():
        for k, v in row.items():
            if v is not None:
                out[f"diversity_{space}_{k}"] = v
    return out


def save_report_figure(path: str | Path, samples: CohortStats, reference: CohortStats, report: dict | None = None) -> Path:
    """Histograms of every feature, synthetic vs training, side by side (one panel per feature), atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.2 * len(FEATURES), 2.8))
    FigureCanvasAgg(fig)
    for i, name in enumerate(FEATURES):
        ax = fig.add_subplot(1, len(FEATURES), i + 1)
        a, b = samples.values(name), reference.values(name)
        both = np.concatenate([a, b])
        if both.size:
            lo, hi = float(both.min()), float(both.max())
            bins = np.linspace(lo, hi if hi > lo else lo + 1e-6, 16)
            ax.hist(b, bins=bins, alpha=0.5, density=True, label=f"training (n={b.size})", color="tab:blue")
            ax.hist(a, bins=bins, alpha=0.5, density=True, label=f"synthetic (n={a.size})", color="tab:orange")
        title = name
        ks = (report or {}).get("features", {}).get(name, {}).get("ks_statistic")
        if ks is not None:
            title += f"\nKS {ks:.2f}"
        ax.set_title(title, fontsize=8)
        ax.tick_params(labelsize=7)
        if i == 0:
            ax.legend(fontsize=6)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90, metadata={"Software": None})
    return Path(path)


def write_report(output_dir: str | Path, samples: CohortStats, reference: CohortStats, standardizer=None,
                 extra: dict | None = None) -> dict:
    """``report.json`` and ``report.png`` in ``output_dir``; returns the report."""
    report = {**quality_report(samples, reference, standardizer), **_clean(dict(extra or {}))}
    save_report_figure(Path(output_dir) / "report.png", samples, reference, report)
    write_json(Path(output_dir) / "report.json", report)
    return report


# ------------------------------------------------------------------------------------- evaluate.yaml
def reference_from_datalist(datalist: str | Path, grid: dict, sections=("training",), latents: torch.Tensor | None = None) -> CohortStats:
    """Training cohort stats from real image/label pairs, brought onto the generator's canonical grid."""
    from lgesynth.data.canonical import CanonicalGrid, to_canonical
    from lgesynth.data.datalist import load_datalist

    g = CanonicalGrid.from_dict(grid)
    stats = CohortStats(g.shape, latents=latents)
    for e in load_datalist(datalist, sections):
        case = to_canonical(e.get("image"), e["label"], g)
        stats.add(e["id"], case.image, case.label, spacing_from_affine(case.affine))
    return stats


class CohortEvaluator(Engine):
    """Report of a synthetic cohort (its ``datalist.json``) against the training cohort; one iteration per volume.

    Args:
        cohort: the synthetic datalist (its ``training`` entries, rejected ones excluded, are assessed;
            sampled latents are read from ``latents.json`` beside it when present).
        models_dir: the edm_synth models folder (grid, standardiser, training-cohort stats).
        output_dir: where ``report.json`` and ``report.png`` go.
        reference_datalist: real training pairs to compare with instead of the stored stats (brought
            onto the canonical grid; latent-space figures then use the stored training latents).
    """

    def __init__(self, cohort: str, models_dir: str, output_dir: str, reference_datalist: str | None = None,
                 val_handlers=(), progress: bool = True):
        from lgesynth.data.datalist import load_datalist
        from lgesynth.edm import LatentStandardizer
        from lgesynth.synth.generator import load_generator_record

        super().__init__(self._process)
        self.cohort, self.models_dir, self.output_dir = str(cohort), str(models_dir), Path(output_dir)
        self.record = load_generator_record(models_dir)
        self.standardizer = LatentStandardizer.load(Path(models_dir) / self.record["files"]["standardizer"])
        stored = CohortStats.load(models_dir)
        self.reference = (reference_from_datalist(reference_datalist, self.record["grid"], latents=stored.latents)
                          if reference_datalist else stored)
        self.reference_source = str(reference_datalist) if reference_datalist else "training-cohort stats in models_dir"
        self.entries = load_datalist(cohort, "training")
        self.samples = CohortStats(tuple(self.record["grid"]["shape"]))
        lat_dir = Path(cohort).parent
        if (lat_dir / "latents.json").is_file():
            from lgesynth.inr2vec.latents import load_latents

            lat = load_latents(lat_dir)
            index = {sid: i for i, sid in enumerate(lat.ids)}
            if all(e["id"] in index for e in self.entries):
                self.samples.latents = lat.latents[[index[e["id"]] for e in self.entries]]
        self.add_event_handler(Events.EPOCH_COMPLETED, self._finish)  # before the handlers: they log its metrics
        for handler in val_handlers or ():
            handler.attach(self)
        self._bar = None
        if progress:
            from tqdm import tqdm

            self._bar = tqdm(total=len(self.entries), desc="edm_synth evaluate", unit="volume")

    def run_params(self) -> dict:
        return {"cohort": self.cohort, "models_dir": self.models_dir, "volumes": len(self.entries),
                "reference": self.reference_source}

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
                              {"cohort": self.cohort, "reference": {"count": len(self.reference)}})
        engine.state.metrics = report_metrics(report)
        if self._bar is not None:
            self._bar.close()

    def run_all(self):
        return self.run(list(range(len(self.entries))), max_epochs=1)
