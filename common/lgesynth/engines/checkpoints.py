"""Resuming a killed training run from its newest epoch checkpoint, for every bundle's train.yaml.

- :func:`latest_checkpoint`: the newest ``checkpoint_epoch=N.pt`` of a folder.
- :class:`TrainerCheckpointSaver`: MONAI's ``CheckpointSaver`` that also saves the trainer's own state
  (epoch, iteration) and keeps only the newest epoch checkpoint across resumed processes.
- :class:`ResumeCheckpointLoader`: MONAI's ``CheckpointLoader`` that loads that checkpoint when the
  trainer starts.
- :class:`BestMetricState`, :class:`BestModelSaver`: the validator's best score travels in the trainer's
  checkpoint, and ``model_best.pt`` is written when MONAI's workflow records a new best, so a resumed run's
  first validation replaces ``model_best.pt`` only when it beats the best before the kill.

A config cannot reference ``train#trainer`` from its own handler list (a cycle), so the saver and the
loader add the engine they are attached to as ``"trainer"``.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from monai.handlers import CheckpointLoader, CheckpointSaver

from lgesynth.io import atomic_path

CHECKPOINT_PATTERN = re.compile(r"checkpoint_epoch=(\d+)\.pt$")


def latest_checkpoint(folder: str | Path) -> str:
    """Path of the newest ``checkpoint_epoch=N.pt`` in ``folder``; ``""`` when there is none."""
    folder = Path(folder)
    found = [(int(m.group(1)), p) for p in folder.glob("checkpoint_epoch=*.pt") if (m := CHECKPOINT_PATTERN.search(p.name))]
    return str(max(found)[1]) if found else ""


class TrainerCheckpointSaver(CheckpointSaver):
    """MONAI ``CheckpointSaver`` that also saves the engine it is attached to, as ``"trainer"``, and
    after each interval checkpoint deletes older ``checkpoint_epoch=N.pt`` (ignite's ``n_saved`` only
    knows the files of its own process, not those of the run it resumed)."""

    def attach(self, engine) -> None:
        self.save_dict["trainer"] = engine  # the Checkpoint objects hold this same dict
        super().attach(engine)

    def interval_completed(self, engine) -> None:
        super().interval_completed(engine)
        newest = latest_checkpoint(self.save_dir)
        for path in Path(self.save_dir).glob("checkpoint_epoch=*.pt"):
            if str(path) != newest and CHECKPOINT_PATTERN.search(path.name):
                path.unlink(missing_ok=True)


class BestMetricState:
    """The validator's best key metric so far and its epoch (MONAI's ``engine.state.best_metric`` and
    ``best_metric_epoch``, which ignite's engine checkpoint does not carry) as a checkpointable object: in the
    trainer's save_dict and load_dict, a resumed run compares its validations with the best of the whole run,
    not of its own process."""

    def __init__(self, validator):
        self.validator = validator

    def state_dict(self) -> dict:
        state = self.validator.state
        return {"best_metric": float(state.best_metric), "best_metric_epoch": int(state.best_metric_epoch)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.validator.state.best_metric = float(state_dict["best_metric"])
        self.validator.state.best_metric_epoch = int(state_dict["best_metric_epoch"])


class BestModelSaver:
    """Writes ``path`` (``{"model": state dict, "best_metric", "epoch"}``, atomically) whenever the validator it is
    attached to reaches a new best key metric (MONAI's workflow records it in ``state.best_metric_epoch``).

    MONAI's key-metric ``CheckpointSaver`` keeps its own record of the best score in the process, so the first
    validation of a resumed run always replaces the file; this one reads the validator's state, which
    :class:`BestMetricState` restores on resume.
    """

    def __init__(self, path: str | Path, network: torch.nn.Module):
        self.path, self.network = Path(path), network

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine) -> None:
        state = engine.state
        if state.best_metric_epoch != state.epoch:
            return
        with atomic_path(self.path) as tmp:
            torch.save({"model": self.network.state_dict(), "best_metric": float(state.best_metric),
                        "epoch": int(state.epoch)}, tmp)


class ResumeCheckpointLoader(CheckpointLoader):
    """MONAI ``CheckpointLoader`` that, when the engine starts, loads the newest
    ``checkpoint_epoch=N.pt`` in ``folder`` into ``load_dict`` plus the engine (``"trainer"``), so the
    run continues at that epoch and iteration; without one it starts from scratch. Entries of ``load_dict`` that
    the checkpoint lacks (saved by an earlier version, e.g. ``best_metric``) keep their fresh state, with a warning.
    """

    def __init__(self, folder: str | Path, load_dict: dict, map_location=None, name: str | None = None):
        super().__init__(load_path=str(folder), load_dict=dict(load_dict), name=name, map_location=map_location)
        self.folder = Path(folder)

    def attach(self, engine) -> None:
        self.load_dict["trainer"] = engine
        super().attach(engine)

    def __call__(self, engine) -> None:
        self.load_path = latest_checkpoint(self.folder)
        if not self.load_path:
            self.logger.info(f"no checkpoint_epoch=N.pt in {self.folder}: starting at epoch 0 (from the network as built: initialised, or `pretrained`)")
            return
        # which entries it holds; memory-mapped, so the tensors are not read twice (MONAI loads them next)
        saved = torch.load(self.load_path, map_location="cpu", weights_only=True, mmap=True)
        wanted, self.load_dict = self.load_dict, {k: v for k, v in self.load_dict.items() if k in saved}
        for key in wanted.keys() - self.load_dict.keys():
            self.logger.warning(f"{self.load_path} has no {key!r} (an earlier version wrote it): {key} starts afresh")
        try:
            super().__call__(engine)
        finally:
            self.load_dict = wanted
        self.logger.info(f"resumed at epoch {engine.state.epoch}, iteration {engine.state.iteration}")
