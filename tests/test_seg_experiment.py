"""The baseline-vs-augmented scar_seg experiment end to end on tiny data: both arms trained through the
bundle configs with one plan, evaluated on the same test cases, tracked in one MLflow experiment and
compared (comparison.json / .md / .png); a second invocation retrains nothing; an arm killed mid-training
resumes from its checkpoint; the paired statistics agree with values worked out by hand.

Tiny setting: the conftest stacks (32 x 32 x 6), 4 real training cases (1 held out to validate),
2 real test cases, 3 "synthetic" cases; a 2D plan of width 8, 1 epoch of 4 iterations; 1 seed.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from conftest import TrainingKilled, kill_next_training_at, tiny_seg_plan, write_tiny_datalist
from lgesynth.data.datalist import load_datalist, write_datalist
from lgesynth.errors import DataError
from lgesynth.seg.experiment import run_experiment
from lgesynth.seg.experiment_arms import CONDITIONS
from lgesynth.seg.experiment_stats import OVERALL_KEYS, REGION_KEYS, bootstrap_ci, paired_statistics

EXPERIMENT = "tiny_experiment"


def tiny_plan(path: Path) -> Path:
    """conftest's 2D plan (width 8, 8..64 filters, batch 4), 1 epoch of 4 iterations."""
    return tiny_seg_plan(path, epochs=1, iterations_per_epoch=4)


def tiny_cohorts(root: Path) -> tuple[Path, Path]:
    """A real datalist (4 training, 2 test cases) and a synthetic one (3 cases, ``"synthetic": true``)."""
    real = write_tiny_datalist(root / "real", n_cases=6)
    entries = load_datalist(real)
    real = write_datalist(real, entries[:4], entries[4:])
    syn = write_tiny_datalist(root / "syn", n_cases=3, scar_degrees=120.0, noise=30.0)
    syn_entries = [{**e, "id": f"syn_{i + 1:04d}", "synthetic": True} for i, e in enumerate(load_datalist(syn))]
    return real, write_datalist(syn, syn_entries)


def _search_runs(tracking_uri: str):
    """``mlflow.search_runs`` of the experiment; MLflow's global URI (and the MLFLOW_TRACKING_URI it
    sets, which MONAI's handler would prefer to its argument) is put back as it was."""
    import mlflow

    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(tracking_uri)
    try:
        return mlflow.search_runs(experiment_names=[EXPERIMENT])
    finally:
        mlflow.set_tracking_uri(previous)  # None unsets both


def _stamps(out: Path) -> dict[str, int]:
    files = [p for p in out.rglob("*") if p.is_file() and (p.suffix == ".pt" or p.name in ("train_log.json", "metrics.csv"))]
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in files}


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    root = tmp_path_factory.mktemp("experiment")
    real, syn = tiny_cohorts(root / "data")
    out = root / "exp"
    kwargs = dict(seeds="0", plan=tiny_plan(root / "tiny_plan.json"), synthetic_ratio=0.5, experiment_name=EXPERIMENT,
                  num_workers=0, overrides={"log_every": 2})
    comparison = run_experiment(real, syn, out, **kwargs)
    return {"out": out, "real": real, "syn": syn, "kwargs": kwargs, "comparison": comparison, "stamps": _stamps(out),
            "runs": _search_runs(comparison["tracking_uri"])}


