"""The pipeline on a tiny preset: stages run through the bundles, MLflow holds a run per stage, and a
run stopped during inr2vec and started again re-enters inr2vec without refitting the INRs."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import TINY_PRESET as TINY
from conftest import write_tiny_datalist
from lgesynth.pipeline import Pipeline, load_preset


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    datalist = write_tiny_datalist(root / "data", n_cases=6)
    preset = root / "tiny.yaml"
    preset.write_text(yaml.safe_dump(TINY))
    out = root / "run"
    pipe = Pipeline(out, preset, data=datalist, stages=("data", "inr_fit", "inr2vec"))
    times = pipe.run()
    return {"out": out, "preset": preset, "datalist": datalist, "times": times}


def test_builtin_presets_load_and_state_their_budget():
    for name, budget in (("smoke", 15), ("cpu", 60)):
        preset = load_preset(name)
        assert preset["name"] == name and preset["budget_minutes"] == budget
        assert {"inr_fit", "inr2vec", "edm_synth", "scar_seg"} <= set(preset)


def test_stages_write_their_outputs_and_one_mlflow_run_each(tiny_run):
    out = tiny_run["out"]
    assert (out / "inr_fit" / "inr_bank.json").exists() and (out / "inr2vec" / "latents.json").exists()
    assert set(tiny_run["times"]) == {"data", "inr_fit", "inr2vec"}
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{out / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("lgesynth_tiny")
    names = {r.info.run_name for r in client.search_runs([experiment.experiment_id])}
    assert {"inr_fit_train", "inr_fit_evaluate", "inr2vec_train", "inr2vec_evaluate"} <= names


def test_rerun_after_a_stop_in_inr2vec_does_not_refit_the_inrs(tiny_run):
    out = tiny_run["out"]
    bank = out / "inr_fit" / "inr_bank.safetensors"
    before = (bank.stat().st_mtime_ns, bank.read_bytes())
    # "killed during inr2vec": its stage record and outputs are missing
    (out / ".stages" / "inr2vec.json").unlink()
    (out / "inr2vec" / "latents.json").unlink()
    times = Pipeline(out, tiny_run["preset"], data=tiny_run["datalist"], stages=("data", "inr_fit", "inr2vec")).run()
    assert (out / "inr2vec" / "latents.json").exists()
    assert (bank.stat().st_mtime_ns, bank.read_bytes()) == before  # INRs not refitted
    record = json.loads((out / ".stages" / "inr_fit.json").read_text())
    assert times["inr_fit"] == record["seconds"]  # reported from the record, not re-run


def test_compare_lists_every_stage_run_and_report_is_self_contained(tiny_run):
    from lgesynth.compare import compare_runs
    from lgesynth.report import write_report

    out = tiny_run["out"]
    table = compare_runs(f"sqlite:///{out / 'mlruns.db'}", "lgesynth_tiny", ["psnr_mean", "psnr_test"])
    for name in ("inr_fit_train", "inr_fit_evaluate", "inr2vec_train", "inr2vec_evaluate"):
        assert name in table
    assert "psnr_mean" in table.splitlines()[0]
    page = write_report(out).read_text()
    assert "INR fit quality" in page and "Round trip" in page
    assert "data:image/png;base64," in page  # images inlined, nothing linked


def test_stages_come_as_the_cli_hands_them_and_unknown_ones_are_named(tmp_path):
    """``--stages data,inr_fit`` reaches ``run_pipeline`` as a tuple (fire), ``--stages data`` as a string."""
    from lgesynth.pipeline import run_pipeline

    for stages in (("data", "inr_fitt"), "data,inr_fitt", "inr_fitt"):
        with pytest.raises(ValueError, match=r"unknown stage\(s\) \['inr_fitt'\]"):
            run_pipeline(str(tmp_path / "out"), "smoke", stages=stages)
    assert not (tmp_path / "out").exists()


def test_arm_minutes_share_what_the_earlier_stages_leave():
    from lgesynth.seg.arm_budget import ARM_MINUTES_RANGE, ARM_RESERVE_MINUTES, RESERVE_MINUTES, arm_minutes

    quick = arm_minutes(60, {"inr_fit": 170.0, "inr2vec": 410.0, "edm_synth": 390.0}, seeds=2, localizer_minutes=1.5)
    left = 60 - 970.0 / 60 - 1.5 - RESERVE_MINUTES - 4 * ARM_RESERVE_MINUTES
    assert quick["arms"] == 4 and quick["left_minutes"] == pytest.approx(left, abs=0.01)
    assert quick["arm_minutes"] == pytest.approx(int(left / 4 * 10) / 10) and quick["arm_minutes"] * 4 <= left
    slow = arm_minutes(60, {"inr_fit": 600.0, "inr2vec": 1200.0, "edm_synth": 600.0}, seeds=2, localizer_minutes=1.5)
    assert slow["arm_minutes"] < quick["arm_minutes"]  # a slower CPU's earlier stages leave its arms less
    over = arm_minutes(60, {"inr2vec": 3600.0}, seeds=2, localizer_minutes=1.5)
    assert over["arm_minutes"] == ARM_MINUTES_RANGE[0] and "run over" in over["why"]
    assert arm_minutes(600, {}, seeds=1, localizer_minutes=0)["arm_minutes"] == ARM_MINUTES_RANGE[1]


def test_auto_arm_budget_reads_the_stage_records(tiny_run, tmp_path):
    from lgesynth.seg.arm_budget import arm_minutes

    preset = tmp_path / "auto.yaml"
    preset.write_text(yaml.safe_dump({**TINY, "budget_minutes": 45}))
    pipe = Pipeline(tiny_run["out"], preset, data=tiny_run["datalist"], stages=("scar_seg",))  # earlier stages: records only
    spent = {name: json.loads((tiny_run["out"] / ".stages" / f"{name}.json").read_text())["seconds"]
             for name in ("data", "inr_fit", "inr2vec")}
    minutes = pipe._arm_minutes({"budget_minutes": "auto", "seeds": [0, 1, 2], "localizer_minutes": 0.5})
    assert minutes == arm_minutes(45, spent, 3, 0.5)["arm_minutes"]
    record = json.loads((tiny_run["out"] / "experiment" / "arm_budget.json").read_text())
    assert record["arms"] == 6 and record["spent_seconds"] == spent and record["arm_minutes"] == minutes
    assert pipe._arm_minutes({"budget_minutes": "auto", "seeds": [0], "cascade": False}) > minutes  # fewer arms, no localizer
