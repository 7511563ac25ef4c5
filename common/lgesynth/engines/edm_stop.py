"""Stopping an EDM by a memorisation measure, for small cohorts.

An EDM trained long enough on n latents learns their empirical distribution: its samples become
copies of training subjects. On a cohort of tens of subjects that happens within a few hundred steps
once the EDM models the cohort's span (docs/experiments.md). ``EdmValidator`` measures it at each
validation (``val_copy_fraction``: the share of samples from fixed noise that copy a training latent,
the quality report's latent rule). :class:`MemorisationStop` keeps the EMA of the newest validation
at or below ``max_copy_fraction`` in a file; after the first validation above it, at the end of the
next epoch every rank stops, rank 0 with that kept EMA restored, so the trainer's ``COMPLETED``
handlers (final checkpoint, generator export) see it. The kept file survives a kill, so a resumed
run stops the same way.

The outcome is ``trainer.state.memorisation_stop`` (``GeneratorExporter`` writes it into
generator.json): ``{"max_copy_fraction", "stopped", "iteration" (of the kept EMA), "copy_fraction"
(there), "first_copying_iteration", "first_copying_fraction"}``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from ignite.engine import Engine, Events

from lgesynth.io import atomic_path

logger = logging.getLogger("lgesynth.edm")

KEPT_EMA = "ema_below_copy_limit.pt"


class MemorisationStop:
    """Ends EDM training at the first validation whose ``val_copy_fraction`` exceeds ``max_copy_fraction``,
    with the EMA of the last validation that did not (module doc).

    Args:
        validator: the ``EdmValidator`` (its ``state.metrics["val_copy_fraction"]``).
        ema: the trainer's ``edm.EMA`` (its state is saved and restored).
        folder: where ``KEPT_EMA`` is written (the training's output_dir).
        max_copy_fraction: in [0, 1]; None or 1 turns the stop off (the EMA is never restored).
    """

    def __init__(self, validator: Engine, ema, folder: str | Path, max_copy_fraction: float | None = 0.05):
        if max_copy_fraction is not None and not 0.0 <= float(max_copy_fraction) <= 1.0:
            raise ValueError(f"max_copy_fraction must be in [0, 1] or null, got {max_copy_fraction!r}")
        self.validator, self.ema, self.path = validator, ema, Path(folder) / KEPT_EMA
        self.max_copy_fraction = None if max_copy_fraction is None else float(max_copy_fraction)
        self.pending: tuple[float, int] | None = None  # (copy fraction, step) of the validation that asked to stop (rank 0)

    def attach(self, trainer: Engine) -> None:
        if self.max_copy_fraction is None or self.max_copy_fraction >= 1.0:
            return
        trainer.add_event_handler(Events.STARTED, self.start)
        self.validator.add_event_handler(Events.COMPLETED, self.check, trainer)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self.stop_if_asked)

    def start(self, trainer: Engine) -> None:
        trainer.state.memorisation_stop = {"max_copy_fraction": self.max_copy_fraction, "stopped": False}

    def check(self, validator: Engine, trainer: Engine) -> None:
        """After a validation (rank 0): keep this EMA, or ask for the stop."""
        fraction = validator.state.metrics.get("val_copy_fraction")
        if fraction is None or self.pending is not None or trainer.should_terminate:
            return  # the stop is decided: later validations (of the restored EMA) change nothing
        if fraction <= self.max_copy_fraction:
            iteration = int(trainer.state.iteration)
            with atomic_path(self.path) as tmp:
                torch.save({"ema": self.ema.state_dict(), "iteration": iteration, "copy_fraction": float(fraction)}, tmp)
            trainer.state.memorisation_stop.update(iteration=iteration, copy_fraction=float(fraction))
        else:
            self.pending = (float(fraction), int(trainer.state.iteration))

    def stop_if_asked(self, trainer: Engine) -> None:
        """At each epoch's end (every rank): stop all ranks when rank 0's last validation asked to."""
        import torch.distributed as dist

        flag = [self.pending]
        if dist.is_available() and dist.is_initialized():
            dist.broadcast_object_list(flag, src=0)
        if flag[0] is None:
            return
        if self.pending is not None:  # rank 0: restore and report
            self.restore(trainer, *self.pending)
        trainer.terminate()

    def restore(self, trainer: Engine, fraction: float, iteration: int) -> None:
        record = trainer.state.memorisation_stop
        record.update(stopped=True, first_copying_iteration=iteration, first_copying_fraction=fraction)
        if self.path.is_file():
            kept = torch.load(self.path, map_location="cpu", weights_only=True)
            self.ema.load_state_dict(kept["ema"])
            record.update(iteration=int(kept["iteration"]), copy_fraction=float(kept["copy_fraction"]))
            logger.warning("EDM: %.0f %% of the samples copy a training latent by step %d (limit %.0f %%): training "
                           "stops; the generator is the EMA of step %d (%.0f %% copies)", 100 * fraction, iteration,
                           100 * self.max_copy_fraction, record["iteration"], 100 * record["copy_fraction"])
        else:
            record.update(iteration=iteration, copy_fraction=fraction)
            logger.warning("EDM: %.0f %% of the samples copy a training latent already at the first validation (limit "
                           "%.0f %%): training stops with the EMA of step %d; validate more often (val_interval) or "
                           "raise max_copy_fraction", 100 * fraction, 100 * self.max_copy_fraction, iteration)