def test_both_arms_are_compared_on_the_same_test_cases(experiment):
    out = experiment["out"]
    comparison = json.loads((out / "comparison.json").read_text())
    assert comparison["seeds"] == [0] and comparison["cases"] == 2 and comparison["case_ids"] == ["p005", "p006"]
    assert comparison["plan"] == str(out / "plan.json")
    for condition in CONDITIONS:
        arm = comparison[condition]
        assert set(OVERALL_KEYS) <= set(arm) and set(arm["per_region"]) == set(REGION_KEYS)
        assert set(arm["ci95"]) == set(OVERALL_KEYS + REGION_KEYS)
        assert 0.0 <= arm["dice_myo"] <= 1.0 and 0.0 <= arm["dice_scar"] <= 1.0
        lo, hi = arm["ci95"]["dice_myo"]
        assert lo <= arm["dice_myo"] <= hi
        # the same plan file, copied unchanged into both arms' folders
        assert json.loads((out / f"{condition}_seed0" / "plan.json").read_text()) == json.loads((out / "plan.json").read_text())
    assert set(comparison["paired"]) == set(OVERALL_KEYS + REGION_KEYS)
    scar = comparison["paired"]["dice_scar"]
    assert set(scar) == {"mean_difference", "ci95", "test", "p_value", "n"}
    per_case = {c: {r["id"]: r for r in _csv(out / f"{c}_seed0" / "eval" / "metrics.csv")} for c in CONDITIONS}
    # p006 has no scar: its scar Dice is undefined (NaN, lgesynth.dice) in an arm that predicts none there
    differences = [float(per_case["augmented"][i]["dice_scar"]) - float(per_case["baseline"][i]["dice_scar"])
                   for i in ("p005", "p006")]
    defined = [d for d in differences if d == d]
    assert scar["n"] == len(defined) >= 1 and scar["test"] == "t"  # < 6 cases: too few for Wilcoxon
    assert scar["mean_difference"] == pytest.approx(np.mean(defined))
    assert comparison["budget"]["epochs"] == 1 and set(comparison["budget"]["train_minutes"]) == {"baseline_seed0", "augmented_seed0"}
    # the augmented arm really saw the synthetic cases, the baseline did not
    configs = {c: json.loads((out / f"{c}_seed0" / "config_train.json").read_text()) for c in CONDITIONS}
    assert configs["augmented"]["synthetic_datalist"] == str(experiment["syn"]) and configs["baseline"]["synthetic_datalist"] is None
    table = (out / "comparison.md").read_text()
    assert "| dice_scar |" in table and "| dice_myo_apical |" in table
    png = (out / "comparison.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10000


def _csv(path: Path) -> list[dict]:
    import csv

    with open(path) as f:
        return list(csv.DictReader(f))


def test_post_processing_is_chosen_on_each_arms_validation_case(experiment):
    from lgesynth.seg.data import split_training
    from lgesynth.seg.postprocess import MIN_SCAR_ML_CANDIDATES

    out, comparison = experiment["out"], experiment["comparison"]
    val = split_training(experiment["real"], 0.2, 0)["val"]
    assert len(val) == 1
    for condition in CONDITIONS:
        folder = out / f"{condition}_seed0"
        record = json.loads((folder / "postprocess.json").read_text())
        assert record["candidates"] == list(MIN_SCAR_ML_CANDIDATES) and record["n_cases"] == 1
        assert list(record["per_case"]) == [val[0]["id"]]  # the arm's own hold-out, not a test case
        scores = [1.0 if m is None else m for m in record["mean_dice_scar"]]  # None: no case with a scar Dice
        assert record["min_scar_ml"] == record["candidates"][int(np.argmax(scores))]
        assert (folder / "val_eval" / "predictions").is_dir()
        assert comparison["postprocessing"][f"{condition}_seed0"]["min_scar_ml"] == record["min_scar_ml"]
        evaluated = json.loads((folder / "eval" / "config_evaluate.json").read_text())
        assert evaluated["min_scar_ml"] == record["min_scar_ml"]
        assert (folder / "eval_raw").exists() == (record["min_scar_ml"] > 0)
        raw = [float(r["dice_myo"]) for r in _csv(folder / ("eval_raw" if record["min_scar_ml"] > 0 else "eval") / "metrics.csv")]
        assert comparison["as_predicted"][condition]["dice_myo"] == pytest.approx(np.mean(raw))


def test_mlflow_logs_the_training_loss_every_log_every_iterations(experiment):
    """Not every iteration (MONAI's default): one SQLite write per iteration slowed a training step by 14 %."""
    from mlflow.tracking import MlflowClient

    runs = experiment["runs"]
    run_id = runs[runs["tags.mlflow.runName"] == "baseline_seed0"]["run_id"].iloc[0]
    history = MlflowClient(tracking_uri=experiment["comparison"]["tracking_uri"]).get_metric_history(run_id, "train_loss")
    assert sorted(m.step for m in history) == [2, 4]  # 4 iterations, log_every 2


def test_mlflow_has_both_conditions_with_test_metrics(experiment):
    runs = experiment["runs"]
    assert set(runs["tags.condition"]) == set(CONDITIONS)
    assert set(runs["tags.mlflow.runName"]) == {"baseline_seed0", "augmented_seed0", "baseline_seed0_eval", "augmented_seed0_eval"}
    evaluated = runs[runs["tags.stage"] == "evaluate"]
    assert set(evaluated["tags.condition"]) == set(CONDITIONS) and set(evaluated["tags.seed"]) == {"0"}
    assert evaluated["tags.min_scar_ml"].notna().all()
    assert evaluated["metrics.test_dice_scar"].notna().all() and evaluated["metrics.test_dice_myo"].notna().all()
    for _, run in evaluated.iterrows():  # the test metrics MLflow holds are the ones compared
        arm = experiment["comparison"][run["tags.condition"]]
        assert run["metrics.test_dice_myo"] == pytest.approx(arm["dice_myo"])
    trained = runs[runs["tags.stage"] == "train"]
    assert set(trained["tags.condition"]) == set(CONDITIONS) and trained["metrics.val_mean_dice"].notna().all()


def test_second_invocation_skips_finished_arms(experiment):
    """Again through the command line this time: `lgesynth experiment --real ... --seeds 0`."""
    from lgesynth.cli import main

    e = experiment
    t0 = time.perf_counter()
    main(["experiment", "--real", str(e["real"]), "--synthetic", str(e["syn"]), "--out", str(e["out"]), "--seeds", "0",
          "--experiment_name", EXPERIMENT, "--num_workers", "0"])
    seconds = time.perf_counter() - t0
    again = json.loads((e["out"] / "comparison.json").read_text())
    assert _stamps(e["out"]) == e["stamps"]  # no checkpoint, log or evaluation was rewritten
    assert all(r["did"] == ["skipped (done)"] for r in again["this_invocation"].values())
    assert len(_search_runs(again["tracking_uri"])) == len(e["runs"])
    assert again["paired"] == e["comparison"]["paired"]  # same inputs, same seeded bootstrap
    assert seconds < 30, seconds


def test_synthetic_test_leak_is_refused(tmp_path):
    real, _ = tiny_cohorts(tmp_path)
    leak = write_datalist(tmp_path / "leak.json", [{**load_datalist(real, "test")[0], "synthetic": True}])
    with pytest.raises(DataError, match="test image"):
        run_experiment(real, leak, tmp_path / "exp", seeds="0")
    assert not (tmp_path / "exp").exists()


def test_a_stale_evaluation_is_redone_without_retraining(experiment, tmp_path, monkeypatch):
    e = experiment
    (e["out"] / "augmented_seed0" / "eval" / "metrics.csv").unlink()
    # MONAI's MLflow handler prefers this variable to its tracking_uri: the experiment must not let it
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'elsewhere.db'}")
    again = run_experiment(e["real"], e["syn"], e["out"], **e["kwargs"])
    assert not (tmp_path / "elsewhere.db").exists()
    assert again["this_invocation"]["augmented_seed0"]["did"] == ["evaluated"]
    assert again["this_invocation"]["baseline_seed0"]["did"] == ["skipped (done)"]
    assert {k: v for k, v in _stamps(e["out"]).items() if k.endswith(".pt")} == \
        {k: v for k, v in e["stamps"].items() if k.endswith(".pt")}
    runs = _search_runs(again["tracking_uri"])
    assert sorted(runs["tags.mlflow.runName"]) == sorted(e["runs"]["tags.mlflow.runName"])  # the old eval run replaced
    assert again["augmented"]["dice_myo"] == pytest.approx(e["comparison"]["augmented"]["dice_myo"])


