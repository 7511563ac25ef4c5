"""InrBankEvaluator: fit quality of every INR of a bank (the inr_fit bundle's ``evaluator``).

Per subject, against its canonical volume and label (re-made from the source files the bank
records, with the bank's grid): intensity PSNR (dB, [-1, 1] scale), SSIM (MONAI ``SSIMMetric``,
3D, data range 2), Dice (:mod:`lgesynth.dice`: NaN when neither mask has the structure) of the decoded
myocardium and scar masks. Writes ``fit_metrics.csv`` (``id, section, psnr, ssim, dice_myo, dice_scar,
steps, reached_target``) and ``fit_summary.json`` (mean, min, percentiles over the defined values, how many were
undefined, fraction meeting the targets, and how many INRs reached the fit's targets, ``reached_target``,
fell short of them, ``fell_short``, or are unknown, ``reached_target_unknown``) and puts the summary in
``engine.state.metrics`` so MONAI's MLFlowHandler (``--tracking mlflow``) logs it.

``reached_target`` is the fit's own verdict recorded in the bank (its full-grid metrics against the targets
of the fit config when it stopped; empty in the CSV for a bank that did not record it); ``fraction_meeting_targets``
is this evaluation's, against the ``targets`` given here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine

from lgesynth.data.canonical import CanonicalGrid
from lgesynth.data.canonical_case import to_canonical
from lgesynth.data.canonical_coords import canonical_coords
from lgesynth.dice import dice
from lgesynth.engines.base import BundleEngine
from lgesynth.inr.bank import load_bank, reached_target
from lgesynth.inr.export import bank_z_extent
from lgesynth.inr.render import render_volume
from lgesynth.io import write_csv, write_json

COLUMNS = ("id", "section", "psnr", "ssim", "dice_myo", "dice_scar", "steps", "reached_target")


def meets_targets(row: dict, targets: dict) -> bool:
    """Every ``targets`` value reached or undefined (NaN); the scar target only for a subject with scar
    (``row["has_scar"]``), as the fit's stop (``inr.fit``)."""
    return all(not np.isfinite(row[k]) or row[k] >= t for k, t in targets.items()
               if not (k == "dice_scar" and not row.get("has_scar", True)))


def summarise(rows: list[dict], targets: dict | None = None) -> dict:
    """Distribution of each metric over its finite values (``_n`` of them, ``_undefined`` NaN), the
    fraction of subjects meeting ``targets`` (:func:`meets_targets`) and, for rows with ``reached_target``
    (the fit's verdict: True, False or None), the counts ``reached_target``, ``fell_short`` and
    ``reached_target_unknown``."""
    out = {"subjects": len(rows)}
    if rows and all("reached_target" in r for r in rows):
        flags = [r["reached_target"] for r in rows]
        out.update(reached_target=sum(f is True for f in flags), fell_short=sum(f is False for f in flags),
                   reached_target_unknown=sum(f is None for f in flags))
    for key in ("psnr", "ssim", "dice_myo", "dice_scar"):
        v = np.array([r[key] for r in rows], dtype=np.float64)
        out[f"{key}_undefined"] = int(np.isnan(v).sum())
        v = v[np.isfinite(v)]
        if v.size:
            out.update({f"{key}_mean": float(v.mean()), f"{key}_min": float(v.min()), f"{key}_p10": float(np.percentile(v, 10)),
                        f"{key}_median": float(np.median(v)), f"{key}_n": int(v.size)})
    if targets:
        ok = [meets_targets(r, targets) for r in rows]
        out["fraction_meeting_targets"] = float(np.mean(ok)) if ok else float("nan")
    return out


def ssim_3d(a: np.ndarray, b: np.ndarray, data_range: float = 2.0) -> float:
    """MONAI's SSIM of two (X, Y, Z) volumes; 7-voxel window, smaller (odd) on thin axes."""
    from monai.metrics import SSIMMetric

    win = min(7, min(a.shape) if min(a.shape) % 2 else min(a.shape) - 1)
    metric = SSIMMetric(spatial_dims=3, data_range=data_range, win_size=max(win, 1))
    return float(metric(torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None]).item())


class InrBankEvaluator(BundleEngine):
    """Evaluate every subject of the bank in ``bank_dir``; one iteration per subject.

    Args:
        bank_dir: folder with ``inr_bank.{json,safetensors}``.
        output_dir: where the CSV and JSON go (default ``bank_dir``).
        targets: e.g. ``{"psnr": 30, "dice_myo": 0.95, "dice_scar": 0.90}`` for the summary.
        val_handlers: handlers to attach (``--tracking mlflow`` appends one to ``handlers``).
    """

    def __init__(self, bank_dir: str, output_dir: str | None = None, targets: dict | None = None,
                 device: str | torch.device = "cpu", val_handlers=(), progress: bool = True):
        super().__init__()
        self.bank_dir = Path(bank_dir)
        self.output_dir = Path(output_dir) if output_dir else self.bank_dir
        self.targets, self.device = dict(targets or {}), torch.device(device)
        self.bank = load_bank(self.bank_dir)
        self.grid = CanonicalGrid.from_record(self.bank.fit.get("grid"))
        self.rows: list[dict] = []
        self._bar = None
        if progress:
            from tqdm import tqdm

            self._bar = tqdm(total=len(self.bank), desc="inr_fit evaluate", unit="subject")
        self.attach_handlers(val_handlers, finish=self._finish)  # MLFlowHandler's epoch log sees the summary

    def run_data(self) -> list[int]:
        """All subjects in one epoch; the CSV, JSON and metrics are written at its end."""
        return list(range(len(self.bank)))

    def _process(self, engine: Engine, index: int) -> list[dict]:
        subject = self.bank.subjects[index]
        case = to_canonical(subject["source"]["image"], subject["source"]["label"], self.grid)
        shape = tuple(case.label.shape)
        image, label = render_volume(self.bank.params(index), canonical_coords(shape, bank_z_extent(self.bank)), shape, self.bank.spec)
        mse = float(np.mean((image - case.image) ** 2))
        ssim = ssim_3d(image, case.image)
        row = {"id": subject["id"], "section": subject["source"].get("section", ""), "psnr": 10 * np.log10(4 / max(mse, 1e-12)),
               "ssim": ssim, "dice_myo": dice(label > 0, case.label > 0), "dice_scar": dice(label == 2, case.label == 2),
               "has_scar": bool((case.label == 2).any()), "steps": subject.get("steps"),
               "reached_target": reached_target(subject)}
        self.rows.append(row)
        if self._bar is not None:
            self._bar.update(1)
        return [dict(row, loss=float("nan"))]

    def write(self) -> dict:
        """Write the CSV and summary JSON atomically; returns the summary."""
        write_csv(self.output_dir / "fit_metrics.csv", self.rows, COLUMNS)
        summary = summarise(self.rows, self.targets)
        write_json(self.output_dir / "fit_summary.json", summary)
        return summary

    def _finish(self, engine: Engine) -> None:
        """Write the files and expose the summary as ``engine.state.metrics``."""
        summary = self.write()
        engine.state.metrics = {k: v for k, v in summary.items() if isinstance(v, (int, float)) and np.isfinite(v)}
        if self._bar is not None:
            self._bar.close()
