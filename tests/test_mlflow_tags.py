"""One tagging scheme in MLflow (``lgesynth.engines.tracking``): every run of the pipeline, the scar_seg
experiment's included, carries ``bundle``, ``stage``, ``preset``, ``dataset``, ``seed`` and ``git_commit``,
so ``tags.bundle = 'scar_seg'`` finds the experiment's runs; a bundle run by hand gets the defaults.

A tiny pipeline through every stage that makes MLflow runs (inr_fit, inr2vec, edm_synth, scar_seg) on
conftest stacks, about half a minute on one core: conftest's ``tiny_pipeline`` (data to edm_synth, run once
per session and shared with test_pack, which packs its edm_synth bundle folder), then the scar_seg stage
here. Its edm_synth decodes (a 10-step generator on a 8-step inr2vec) are no segmentation training data
(and may all be rejected), so before the scar_seg stage the synthetic datalist is replaced by three
conftest stacks; the stage still runs through ``Pipeline`` (its ``run_tags`` into the experiment).
"""

from __future__ import annotations

import os

import pytest
import yaml

from conftest import TINY_PIPELINE_PRESET as TINY
from conftest import fit_tiny_bank, torch_threads, write_tiny_datalist
from lgesynth.data.datalist import load_datalist, write_datalist
from lgesynth.engines.tracking import STANDARD_TAGS, dataset_name
from lgesynth.pipeline import Pipeline

STAGE_RUNS = {"inr_fit_train", "inr_fit_evaluate", "inr2vec_train", "inr2vec_evaluate", "edm_synth_train",
              "edm_synth_inference", "localizer", "baseline_seed0", "baseline_seed0_eval", "augmented_seed0",
              "augmented_seed0_eval"}


def run_names(runs) -> set[str]:
    return set(runs["tags.mlflow.runName"]) if len(runs) else set()


def search_runs(tracking_uri: str, **kwargs):
    """``mlflow.search_runs`` over every experiment of the store; MLflow's global URI (and the
    MLFLOW_TRACKING_URI it sets, which MONAI's handler would prefer to its argument) is put back."""
    import mlflow

    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(tracking_uri)
    try:
        return mlflow.search_runs(search_all_experiments=True, **kwargs)
    finally:
        mlflow.set_tracking_uri(previous)  # None unsets both


@pytest.fixture(scope="module")
def pipeline_run(tiny_pipeline):
    """conftest's tiny pipeline (stages data to edm_synth, 5 training and 2 test cases for the experiment's
    comparison), then its scar_seg stage (the cascade: a localizer, then both arms' ROI networks, on budgets of
    seconds) into the same output folder and MLflow store."""
    root, out, real = tiny_pipeline["root"], tiny_pipeline["out"], tiny_pipeline["datalist"]
    preset = dict(TINY, scar_seg={"experiment": {
        "preset": "smoke", "budget_minutes": 0.03, "localizer_minutes": 0.02, "seeds": "0",
        "num_workers": 0, "calibrate": False, "min_scar_ml": 0, "n_boot": 50,
        "overrides": {"log_every": 100}, "evaluate_overrides": {"mirror_axes": []}}})
    (root / "tiny_scar_seg.yaml").write_text(yaml.safe_dump(preset))
    with torch_threads(1):
        syn = write_tiny_datalist(out / "synthetic", n_cases=3, scar_degrees=120.0, noise=30.0)  # over the decodes
        write_datalist(syn, [{**e, "id": f"syn_{i + 1:04d}", "synthetic": True} for i, e in enumerate(load_datalist(syn))])
        Pipeline(out, root / "tiny_scar_seg.yaml", data=real, stages=("scar_seg",)).run()
    return {"root": root, "out": out, "uri": tiny_pipeline["uri"]}


def test_every_pipeline_run_carries_the_six_tags(pipeline_run):
    runs = search_runs(pipeline_run["uri"])
    assert run_names(runs) == STAGE_RUNS
    for tag in STANDARD_TAGS:
        assert f"tags.{tag}" in runs, f"no run has tag {tag!r}"
        missing = runs.loc[runs[f"tags.{tag}"].fillna("").str.strip() == "", "tags.mlflow.runName"].tolist()
        assert not missing, f"runs without tag {tag!r}: {missing}"
    # one value per pipeline: its preset, its data set (the datalist's folder), this checkout
    assert set(runs["tags.preset"]) == {"tiny"}
    assert set(runs["tags.dataset"]) == {"data"}
    assert runs["tags.git_commit"].nunique() == 1
    by_name = runs.set_index("tags.mlflow.runName")
    assert by_name.loc["inr_fit_train", "tags.stage"] == "fit"
    assert set(by_name["tags.seed"]) == {"0"}  # evaluate configs have no seed: the stage's training seed