def test_a_fixed_min_scar_ml_rescores_both_ways_without_retraining(experiment):
    e = experiment
    again = run_experiment(e["real"], e["syn"], e["out"], **{**e["kwargs"], "min_scar_ml": 0.5})
    for condition in CONDITIONS:
        name = f"{condition}_seed0"
        assert again["this_invocation"][name]["did"] == ["post-processing chosen", "evaluated", "evaluated as predicted"]
        assert again["postprocessing"][name] == {"min_scar_ml": 0.5, "fixed": 0.5, "rule": "fixed by the caller"}
        evaluated = json.loads((e["out"] / name / "eval" / "config_evaluate.json").read_text())
        assert evaluated["min_scar_ml"] == 0.5 and evaluated["raw_output_dir"] == str(e["out"] / name / "eval_raw")
        cleaned, raw = (_csv(e["out"] / name / d / "metrics.csv") for d in ("eval", "eval_raw"))
        assert [r["id"] for r in cleaned] == [r["id"] for r in raw]  # one pass, two reports
        # the clean-up only turns scar into myocardium: the myocardium is the same, scar never grows
        assert all(float(c["dice_myo"]) == pytest.approx(float(r["dice_myo"])) for c, r in zip(cleaned, raw))
        assert all(float(c["burden_pred_pct"]) <= float(r["burden_pred_pct"]) + 1e-9 for c, r in zip(cleaned, raw))
    assert {k: v for k, v in _stamps(e["out"]).items() if k.endswith(".pt")} == \
        {k: v for k, v in e["stamps"].items() if k.endswith(".pt")}
    runs = _search_runs(again["tracking_uri"])
    evaluated = runs[runs["tags.stage"] == "evaluate"]
    assert set(evaluated["tags.mlflow.runName"]) == {f"{c}_seed0_eval" for c in CONDITIONS}
    assert (evaluated["tags.min_scar_ml"] == "0.5").all() and evaluated["metrics.test_raw_dice_scar"].notna().all()
    for _, run in evaluated.iterrows():  # MLflow holds both reports of the one pass
        arm = again["as_predicted"][run["tags.condition"]]
        assert run["metrics.test_raw_dice_myo"] == pytest.approx(arm["dice_myo"])
    assert "As predicted (no clean-up)" in (e["out"] / "comparison.md").read_text()


