"""EpochTimeBudget: a run ends inside its minutes, measured epoch by epoch, and its LR schedule ends with it."""

import pytest
import torch
from ignite.engine import Engine, Events

from lgesynth.seg import time_budget
from lgesynth.seg.time_budget import EpochTimeBudget

EPOCH_LENGTH = 4


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(time_budget.time, "perf_counter", fake)
    return fake


def _engine(clock, epoch_seconds):
    """An engine whose iterations advance the clock so that epoch e (1-based) takes ``epoch_seconds(e)``, and a poly
    LR schedule stepped every iteration over the epochs it starts with."""
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)

    def step(engine, batch):
        clock.now += epoch_seconds(engine.state.epoch) / EPOCH_LENGTH
        optimizer.step()

    engine = Engine(step)
    return engine, optimizer


def _schedule(engine, optimizer, epochs):
    scheduler = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=epochs * EPOCH_LENGTH, power=0.9)
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda _: scheduler.step())
    return scheduler


def test_a_slower_run_than_planned_ends_inside_its_budget_with_the_lr_at_zero(clock):
    engine, optimizer = _engine(clock, lambda e: 15.0)  # 10 planned epochs of 15 s = 2.5 min
    scheduler = _schedule(engine, optimizer, 10)
    budget = EpochTimeBudget(minutes=1.0, lr_scheduler=scheduler)
    budget.attach(engine)
    engine.run(range(EPOCH_LENGTH), max_epochs=10)
    assert engine.state.epoch == 4 and clock.now == pytest.approx(60.0)
    assert scheduler.total_iters == 4 * EPOCH_LENGTH
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_a_faster_run_gets_more_epochs_up_to_the_factor(clock):
    engine, optimizer = _engine(clock, lambda e: 5.0)
    scheduler = _schedule(engine, optimizer, 3)
    EpochTimeBudget(minutes=0.5, lr_scheduler=scheduler, max_epochs_factor=10).attach(engine)
    engine.run(range(EPOCH_LENGTH), max_epochs=3)
    assert engine.state.epoch == 6  # 30 s of 5-s epochs
    engine, optimizer = _engine(clock, lambda e: 5.0)
    EpochTimeBudget(minutes=0.5, max_epochs_factor=2).attach(engine)
    engine.run(range(EPOCH_LENGTH), max_epochs=2)
    assert engine.state.epoch == 4  # capped at 2 x the 2 planned


def test_a_resumed_run_counts_the_seconds_spent_before_it(clock):
    engine, _ = _engine(clock, lambda e: 10.0)
    first = EpochTimeBudget(minutes=1.0)
    first.attach(engine)
    engine.add_event_handler(Events.EPOCH_COMPLETED(once=2), lambda e: e.terminate())  # killed after epoch 2
    engine.run(range(EPOCH_LENGTH), max_epochs=10)
    saved = {"trainer": engine.state_dict(), "time_budget": first.state_dict()}
    assert saved["time_budget"]["spent_seconds"] == pytest.approx(20.0) and saved["trainer"]["max_epochs"] == 6

    engine, _ = _engine(clock, lambda e: 20.0)  # the resumed process's epochs are slower
    engine.load_state_dict(saved["trainer"])
    second = EpochTimeBudget(minutes=1.0)
    second.load_state_dict(saved["time_budget"])
    second.attach(engine)
    engine.run(range(EPOCH_LENGTH))
    # 20 s before the kill + epochs 3 and 4 of 20 s = 60 s: the budget ends at epoch 4, not 2 + 3
    assert engine.state.epoch == 4 and second.spent_seconds == pytest.approx(60.0)


def test_without_minutes_the_planned_epochs_stand(clock):
    engine, _ = _engine(clock, lambda e: 100.0)
    EpochTimeBudget(minutes=None).attach(engine)
    engine.run(range(EPOCH_LENGTH), max_epochs=3)
    assert engine.state.epoch == 3
