"""Resuming a killed run (lgesynth.engines.checkpoints): the trainer continues at its epoch, and ``model_best.pt``
is replaced after the resume only by a better validation than the run's best before the kill.

A plain ignite trainer and a MONAI evaluator with a scripted key metric; the network's one weight records the
epoch that saved it.
"""

from __future__ import annotations

import torch
from ignite.engine import Engine, Events
from ignite.metrics import Metric
from monai.engines import Evaluator
from monai.handlers import ValidationHandler

from lgesynth.engines.checkpoints import (BestMetricState, BestModelSaver, ResumeCheckpointLoader, TrainerCheckpointSaver,
                                          latest_checkpoint)

SCORES = {1: 0.5, 2: 0.8, 3: 0.6, 4: 0.9}  # the validation score after each training epoch


class ScriptedScore(Metric):
    """``SCORES`` of the epoch the evaluator validates (MONAI's evaluator runs as that epoch)."""

    def __init__(self):
        self.epoch = 0
        super().__init__()

    def reset(self):
        pass

    def update(self, output):
        pass

    def compute(self):
        return SCORES[self.epoch]

    def started(self, engine):
        self.epoch = engine.state.epoch


def _session(folder, max_epochs: int, carry_best: bool = True):
    """One process's training, validated after every epoch, checkpointed for resume, the best kept in model_best.pt."""
    net = torch.nn.Linear(1, 1, bias=False)
    trainer = Engine(lambda engine, batch: None)
    validator = Evaluator(device=torch.device("cpu"), val_data_loader=[0], epoch_length=1,
                          iteration_update=lambda engine, batch: None, key_val_metric={"score": ScriptedScore()})
    BestModelSaver(folder / "model_best.pt", net).attach(validator)
    state = {"model": net, **({"best_metric": BestMetricState(validator)} if carry_best else {})}

    @trainer.on(Events.EPOCH_COMPLETED)
    def _train(engine):
        with torch.no_grad():
            net.weight.fill_(engine.state.epoch)

    ValidationHandler(interval=1, validator=validator, epoch_level=True).attach(trainer)
    ResumeCheckpointLoader(folder, dict(state)).attach(trainer)
    TrainerCheckpointSaver(str(folder), dict(state), save_interval=1, n_saved=1, epoch_level=True).attach(trainer)
    trainer.run([0], max_epochs=max_epochs)
    return trainer, validator


def _best(folder) -> tuple[float, float]:
    saved = torch.load(folder / "model_best.pt", weights_only=True)
    return float(saved["model"]["weight"]), saved["best_metric"]


def test_a_resumed_run_keeps_the_best_validation_of_the_run_it_resumed(tmp_path):
    _session(tmp_path, max_epochs=2)  # killed after epoch 2 (scores 0.5, 0.8)
    assert _best(tmp_path) == (2, 0.8) and latest_checkpoint(tmp_path).endswith("checkpoint_epoch=2.pt")
    trainer, validator = _session(tmp_path, max_epochs=3)  # epoch 3 scores 0.6
    assert trainer.state.epoch == 3 and (validator.state.best_metric, validator.state.best_metric_epoch) == (0.8, 2)
    assert _best(tmp_path) == (2, 0.8)
    _session(tmp_path, max_epochs=4)  # epoch 4 scores 0.9: a better one replaces it
    assert _best(tmp_path) == (4, 0.9)


def test_without_the_best_metric_in_the_checkpoint_a_resumed_run_starts_its_best_afresh(tmp_path):
    """What the checkpoint's best_metric is for: a run resumed without it (or from a checkpoint of an earlier
    version, which the loader accepts with a warning) takes its first validation as the best."""
    _session(tmp_path, max_epochs=2, carry_best=False)
    _session(tmp_path, max_epochs=3)  # the checkpoint lacks "best_metric": loaded without it
    assert _best(tmp_path) == (3, 0.6)