@pytest.mark.usefixtures("one_thread")
def test_an_arm_killed_mid_training_resumes_from_its_checkpoint(tiny_datalist, tmp_path, monkeypatch):
    """The baseline arm is killed in its second (last) epoch, after train.yaml's TrainerCheckpointSaver wrote
    checkpoint_epoch=1.pt; the experiment run again on its folder resumes that arm from the checkpoint
    (ResumeCheckpointLoader: epoch 2 from iteration 4, not epoch 1 from 0), then finishes both arms."""
    ipe = 4
    syn = write_tiny_datalist(tmp_path / "syn", n_cases=2, scar_degrees=120.0, noise=30.0)
    syn = write_datalist(syn, [{**e, "id": f"syn_{i + 1:04d}", "synthetic": True} for i, e in enumerate(load_datalist(syn))])
    out = tmp_path / "exp"
    kwargs = dict(seeds="0", plan=tiny_seg_plan(tmp_path / "plan.json", epochs=2, iterations_per_epoch=ipe),
                  experiment_name=EXPERIMENT, num_workers=0, overrides={"log_every": 100}, min_scar_ml=0, n_boot=50,
                  evaluate_overrides={"mirror_axes": []})
    arm = out / "baseline_seed0"

    def log() -> list[tuple[int, int]]:
        return [(e["epoch"], e["iteration"]) for e in json.loads((arm / "train_log.json").read_text())]

    with monkeypatch.context() as m:
        kill_next_training_at(m, iteration=ipe + 2)
        with pytest.raises(TrainingKilled):
            run_experiment(tiny_datalist, syn, out, **kwargs)
    assert log() == [(1, ipe)]  # killed in epoch 2, with epoch 1's checkpoint on disk and nothing final
    assert sorted(p.name for p in (arm / "models").glob("checkpoint_epoch=*.pt")) == ["checkpoint_epoch=1.pt"]
    assert not (arm / "models" / "model.pt").exists() and not (out / "augmented_seed0").exists()

    comparison = run_experiment(tiny_datalist, syn, out, **kwargs)
    assert log() == [(1, ipe), (2, 2 * ipe)]  # resumed: epoch 2 only, continuing the global iteration count
    assert comparison["this_invocation"]["baseline_seed0"]["did"][0] == "trained"
    assert comparison["this_invocation"]["augmented_seed0"]["did"][0] == "trained"
    assert sorted(p.name for p in (arm / "models").glob("checkpoint_epoch=*.pt")) == ["checkpoint_epoch=2.pt"]
    for condition in CONDITIONS:
        folder = out / f"{condition}_seed0"
        assert (folder / "models" / "model.pt").is_file() and (folder / "eval" / "metrics.csv").is_file()
    assert json.loads((out / "comparison.json").read_text())["budget"]["epochs"] == 2
    # the resumed session went on with the killed session's MLflow run: one training run for the arm, finished
    runs = _search_runs(comparison["tracking_uri"])  # this experiment's own store (out/mlruns.db)
    trained = runs[runs["tags.mlflow.runName"] == "baseline_seed0"]
    assert len(trained) == 1 and trained["status"].tolist() == ["FINISHED"]


