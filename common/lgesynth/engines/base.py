"""BundleEngine: an ignite ``Engine`` that a bundle config runs whole with ``run_all()``.

A config's recipe ends with ``"$@train#trainer.run_all()"`` or ``"$@evaluator.run_all()"``; the engine
declares what that run is:

    prepare()      work that decides the run (default: none), done first
    run_data()     what ``Engine.run`` iterates over
    max_epochs     epochs (default 1)
    epoch_length   iterations per epoch (default None: ``len(run_data())``)

so ``run_all()`` is ``prepare()`` then ``run(run_data(), max_epochs, epoch_length)``; :class:`StepTrainer`
declares them for a trainer of ``steps`` iterations. A subclass defines its iteration ``_process(engine, batch)``
and ends its constructor with ``attach_handlers(handlers, finish)``: ``finish``, the engine's own end of an
epoch (e.g. writing its summary into ``state.metrics``), is registered on ``EPOCH_COMPLETED`` before the
handlers, so a handler (MONAI's ``MLFlowHandler`` of ``--tracking mlflow``) sees what it wrote; the handlers
are kept in ``handlers``, where ``engines.tracking.RunInfoHandler`` finds the MLflow runs.
"""

from __future__ import annotations

import math
from typing import Callable

from ignite.engine import Engine, Events, State


class BundleEngine(Engine):
    """Base of the bundle engines (module doc); subclasses define ``_process`` and ``run_data``."""

    max_epochs: int = 1
    epoch_length: int | None = None

    def __init__(self):
        super().__init__(self._process)
        self.handlers: tuple = ()

    def _process(self, engine: Engine, batch):
        raise NotImplementedError

    def attach_handlers(self, handlers=(), finish: Callable[[Engine], None] | None = None) -> None:
        """Register ``finish`` on ``EPOCH_COMPLETED``, then attach ``handlers`` in order and keep them."""
        if finish is not None:
            self.add_event_handler(Events.EPOCH_COMPLETED, finish)
        self.handlers = tuple(handlers or ())
        for handler in self.handlers:
            handler.attach(self)

    def prepare(self) -> None:
        """Work that decides ``run_data`` and the epochs (default: none)."""

    def run_data(self):
        raise NotImplementedError

    def run_all(self) -> State:
        """``prepare()``, then the whole run: ``run_data()`` for ``max_epochs`` epochs of ``epoch_length`` iterations."""
        self.prepare()
        return self.run(self.run_data(), max_epochs=self.max_epochs, epoch_length=self.epoch_length)


class StepTrainer(BundleEngine):
    """A trainer of ``steps`` iterations in epochs of ``epoch_length`` (the unit of checkpoints, validation and
    MLflow epochs): ``max_epochs = ceil(steps / epoch_length)``; its batches are drawn from the iteration number,
    so ``run_data()`` is an epoch's iteration range. A ``ResumeCheckpointLoader`` in the handlers resumes it."""

    steps: int
    epoch_length: int

    @property
    def max_epochs(self) -> int:
        return max(1, math.ceil(self.steps / self.epoch_length))

    def run_data(self) -> range:
        return range(self.epoch_length)
