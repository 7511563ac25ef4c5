"""Keeping a training run inside its minutes: re-plan the number of epochs from the epochs' measured wall time.

The plan's epochs come from one timed network step (:mod:`lgesynth.seg.cost_calibration`); a real epoch can cost
more or less than that step predicts. On a 2-core Zen 4 host the EMIDEC ROI plan timed 0.062 s per step and trained at
0.08-0.12 s per iteration (the loader's workers share the cores with torch's threads), so 9.6-minute arms trained
10.9-12.4 min; the phantom's 3D plan trained 4.1-4.6 min of its 8. :class:`EpochTimeBudget` measures instead of
predicting: after each epoch, validation included, it sets the run's last epoch to the one the mean epoch so far lets
it reach inside the budget, and the poly LR schedule's end to that epoch's last iteration, so the learning rate still
decays to zero where training actually stops. (ignite's ``TimeLimit`` stops a run at a deadline instead, wherever
its schedule then is.)

Attach it after the ValidationHandler and before the checkpoint saver (``train#every_rank`` in ``train.yaml``), and
keep it in the checkpoint's ``save_dict``/``load_dict``: a resumed run then continues with the epochs it re-planned
and the seconds it had already spent.
"""

from __future__ import annotations

import logging
import math
import time

import ignite.distributed as idist

logger = logging.getLogger(__name__)


class EpochTimeBudget:
    """Ignite handler: end training within ``minutes`` of wall time (STARTED to the last EPOCH_COMPLETED).

    Args:
        minutes: the run's budget; ``None`` turns the handler off (a plan without a time budget, e.g. ``paper``).
        lr_scheduler: a schedule with a ``total_iters`` (torch ``PolynomialLR``), stepped every iteration; its end
            moves with the last epoch. ``None``: only the epochs change.
        max_epochs_factor: the most epochs it may plan, as a multiple of the epochs the run started with (a plan
            that over-predicted its step gets more epochs, up to this).
    The decision after epoch e (``spent`` seconds so far, validation included):
    ``last = clip(e + floor((budget - spent) / (spent / e)), e, factor x planned)``.
    """

    def __init__(self, minutes: float | None, lr_scheduler=None, max_epochs_factor: float = 2.0):
        self.budget_seconds = None if minutes is None else 60.0 * float(minutes)
        self.lr_scheduler = lr_scheduler
        self.max_epochs_factor = float(max_epochs_factor)
        self.spent_seconds = 0.0      # over every process of this run (restored on resume)
        self.planned_epochs = None    # the epochs the run started with
        self._since = None            # perf_counter at this process's last STARTED / EPOCH_COMPLETED

    def attach(self, engine) -> None:
        from ignite.engine import Events

        if self.budget_seconds is None:
            return
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def state_dict(self) -> dict:
        return {"spent_seconds": self.spent_seconds, "planned_epochs": self.planned_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.spent_seconds = float(state.get("spent_seconds", 0.0))
        self.planned_epochs = state.get("planned_epochs")

    def started(self, engine) -> None:
        if self.planned_epochs is None:
            self.planned_epochs = int(engine.state.max_epochs)
        self._since = time.perf_counter()

    def epoch_completed(self, engine) -> None:
        now = time.perf_counter()
        self.spent_seconds += idist.all_reduce(now - self._since, op="MAX")  # torchrun: every rank plans the slowest's
        self._since = now
        state = engine.state
        done = int(state.epoch)
        per_epoch = self.spent_seconds / done
        ceiling = max(done, math.floor(self.max_epochs_factor * self.planned_epochs))
        last = min(max(done + math.floor((self.budget_seconds - self.spent_seconds) / per_epoch), done), ceiling)
        if last == state.max_epochs:
            return
        logger.info(f"time budget: {self.spent_seconds / 60:.1f} of {self.budget_seconds / 60:.1f} min spent in "
                    f"{done} epochs ({per_epoch:.1f} s each): last epoch {state.max_epochs} -> {last}")
        state.max_epochs = last
        if self.lr_scheduler is not None:
            self.lr_scheduler.total_iters = last * state.epoch_length