# ---- the paired statistics on toy numbers


def test_paired_wilcoxon_matches_hand_computation():
    baseline = np.array([0.50, 0.60, 0.70, 0.40, 0.55, 0.65, 0.30])
    d = np.array([0.05, 0.02, -0.01, 0.08, 0.03, 0.04, 0.06])
    out = paired_statistics(baseline, baseline + d, n_boot=4000, seed=1)
    assert out["n"] == 7 and out["test"] == "wilcoxon"
    assert out["mean_difference"] == pytest.approx(0.27 / 7)
    lo, hi = out["ci95"]
    assert lo < 0.27 / 7 < hi and lo > -0.01 and hi < 0.08  # inside the range of the differences
    # one negative difference, the smallest: W- = rank 1; exact two-sided p = 2 * P(W <= 1) = 2 * 2 / 2^7
    assert out["p_value"] == pytest.approx(2 * 2 / 2 ** 7)
    assert out["p_value"] == pytest.approx(stats.wilcoxon(d).pvalue)
    assert paired_statistics(baseline, baseline + d, n_boot=4000, seed=1) == out  # seeded


def test_paired_t_for_few_cases_and_edge_cases():
    out = paired_statistics([0.5, 0.4, 0.6, np.nan], [0.6, 0.6, 0.9, 0.7])  # the NaN pair is dropped
    assert out["n"] == 3 and out["test"] == "t"
    assert out["mean_difference"] == pytest.approx(0.2)
    # d = 0.1, 0.2, 0.3: t = 0.2 / (0.1 / sqrt 3); with 2 degrees of freedom p = 1 - t / sqrt(t^2 + 2)
    t = 0.2 / (0.1 / np.sqrt(3))
    assert out["p_value"] == pytest.approx(1 - t / np.sqrt(t ** 2 + 2))
    assert out["p_value"] == pytest.approx(stats.ttest_rel([0.6, 0.6, 0.9], [0.5, 0.4, 0.6]).pvalue)
    assert paired_statistics([0.5] * 8, [0.5] * 8)["p_value"] == 1.0
    assert paired_statistics([0.5], [0.7])["p_value"] is None
    assert bootstrap_ci([]) == [None, None] and bootstrap_ci([0.3]) == [pytest.approx(0.3)] * 2