def test_bundle_tag_finds_the_experiment_runs_and_keeps_their_own_tags(pipeline_run):
    runs = search_runs(pipeline_run["uri"], filter_string="tags.bundle = 'scar_seg'")
    assert run_names(runs) == {"localizer", "baseline_seed0", "baseline_seed0_eval", "augmented_seed0",
                                                "augmented_seed0_eval"}
    trained = runs[runs["tags.stage"] == "train"].set_index("tags.mlflow.runName")["tags.cascade_stage"]
    assert trained.to_dict() == {"localizer": "localizer", "baseline_seed0": "roi", "augmented_seed0": "roi"}
    runs = runs[runs["tags.mlflow.runName"] != "localizer"]
    assert set(zip(runs["tags.condition"], runs["tags.stage"])) == {
        ("baseline", "train"), ("baseline", "evaluate"), ("augmented", "train"), ("augmented", "evaluate")}
    for bundle, count in (("inr_fit", 2), ("inr2vec", 2), ("edm_synth", 2)):
        assert len(search_runs(pipeline_run["uri"], filter_string=f"tags.bundle = '{bundle}'")) == count


def test_a_bundle_run_by_hand_gets_the_defaults(pipeline_run, tmp_path):
    """inr_fit evaluate.yaml outside the pipeline: preset "none", no seed in the config ("none"), and the
    data set followed from the bank back to the datalist its subjects came from."""
    from monai.bundle import run

    from conftest import REPO

    configs = REPO / "bundles" / "inr_fit" / "configs"
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    with torch_threads(1):
        run(config_file=str(configs / "evaluate.yaml"), meta_file=str(configs / "metadata.json"), logging_file=False,
            bank_dir=str(pipeline_run["out"] / "inr_fit"), output_dir=str(tmp_path / "eval"), tracking="mlflow",
            tracking_uri=uri, experiment_name="by_hand", run_name="inr_fit_evaluate")
    runs = search_runs(uri)
    assert len(runs) == 1
    tags = {t: runs.loc[0, f"tags.{t}"] for t in STANDARD_TAGS}
    assert tags["bundle"] == "inr_fit" and tags["stage"] == "evaluate" and tags["git_commit"]
    assert (tags["preset"], tags["dataset"], tags["seed"]) == ("none", "data", "none")


def test_dataset_name_follows_the_documented_rules(tmp_path):
    named = write_datalist(tmp_path / "imported" / "datalist.json", [], name="EMIDEC")
    assert dataset_name(named) == "EMIDEC"  # the importers record a name
    plain = write_datalist(tmp_path / "cohort_a" / "datalist.json", [])
    assert dataset_name(plain) == "cohort_a"  # else the datalist's folder
    (tmp_path / "cohort_a" / "phantom.json").write_text("{}")
    assert dataset_name(plain) == "phantom"  # make_phantom_cohort writes phantom.json beside it
    bank = fit_tiny_bank(write_tiny_datalist(tmp_path / "cohort_b", n_cases=2), tmp_path / "bank", (24, 24, 6))
    assert dataset_name(bank) == "cohort_b"  # a bank: back to its subjects' datalist
    assert dataset_name(tmp_path / "nowhere") is None and dataset_name(None) is None


ENGINE_SCRIPT = """
import sys
from ignite.engine import Engine
from monai.handlers import MLFlowHandler
from lgesynth.engines.tracking import RunInfoHandler

uri, fail_at = sys.argv[1], int(sys.argv[2])

def step(engine, batch):
    if engine.state.iteration == fail_at:
        raise RuntimeError("stopped on purpose")
    return [1.0]  # MLFlowHandler logs output[0] as the loss

engine = Engine(step)
tracking = MLFlowHandler(tracking_uri=uri, experiment_name="exit", run_name=f"fail_at_{fail_at}", close_on_complete=True)
tracking.attach(engine)
RunInfoHandler(tags={"bundle": "test"}, handlers=[tracking]).attach(engine)
engine.run(range(5), max_epochs=1)
"""


def test_a_run_whose_engine_raised_is_ended_as_failed_not_left_running(tmp_path):
    import subprocess
    import sys

    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    script = tmp_path / "engine.py"
    script.write_text(ENGINE_SCRIPT)
    for fail_at in (3, 0):  # 0: never fails, the engine completes
        done = subprocess.run([sys.executable, str(script), uri, str(fail_at)], capture_output=True, text=True, timeout=120)
        assert (done.returncode != 0) == (fail_at > 0), done.stderr[-2000:]
        assert fail_at == 0 or "stopped on purpose" in done.stderr  # the engine's own error still reaches the user
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    runs = {r.info.run_name: r.info.status for e in client.search_experiments() for r in client.search_runs([e.experiment_id])}
    assert runs == {"fail_at_3": "FAILED", "fail_at_0": "FINISHED"}
