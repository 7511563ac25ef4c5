"""The scar_seg evaluation report: regional metrics per test case, their summary, a picture.

:class:`RegionalMetricsReport` is an ignite handler for the evaluate config's evaluator. Per case it
takes the prediction already mapped back to the image's own grid (``Invertd``), reads the case's
ground-truth label file, and computes :func:`lgesynth.seg.metrics.regional_metrics` with the label's
spacing. When the evaluator's epoch completes it writes, atomically:

- ``metrics.csv``: one row per case, ``id`` then every regional key (Dice, HD95 mm, burden, slices
  per third);
- ``metrics_summary.json``: per key the NaN-aware mean (``np.nanmean``), the number of cases and how
  many were NaN (Dice is NaN when both prediction and truth are empty, e.g. the scar of a scar-free
  heart predicted without scar; HD95 when exactly one of them is; a region is NaN when the stack has
  < 3 myocardial slices);
- ``predictions.png``: the first ``n_png`` cases, one row each: the mid-myocardial slice of the image,
  with the ground truth's outlines, with the prediction's (myocardium lime, scar yellow);

and puts ``test_<key>`` (finite means) into ``engine.state.metrics``, so an MLflow handler attached
after it (``--tracking mlflow``) logs them.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from lgesynth.data.labels import myocardium_mask, scar_mask
from lgesynth.io import atomic_path, load_nifti, spacing_from_affine, write_csv, write_json
from lgesynth.seg.metrics import regional_metrics
from lgesynth.seg.regions import myocardial_slices, resolve_axis

MYOCARDIUM_COLOR, SCAR_COLOR = "lime", "yellow"


def summarise(rows: list[dict]) -> dict:
    """``{"n_cases", "mean": {key: nanmean}, "n_nan": {key: count}}`` over the numeric keys of ``rows``."""
    keys = [k for k in rows[0] if k != "id"] if rows else []
    mean, n_nan = {}, {}
    for key in keys:
        values = np.array([float(r[key]) for r in rows], dtype=np.float64)
        n_nan[key] = int(np.isnan(values).sum())
        mean[key] = float(np.nanmean(values)) if n_nan[key] < len(values) else float("nan")
    return {"n_cases": len(rows), "aggregation": "mean over cases ignoring NaN (np.nanmean); n_nan counts them",
            "mean": mean, "n_nan": n_nan}


def write_metrics_csv(path: str | Path, rows: list[dict]) -> Path:
    """``id`` and every metric key, one row per case, atomically (full float precision)."""
    return write_csv(path, rows, float_format=None)


def mid_myocardial_slice(label: np.ndarray, axis: int) -> int:
    """The middle of the slices along ``axis`` that hold myocardium (the middle slice if none do)."""
    slices = myocardial_slices(label, axis)
    return int(slices[len(slices) // 2]) if len(slices) else label.shape[axis] // 2


def save_predictions_png(path: str | Path, cases: list[dict]) -> Path:
    """One row per case of ``{"id", "image", "label", "pred"}`` 2D slices (x, y): the image, with the
    truth's and with the prediction's outlines. Drawn with x to the right and y up."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(1, len(cases))
    fig, axes = plt.subplots(rows, 3, figsize=(7.5, 2.6 * rows), squeeze=False)
    for row, case in zip(axes, cases):
        lo, hi = np.percentile(case["image"], (0.5, 99.5))
        for ax, (title, outline) in zip(row, (("image", None), ("ground truth", case["label"]), ("prediction", case["pred"]))):
            ax.imshow(case["image"].T, cmap="gray", origin="lower", vmin=lo, vmax=hi)
            if outline is not None:
                for mask, color in ((myocardium_mask(outline), MYOCARDIUM_COLOR), (scar_mask(outline), SCAR_COLOR)):
                    if mask.any():
                        ax.contour(mask.T.astype(float), levels=[0.5], colors=color, linewidths=0.8, origin="lower")
            ax.set_title(f"{case['id']}: {title}" if title == "image" else title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return Path(path)


class RegionalMetricsReport:
    """Ignite handler writing the evaluation report (module doc) into ``output_dir``.

    Args:
        output_dir: folder for ``metrics.csv``, ``metrics_summary.json``, ``predictions.png``.
        n_png: how many cases (the first ones) go into the PNG.
        id_key, label_key: batch keys holding the case id and the ground-truth label's path.
        pred_key: output key of the prediction, a label map (1, *spatial) on the image's own grid.
        prefix: prefix of the summary keys put into ``engine.state.metrics``.
    """

    def __init__(self, output_dir: str | Path, n_png: int = 4, id_key: str = "id", label_key: str = "label_file",
                 pred_key: str = "pred", prefix: str = "test_"):
        self.output_dir = Path(output_dir)
        self.n_png, self.id_key, self.label_key, self.pred_key, self.prefix = n_png, id_key, label_key, pred_key, prefix
        self.rows: list[dict] = []
        self.panels: list[dict] = []
        self.summary: dict = {}

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def reset(self, engine=None) -> None:
        self.rows, self.panels = [], []

    def iteration_completed(self, engine) -> None:
        batch, output = engine.state.batch, engine.state.output
        for item, out in zip(batch, output):
            self.add_case(str(item[self.id_key]), np.asarray(out[self.pred_key].detach().cpu())[0], item[self.label_key],
                          item.get("image"))

    def add_case(self, case_id: str, pred: np.ndarray, label_path: str | Path, image=None) -> dict:
        """Metrics of one case; ``pred`` (x, y, z) on the label file's grid."""
        label, affine = load_nifti(label_path)
        assert pred.shape == label.shape, f"{case_id}: prediction {pred.shape} is not on the label's grid {label.shape}"
        spacing = spacing_from_affine(affine)
        pred = np.rint(pred).astype(np.uint8)
        row = {"id": case_id, **regional_metrics(pred, label, spacing)}
        self.rows.append(row)
        if len(self.panels) < self.n_png:
            axis = resolve_axis(label.shape, spacing)
            k = mid_myocardial_slice(label, axis)
            image_path = getattr(image, "meta", {}).get("filename_or_obj") if image is not None else None
            volume = load_nifti(image_path)[0] if image_path else np.zeros(label.shape, np.float32)
            take = lambda v: np.take(np.asarray(v), k, axis=axis)  # noqa: E731
            self.panels.append({"id": case_id, "image": take(volume).astype(np.float32), "label": take(label), "pred": take(pred)})
        return row

    def epoch_completed(self, engine) -> None:
        self.write()
        for key, value in self.summary["mean"].items():
            if math.isfinite(value):
                engine.state.metrics[f"{self.prefix}{key}"] = value

    def write(self) -> dict:
        """Write the three files; returns the summary."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        write_metrics_csv(self.output_dir / "metrics.csv", self.rows)
        self.summary = summarise(self.rows)
        write_json(self.output_dir / "metrics_summary.json", self.summary)
        save_predictions_png(self.output_dir / "predictions.png", self.panels)
        return self.summary
