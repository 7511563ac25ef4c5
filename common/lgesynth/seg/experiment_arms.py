"""One arm of the scar_seg experiment: a (condition, seed) and its training ``output_dir`` on disk.

An arm's folder holds ``models/model_final.pt``, ``train_log.json``, ``config_train.json``,
``postprocess.json`` (the chosen ``min_scar_ml``), ``eval/metrics.csv`` (test metrics after the
clean-up) and, when the clean-up changes anything, ``eval_raw/metrics.csv`` (as predicted). The
properties say what is done, so that an experiment run again resumes instead of repeating work.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

CONDITIONS = ("baseline", "augmented")


@dataclass(frozen=True)
class Arm:
    """One (condition, seed) of the experiment; ``folder`` is its training ``output_dir``."""

    condition: str
    seed: int
    folder: Path

    @property
    def run_name(self) -> str:
        return f"{self.condition}_seed{self.seed}"

    @property
    def final_checkpoint(self) -> Path:
        return self.folder / "models" / "model_final.pt"

    @property
    def metrics_csv(self) -> Path:
        """Test metrics with the arm's post-processing (``min_scar_ml`` chosen on its validation cases)."""
        return self.folder / "eval" / "metrics.csv"

    @property
    def raw_metrics_csv(self) -> Path:
        """Test metrics as predicted: ``eval_raw/`` when the post-processing changes anything, else ``eval/``."""
        raw = self.folder / "eval_raw" / "metrics.csv"
        return raw if self.min_scar_ml() > 0 else self.metrics_csv

    @property
    def postprocess_json(self) -> Path:
        return self.folder / "postprocess.json"

    def min_scar_ml(self) -> float:
        return float(json.loads(self.postprocess_json.read_text())["min_scar_ml"]) if self.postprocess_json.exists() else 0.0

    def postprocess_chosen(self, min_scar_ml) -> bool:
        """``postprocess.json`` is newer than the final checkpoint and made by the same rule (auto / fixed)."""
        if not (self.postprocess_json.exists() and self.final_checkpoint.exists()):
            return False
        record = json.loads(self.postprocess_json.read_text())
        same_rule = record.get("fixed") is None if min_scar_ml == "auto" else record.get("fixed") == float(min_scar_ml)
        return same_rule and self.postprocess_json.stat().st_mtime >= self.final_checkpoint.stat().st_mtime

    def trained(self, epochs: int) -> bool:
        """The final checkpoint exists and the log reached ``epochs``, or the last epoch its time budget re-planned
        (``last_epoch``, :mod:`lgesynth.seg.time_budget`); MONAI also saves a "final" checkpoint when training
        raises, so the file alone does not mean finished."""
        entries = self.train_log() if self.final_checkpoint.exists() else []
        return bool(entries) and entries[-1]["epoch"] >= min(epochs, entries[-1].get("last_epoch") or epochs)

    def train_log(self) -> list[dict]:
        """The entries of ``train_log.json`` (:class:`lgesynth.seg.engine_utils.TrainLog`); ``[]`` without one."""
        log = self.folder / "train_log.json"
        return json.loads(log.read_text()) if log.exists() else []

    def trained_epochs(self) -> int:
        """Epochs in ``train_log.json`` (0 without one)."""
        entries = self.train_log()
        return int(entries[-1]["epoch"]) if entries else 0

    def evaluated(self, csv_path: Path | None = None) -> bool:
        """``metrics.csv`` (default ``eval/``) and its summary exist and are newer than the final checkpoint
        and than ``postprocess.json``."""
        csv_path = csv_path or self.metrics_csv
        summary = csv_path.with_name("metrics_summary.json")
        newer_than = [self.final_checkpoint] + ([self.postprocess_json] if self.postprocess_json.exists() else [])
        return (csv_path.exists() and summary.exists()
                and all(csv_path.stat().st_mtime >= p.stat().st_mtime for p in newer_than))

    def train_seconds(self) -> float:
        """Seconds of training iterations over all (resumed) sessions, from ``train_log.json``."""
        return float(sum(e.get("seconds") or 0.0 for e in self.train_log()))


def read_metrics_csv(path: str | Path) -> dict[str, dict[str, float]]:
    """``{case id: {metric: value}}`` from an evaluation's ``metrics.csv``."""
    with open(path, newline="") as f:
        return {row.pop("id"): {k: float(v) for k, v in row.items()} for row in csv.DictReader(f)}
