"""MLflow run management of the scar_seg experiment.

One MLflow experiment (default store ``sqlite:///DIR/mlruns.db``) holds two runs per arm, which the
bundles create (MONAI's MLFlowHandler, from the overrides of :func:`bundle_tracking` and a
``run_name``): the training run ``<condition>_seed<seed>`` and the evaluation run
``<condition>_seed<seed>_eval`` (:func:`eval_run_name`). Like every run of the project they carry the
standard tags of :mod:`lgesynth.engines.tracking` (``bundle`` scar_seg, ``stage`` train/evaluate,
``preset``, ``dataset``, ``seed``, ``git_commit``), set by the scar_seg configs' ``RunInfoHandler`` with
the caller's ``run_tags`` (the pipeline passes its preset and dataset in ``overrides`` /
``evaluate_overrides``; "none" and the real datalist's name otherwise). This module adds the
experiment's own tags (:func:`tag_arm_runs`: ``condition``, ``seed`` (the arm's, also on the evaluation
run, whose config has none), ``synthetic_ratio``, ``real_datalist``, ``synthetic_datalist``, ``plan``,
``experiment_dir``, ``bundle`` and ``stage``; the evaluation run also ``train_run`` and ``min_scar_ml``),
deletes a stale evaluation run before it is redone, and keeps ``MLFLOW_TRACKING_URI`` from redirecting
the bundles' runs (:func:`explicit_tracking_uri`).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from pathlib import Path

from lgesynth.seg.experiment_arms import Arm

logger = logging.getLogger("lgesynth.experiment")


def mlflow_settings() -> dict:
    """MONAI's default MLflow settings (``--tracking mlflow``) with the training loss logged every ``log_every``
    iterations of train.yaml, as its StatsHandler does, instead of every iteration: one SQLite write per
    iteration cost the EMIDEC ROI plan 14 % of its training speed (0.073 against 0.085 s per iteration, 300
    iterations each way into the pipeline's store, 2-core Zen 4)."""
    from monai.bundle.utils import DEFAULT_MLFLOW_SETTINGS

    settings = copy.deepcopy(DEFAULT_MLFLOW_SETTINGS)
    settings["configs"]["trainer"]["iteration_log"] = "$lgesynth.seg.engine_utils.every(@log_every)"
    return settings


def bundle_tracking(out: Path, tracking_uri: str | None, experiment_name: str) -> dict:
    """The bundles' MLflow overrides ``{"tracking", "tracking_uri", "experiment_name"}`` (``tracking``:
    :func:`mlflow_settings`); the store defaults to ``sqlite:///<out>/mlruns.db``."""
    return dict(tracking=mlflow_settings(), tracking_uri=tracking_uri or f"sqlite:///{out / 'mlruns.db'}",
                experiment_name=experiment_name)


def eval_run_name(arm: Arm) -> str:
    """The name of an arm's test evaluation run."""
    return f"{arm.run_name}_eval"


def runs_named(tracking_uri: str, experiment_name: str, run_name: str):
    """(client, runs called ``run_name`` in the experiment)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return client, []
    return client, client.search_runs([experiment.experiment_id], filter_string=f"attributes.run_name = '{run_name}'")


def tag_runs(tracking_uri: str, experiment_name: str, run_name: str, tags: dict) -> int:
    """Set ``tags`` on every run called ``run_name`` in the experiment; returns how many."""
    client, runs = runs_named(tracking_uri, experiment_name, run_name)
    for r in runs:
        for k, v in tags.items():
            client.set_tag(r.info.run_id, k, str(v))
    return len(runs)


def delete_runs(tracking_uri: str, experiment_name: str, run_name: str) -> None:
    """Delete (MLflow's soft delete) the runs called ``run_name``: an evaluation that is redone
    replaces its stale or unfinished run, so the experiment keeps one evaluation per arm."""
    client, runs = runs_named(tracking_uri, experiment_name, run_name)
    for r in runs:
        client.delete_run(r.info.run_id)


def tag_arm_runs(tracking: dict, arm: Arm, real: Path, synthetic: Path, synthetic_ratio, plan_path: Path,
                 min_scar_ml: float) -> None:
    """Tag an arm's training and evaluation runs (module doc); ``tracking`` as :func:`bundle_tracking` makes it."""
    augmented = arm.condition == "augmented"
    tags = {"condition": arm.condition, "seed": arm.seed, "synthetic_ratio": synthetic_ratio if augmented else 0,
            "real_datalist": real, "synthetic_datalist": synthetic if augmented else "", "plan": plan_path,
            "experiment_dir": arm.folder.parent, "bundle": "scar_seg"}
    uri, name = tracking["tracking_uri"], tracking["experiment_name"]
    tag_runs(uri, name, arm.run_name, {**tags, "stage": "train"})
    tag_runs(uri, name, eval_run_name(arm), {**tags, "stage": "evaluate", "train_run": arm.run_name,
                                             "min_scar_ml": min_scar_ml})


@contextlib.contextmanager
def explicit_tracking_uri():
    """Hide ``MLFLOW_TRACKING_URI`` while the bundles run: MONAI's MLFlowHandler prefers it to the
    ``tracking_uri`` it is given, which would split the runs from the tags and the summary."""
    saved = os.environ.pop("MLFLOW_TRACKING_URI", None)
    if saved is not None:
        logger.info("MLFLOW_TRACKING_URI=%s is ignored by the experiment; pass --tracking_uri to choose the store", saved)
    try:
        yield
    finally:
        if saved is not None:
            os.environ["MLFLOW_TRACKING_URI"] = saved
