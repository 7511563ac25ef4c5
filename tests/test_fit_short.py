"""A fit that stops at max_steps short of its targets says so: a warning naming the subject and what it
reached against what was asked, ``reached_target`` false in inr_bank.json, the ``reached_target`` column and
the ``fell_short`` count of the evaluate CSV / summary, and "N of M INRs reached their targets" in the
pipeline report. A bank written before the field loads it as unknown (None), not as False."""

from __future__ import annotations

import csv
import json
import logging
import math
import shutil

import pytest

from conftest import TINY_BANK_SPEC, write_tiny_datalist
from lgesynth.inr.bank import BANK_JSON, load_bank

pytestmark = pytest.mark.usefixtures("one_thread")

GRID = [24, 24, 6]
MAX_STEPS = 10  # far too few for 30 dB on these stacks


def _fit(datalist, out, **fit):
    from lgesynth.engines.inr_fit import InrFitTrainer

    InrFitTrainer(datalist, out, grid={"shape": GRID}, spec=TINY_BANK_SPEC,
                  fit={"max_steps": MAX_STEPS, "points": 1024, "batch_size": 2, "check_every": 5, **fit},
                  init={"kind": "seed", "seed": 0}, chunk_subjects=2, progress=False).run_all()
    return load_bank(out)


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "lgesynth.inr_fit"]


def test_subjects_stopped_short_of_the_default_targets_are_warned_and_recorded(tmp_path, caplog):
    datalist = write_tiny_datalist(tmp_path / "data", n_cases=2)  # p001 with scar, p002 without
    with caplog.at_level(logging.WARNING, logger="lgesynth.inr_fit"):
        bank = _fit(datalist, tmp_path / "bank")  # default targets: 30 dB, Dice myo 0.95, scar 0.90
    assert [s["reached_target"] for s in bank.subjects] == [False, False] == bank.reached_targets
    assert [s["steps"] for s in bank.subjects] == [MAX_STEPS, MAX_STEPS]
    doc = json.loads((tmp_path / "bank" / BANK_JSON).read_text())
    assert [s["reached_target"] for s in doc["subjects"]] == [False, False]  # stored, not only derived on load
    messages = _warnings(caplog)
    for s in bank.subjects:
        line = next(m for m in messages if f"subject {s['id']} " in m)
        assert f"stopped at max_steps {MAX_STEPS} at {s['psnr']:.1f} dB (target 30.0)" in line
        assert f"Dice myo {s['dice_myo']:.3f} (0.95)" in line and "PSNR" in line.split("short of")[1]
    p001 = next(m for m in messages if "subject p001 " in m)
    p002 = next(m for m in messages if "subject p002 " in m)
    assert "scar" in p001 and "(0.90)" in p001 and "no scar target" in p002
    assert any("2 of 2 subjects" in m and "p001, p002" in m for m in messages)  # the run's closing count


def test_lowered_targets_reached_and_the_scar_target_only_for_scar(tmp_path, caplog):
    """PSNR and myocardium targets any fit meets at once; a scar Dice target 10 steps cannot reach: the subject
    with scar falls short, the one without reaches its targets (the scar target does not apply to it) and
    stops early. The evaluate CSV and summary count it, and the report states the count."""
    from lgesynth.engines.inr_eval import InrBankEvaluator
    from lgesynth.report import write_report

    datalist = write_tiny_datalist(tmp_path / "data", n_cases=2)
    out = tmp_path / "run" / "inr_fit"
    with caplog.at_level(logging.WARNING, logger="lgesynth.inr_fit"):
        bank = _fit(datalist, out, target_psnr=0.0, target_dice_myo=0.0, target_dice_scar=0.99)
    assert bank.ids == ["p001", "p002"] and [s["has_scar"] for s in bank.subjects] == [True, False]
    assert [s["reached_target"] for s in bank.subjects] == [False, True] == bank.reached_targets
    assert bank.subjects[1]["steps"] < MAX_STEPS  # reached early
    messages = _warnings(caplog)
    assert any("subject p001 " in m and m.endswith("short of Dice scar") and "(0.99)" in m for m in messages), messages
    assert not any("p002" in m for m in messages)

    evaluator = InrBankEvaluator(str(out), targets={"psnr": 30.0, "dice_myo": 0.95, "dice_scar": 0.90}, progress=False)
    evaluator.run_all()
    rows = list(csv.DictReader(open(out / "fit_metrics.csv")))
    assert [(r["id"], r["reached_target"]) for r in rows] == [("p001", "False"), ("p002", "True")]
    summary = json.loads((out / "fit_summary.json").read_text())
    assert (summary["subjects"], summary["reached_target"], summary["fell_short"], summary["reached_target_unknown"]) == (2, 1, 1, 0)

    page = write_report(tmp_path / "run").read_text()
    assert "1 of 2 INRs reached their targets" in page and "1 stopped at max_steps short of them" in page


def test_a_bank_without_the_field_loads_it_as_unknown(tmp_path):
    """An older bank: a missing ``reached_target`` reads from ``reached`` (the same verdict) when present, else
    as None (``InrBank.reached_targets``); the evaluate CSV leaves it empty and the summary counts it as
    unknown, not as fallen short."""
    from lgesynth.engines.inr_eval import InrBankEvaluator

    datalist = write_tiny_datalist(tmp_path / "data", n_cases=2)
    out = tmp_path / "bank"
    _fit(datalist, out, target_psnr=0.0, target_dice_myo=0.0, target_dice_scar=0.99)
    for drop, want in ((("reached_target",), [False, True]), (("reached_target", "reached"), [None, None])):
        old = tmp_path / f"old_{len(drop)}"
        shutil.copytree(out, old)
        doc = json.loads((old / BANK_JSON).read_text())
        doc["subjects"] = [{k: v for k, v in s.items() if k not in drop} for s in doc["subjects"]]
        (old / BANK_JSON).write_text(json.dumps(doc))
        assert load_bank(old).reached_targets == want
    InrBankEvaluator(str(old), progress=False).run_all()
    assert [r["reached_target"] for r in csv.DictReader(open(old / "fit_metrics.csv"))] == ["", ""]
    summary = json.loads((old / "fit_summary.json").read_text())
    assert (summary["reached_target"], summary["fell_short"], summary["reached_target_unknown"]) == (0, 0, 2)


def test_shortfall_names_what_fell_short_and_keeps_the_scar_rule():
    from lgesynth.inr.fit import FitConfig, shortfall

    cfg = FitConfig(target_psnr=30.0, target_dice_myo=0.95, target_dice_scar=0.80)
    line = shortfall(cfg, 1000, 29.3, 0.998, 0.91, True)
    assert line == ("stopped at max_steps 1000 at 29.3 dB (target 30.0), Dice myo 0.998 (0.95), scar 0.910 (0.80); "
                    "short of PSNR")
    assert shortfall(cfg, 1000, 29.96, 0.9, math.nan, False).endswith("no scar (no scar target); short of PSNR, Dice myo")
    assert shortfall(cfg, 1000, 31.0, 0.96, 0.5, True).endswith("short of Dice scar")
