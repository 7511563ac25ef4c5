"""The scar_seg experiment: does adding synthetic volumes improve the segmenter? (issue 7)

``lgesynth experiment --real DATALIST --synthetic DATALIST --out DIR [--seeds 0,1,2]`` trains two arms
per seed with the scar_seg bundle's own configs (``monai.bundle.run`` in this process, the code path
of ``python -m monai.bundle run``):

- **baseline**: the real datalist's training cases only;
- **augmented**: the same, with the synthetic cohort mixed in at ``synthetic_ratio`` of every epoch's
  samples (:class:`lgesynth.seg.data.MixedSampler`).

Both arms of every seed use one plan (``DIR/plan.json``, made once from the real training cases, or
``--plan``), hence the same network, patch, iterations and budget, and the same seed (the same
validation hold-out and initialisation). Each model is evaluated with ``evaluate.yaml`` on the real
datalist's ``test`` section, after nnU-Net-style post-processing chosen on that arm's own validation
cases (``--min_scar_ml auto``: scar specks under the chosen volume become myocardium,
:func:`lgesynth.seg.postprocess.choose_min_scar_ml`; ``postprocess.json``); when the clean-up changes
anything the same network pass also scores the test cases as predicted (``eval_raw/``,
``comparison.json["as_predicted"]``). Everything is tracked in one MLflow experiment (default
``sqlite:///DIR/mlruns.db``): training run ``<condition>_seed<seed>``, evaluation run
``<condition>_seed<seed>_eval`` (``test_<metric>`` after the clean-up, ``test_raw_<metric>`` as predicted,
tag ``min_scar_ml``), all tagged ``condition``, ``seed`` and ``stage``.

Statistics (:func:`compare`): per test case the Dice of each arm is averaged over seeds, then the
arms are compared **paired over cases**: the mean difference (augmented - baseline), its 95 %
bootstrap CI (resampling cases, seeded), and Wilcoxon's signed-rank test, or a paired t-test when
there are fewer than ``MIN_WILCOXON_CASES`` cases (the exact two-sided Wilcoxon p-value cannot go
below 2 / 2^n, 0.0625 for n = 5). Outputs: ``comparison.json``, ``comparison.md`` (also printed),
``comparison.png`` (Dice per region, both arms, 95 % CI bars).

Layout of ``DIR``: ``plan.json``, ``mlruns.db`` + ``mlruns/``, ``<condition>_seed<seed>/`` (a training
``output_dir``: ``plan.json``, ``models/``, ``train_log.json``; ``val_eval/`` (validation predictions),
``postprocess.json``, ``eval/metrics.csv``, ..., ``eval_raw/``), ``comparison.*``.
Resume: an arm whose final checkpoint (after all planned epochs) and evaluation exist is skipped;
an arm stopped mid-training is started again and the bundle resumes from its checkpoint.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lgesynth.errors import DataError
from lgesynth.io import atomic_path, write_json
from lgesynth.seg.regions import REGIONS

logger = logging.getLogger("lgesynth.experiment")
CONFIGS = Path(__file__).resolve().parents[3] / "bundles" / "scar_seg" / "configs"
CONDITIONS = ("baseline", "augmented")
STRUCTURES = {"myo": "myocardium", "scar": "scar"}
OVERALL_KEYS = tuple(f"dice_{s}" for s in STRUCTURES)
REGION_KEYS = tuple(f"dice_{s}_{r}" for s in STRUCTURES for r in REGIONS)
MIN_WILCOXON_CASES = 6
N_BOOTSTRAP = 10_000


# ---------------------------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------------------------


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)


def _nanmean(values, axis=None):
    """``np.nanmean`` without the warning for all-NaN slices (they stay NaN)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(np.asarray(values, dtype=np.float64), axis=axis)


def bootstrap_ci(values, n_boot: int = N_BOOTSTRAP, seed: int = 0, level: float = 0.95) -> list[float | None]:
    """Percentile bootstrap CI of the mean of ``values`` (n,), resampling the n values with replacement."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return [None, None]
    idx = np.random.default_rng(seed).integers(0, values.size, size=(n_boot, values.size))
    means = values[idx].mean(axis=1)
    alpha = 100.0 * (1.0 - level) / 2.0
    return [float(np.percentile(means, alpha)), float(np.percentile(means, 100.0 - alpha))]


def paired_statistics(baseline, augmented, n_boot: int = N_BOOTSTRAP, seed: int = 0) -> dict:
    """Paired comparison of two arms over the same cases; pairs with a NaN on either side are dropped.

    Args:
        baseline, augmented: (cases,) one value per case each, in the same case order.
    Returns:
        ``{"mean_difference", "ci95", "test", "p_value", "n"}``: mean of augmented - baseline, its
        bootstrap CI over cases, ``"wilcoxon"`` (scipy's signed-rank, two-sided) for >=
        ``MIN_WILCOXON_CASES`` pairs else ``"t"`` (scipy's paired t-test); p is 1 when every
        difference is 0, None when undefined (fewer than 2 pairs for t).
    """
    from scipy import stats

    b, a = np.asarray(baseline, np.float64), np.asarray(augmented, np.float64)
    assert b.shape == a.shape, f"paired arms differ in length: {b.shape} vs {a.shape}"
    keep = np.isfinite(b) & np.isfinite(a)
    d = a[keep] - b[keep]
    n = int(d.size)
    test = "wilcoxon" if n >= MIN_WILCOXON_CASES else "t"
    if n == 0:
        p = None
    elif np.all(d == 0):
        p = 1.0
    elif test == "wilcoxon":
        p = float(stats.wilcoxon(d).pvalue)
    else:
        p = float(stats.ttest_rel(a[keep], b[keep]).pvalue) if n >= 2 else None
    return {"mean_difference": _finite(d.mean()) if n else None, "ci95": bootstrap_ci(d, n_boot, seed),
            "test": test, "p_value": _finite(p), "n": n}


def arm_summary(per_case: dict[str, np.ndarray], n_boot: int = N_BOOTSTRAP, seed: int = 0) -> dict:
    """Means over cases (NaN cases left out) and their bootstrap CIs for every Dice key of one arm."""
    means, ci = {}, {}
    for key in OVERALL_KEYS + REGION_KEYS:
        v = per_case[key][np.isfinite(per_case[key])]
        means[key] = _finite(v.mean()) if v.size else None
        ci[key] = bootstrap_ci(v, n_boot, seed)
    return {**{k: means[k] for k in OVERALL_KEYS}, "per_region": {k: means[k] for k in REGION_KEYS}, "ci95": ci}


# ---------------------------------------------------------------------------------------------
# arms
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Arm:
    """One (condition, seed) of the experiment; ``folder`` is its training ``output_dir``."""

    condition: str
    seed: int
    folder: Path

    @property
    def run_name(self) -> str:
        return f"{self.condition}_seed{self.seed}"

    @property
    def final_checkpoint(self) -> Path:
        return self.folder / "models" / "model_final.pt"

    @property
    def metrics_csv(self) -> Path:
        """Test metrics with the arm's post-processing (``min_scar_ml`` chosen on its validation cases)."""
        return self.folder / "eval" / "metrics.csv"

    @property
    def raw_metrics_csv(self) -> Path:
        """Test metrics as predicted: ``eval_raw/`` when the post-processing changes anything, else ``eval/``."""
        raw = self.folder / "eval_raw" / "metrics.csv"
        return raw if self.min_scar_ml() > 0 else self.metrics_csv

    @property
    def postprocess_json(self) -> Path:
        return self.folder / "postprocess.json"

    def min_scar_ml(self) -> float:
        return float(json.loads(self.postprocess_json.read_text())["min_scar_ml"]) if self.postprocess_json.exists() else 0.0

    def postprocess_chosen(self, min_scar_ml) -> bool:
        """``postprocess.json`` is newer than the final checkpoint and made by the same rule (auto / fixed)."""
        if not (self.postprocess_json.exists() and self.final_checkpoint.exists()):
            return False
        record = json.loads(self.postprocess_json.read_text())
        same_rule = record.get("fixed") is None if min_scar_ml == "auto" else record.get("fixed") == float(min_scar_ml)
        return same_rule and self.postprocess_json.stat().st_mtime >= self.final_checkpoint.stat().st_mtime

    def trained(self, epochs: int) -> bool:
        """The final checkpoint exists and the log reached ``epochs`` (MONAI also saves a "final"
        checkpoint when training raises, so the file alone does not mean finished)."""
        log = self.folder / "train_log.json"
        if not (self.final_checkpoint.exists() and log.exists()):
            return False
        entries = json.loads(log.read_text())
        return bool(entries) and entries[-1]["epoch"] >= epochs

    def evaluated(self, csv_path: Path | None = None) -> bool:
        """``metrics.csv`` (default ``eval/``) and its summary exist and are newer than the final checkpoint
        and than ``postprocess.json``."""
        csv_path = csv_path or self.metrics_csv
        summary = csv_path.with_name("metrics_summary.json")
        newer_than = [self.final_checkpoint] + ([self.postprocess_json] if self.postprocess_json.exists() else [])
        return (csv_path.exists() and summary.exists()
                and all(csv_path.stat().st_mtime >= p.stat().st_mtime for p in newer_than))

    def train_seconds(self) -> float:
        """Seconds of training iterations over all (resumed) sessions, from ``train_log.json``."""
        log = self.folder / "train_log.json"
        return float(sum(e.get("seconds") or 0.0 for e in json.loads(log.read_text()))) if log.exists() else 0.0


def read_metrics_csv(path: str | Path) -> dict[str, dict[str, float]]:
    """``{case id: {metric: value}}`` from an evaluation's ``metrics.csv``."""
    with open(path, newline="") as f:
        return {row.pop("id"): {k: float(v) for k, v in row.items()} for row in csv.DictReader(f)}


def _bundle_run(config: str, logging_file, **overrides) -> None:
    from monai.bundle import run

    run(config_file=str(CONFIGS / config), meta_file=str(CONFIGS / "metadata.json"), logging_file=logging_file,
        **overrides)


def _runs_named(tracking_uri: str, experiment_name: str, run_name: str):
    """(client, runs called ``run_name`` in the experiment)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return client, []
    return client, client.search_runs([experiment.experiment_id], filter_string=f"attributes.run_name = '{run_name}'")


def _tag_runs(tracking_uri: str, experiment_name: str, run_name: str, tags: dict) -> int:
    """Set ``tags`` on every run called ``run_name`` in the experiment; returns how many."""
    client, runs = _runs_named(tracking_uri, experiment_name, run_name)
    for r in runs:
        for k, v in tags.items():
            client.set_tag(r.info.run_id, k, str(v))
    return len(runs)


def _delete_runs(tracking_uri: str, experiment_name: str, run_name: str) -> None:
    """Delete (MLflow's soft delete) the runs called ``run_name``: an evaluation that is redone
    replaces its stale or unfinished run, so the experiment keeps one evaluation per arm."""
    client, runs = _runs_named(tracking_uri, experiment_name, run_name)
    for r in runs:
        client.delete_run(r.info.run_id)


@contextlib.contextmanager
def _explicit_tracking_uri():
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


def _check_inputs(real: Path, synthetic: Path) -> None:
    from lgesynth.data.datalist import load_datalist

    sections = {e["section"] for e in load_datalist(real)}
    if "test" not in sections or "training" not in sections:
        raise DataError(real, 'the experiment needs a "training" and a "test" section: both arms train on the '
                              'first and are evaluated on the second')
    test_images = {e["image"] for e in load_datalist(real, "test")}
    leaked = [e["image"] for e in load_datalist(synthetic) if e["image"] in test_images]
    if leaked:
        raise DataError(synthetic, f"lists {len(leaked)} test image(s) of {real} (e.g. {leaked[0]}); synthetic "
                                   "cases are for training only")


def _seeds(seeds) -> list[int]:
    """0 / "0,1,2" / (0, 1, 2) -> [0, 1, 2] (fire turns ``--seeds 0,1,2`` into a tuple)."""
    if isinstance(seeds, str):
        seeds = [s for s in seeds.replace(" ", "").split(",") if s]
    elif isinstance(seeds, (int, float)):
        seeds = [seeds]
    out = [int(s) for s in seeds]
    if not out or len(set(out)) != len(out):
        raise ValueError(f"seeds must be distinct integers, got {seeds!r}")
    return out


def _choose_postprocessing(arm: Arm, real: Path, min_scar_ml, logging_file, evaluate_overrides: dict) -> dict:
    """Write ``arm.folder/postprocess.json``: ``min_scar_ml`` fixed by the caller, or (``"auto"``) chosen
    on the arm's own validation cases (the hold-out its training config made: ``val_fraction`` and
    ``seed`` of ``config_train.json``) as nnU-Net chooses its post-processing: predict them
    (``val_eval/``), score every candidate, keep the best."""
    from lgesynth.seg.data import split_training
    from lgesynth.seg.postprocess import choose_min_scar_ml

    if min_scar_ml != "auto":
        record = {"min_scar_ml": float(min_scar_ml), "fixed": float(min_scar_ml), "rule": "fixed by the caller"}
    else:
        trained_with = json.loads((arm.folder / "config_train.json").read_text())
        val = split_training(real, float(trained_with["val_fraction"]), int(trained_with["seed"]))["val"]
        if not val:
            record = {"min_scar_ml": 0.0, "n_cases": 0, "rule": "no validation cases: no post-processing"}
        else:
            folder = arm.folder / "val_eval"
            datalist = write_json(folder / "val_datalist.json", {"training": [], "test": val})  # the hold-out as "test"
            _bundle_run("evaluate.yaml", logging_file, datalist=str(datalist), train_dir=str(arm.folder),
                        output_dir=str(folder), save_predictions=True, min_scar_ml=0.0, n_png=0,
                        save_execute_config=str(folder / "config_evaluate.json"), **evaluate_overrides)
            record = choose_min_scar_ml(val, folder / "predictions")
    write_json(arm.postprocess_json, record)
    logger.info("%s: min_scar_ml %.2f ml (%s)", arm.run_name, record["min_scar_ml"], record["rule"])
    return record


def _evaluate(arm: Arm, real: Path, min_scar_ml: float, tracking: dict, logging_file, evaluate_overrides: dict) -> None:
    """evaluate.yaml on the real test section into ``arm.folder/eval`` (and, when ``min_scar_ml`` > 0, the
    same predictions as predicted into ``eval_raw``), replacing an older MLflow run ``<arm>_eval``."""
    run_name = f"{arm.run_name}_eval"
    _delete_runs(tracking["tracking_uri"], tracking["experiment_name"], run_name)
    raw = {"raw_output_dir": str(arm.raw_metrics_csv.parent)} if min_scar_ml > 0 else {}
    _bundle_run("evaluate.yaml", logging_file, datalist=str(real), train_dir=str(arm.folder),
                output_dir=str(arm.metrics_csv.parent), run_name=run_name, min_scar_ml=min_scar_ml,
                save_execute_config=str(arm.metrics_csv.parent / "config_evaluate.json"),
                **raw, **evaluate_overrides, **tracking)


def _run_arm(arm: Arm, real: Path, synthetic: Path, synthetic_ratio, plan_path: Path, epochs: int, overrides: dict,
             tracking: dict, logging_file, min_scar_ml="auto", evaluate_overrides: dict | None = None) -> dict:
    """Train (unless trained), choose the post-processing, evaluate (unless evaluated), tag the MLflow runs.

    Test evaluation: ``eval/`` (run ``<arm>_eval``) with the chosen ``min_scar_ml``; when that is > 0 the same
    pass also writes ``eval_raw/`` (the predictions as predicted; ``test_raw_<metric>`` in the same run).
    """
    augmented = arm.condition == "augmented"
    tags = {"condition": arm.condition, "seed": arm.seed, "synthetic_ratio": synthetic_ratio if augmented else 0,
            "real_datalist": real, "synthetic_datalist": synthetic if augmented else "", "plan": plan_path,
            "experiment_dir": arm.folder.parent}
    t0, did = time.perf_counter(), []
    evaluate_overrides = evaluate_overrides or {}
    if not arm.trained(epochs):
        logger.info("%s: training in %s", arm.run_name, arm.folder)
        data = {"synthetic_datalist": str(synthetic), "synthetic_ratio": synthetic_ratio} if augmented else {}
        _bundle_run("train.yaml", logging_file, datalist=str(real), output_dir=str(arm.folder), plan_path=str(plan_path),
                    seed=arm.seed, run_name=arm.run_name, save_execute_config=str(arm.folder / "config_train.json"),
                    **data, **overrides, **tracking)
        did.append("trained")
    if not arm.postprocess_chosen(min_scar_ml):
        _choose_postprocessing(arm, real, min_scar_ml, logging_file, evaluate_overrides)
        did.append("post-processing chosen")
    chosen = arm.min_scar_ml()
    if not arm.evaluated() or (chosen > 0 and not arm.evaluated(arm.raw_metrics_csv)):
        logger.info("%s: evaluating on the test section of %s (min_scar_ml %.2f)", arm.run_name, real, chosen)
        _evaluate(arm, real, chosen, tracking, logging_file, evaluate_overrides)
        did += ["evaluated", "evaluated as predicted"] if chosen > 0 else ["evaluated"]
    uri, name = tracking["tracking_uri"], tracking["experiment_name"]
    _tag_runs(uri, name, arm.run_name, {**tags, "stage": "train"})
    _tag_runs(uri, name, f"{arm.run_name}_eval", {**tags, "stage": "evaluate", "train_run": arm.run_name,
                                                   "min_scar_ml": chosen})
    done = {"did": did or ["skipped (done)"], "seconds": round(time.perf_counter() - t0, 1)}
    logger.info("%s: %s in %.1f s", arm.run_name, ", ".join(done["did"]), done["seconds"])
    return done


def run_experiment(real: str | Path, synthetic: str | Path, out: str | Path, seeds=(0, 1, 2), preset: str = "cpu",
                   budget_minutes: float | None = None, synthetic_ratio=0.5, tracking_uri: str | None = None,
                   experiment_name: str = "scar_seg_experiment", plan: str | Path | None = None,
                   num_workers: int | None = None, overrides: dict | None = None, logging_file=False,
                   n_boot: int = N_BOOTSTRAP, calibrate: bool = True, min_scar_ml="auto",
                   evaluate_overrides: dict | None = None) -> dict:
    """Train, evaluate and compare both arms for every seed (module doc); returns the comparison.

    Args:
        real: datalist of real cases with ``training`` and ``test`` sections.
        synthetic: datalist of the synthetic cohort (every entry is used for training only).
        out: experiment folder (module doc for its layout); run again to resume.
        seeds: the seeds; each trains both arms.
        preset, budget_minutes: planning preset and per-arm budget (:func:`lgesynth.seg.plan.make_plan`),
            used only when ``DIR/plan.json`` does not exist yet and ``plan`` is not given.
        synthetic_ratio: the augmented arm's synthetic share of samples (train.yaml's ``synthetic_ratio``).
        tracking_uri, experiment_name: MLflow; default ``sqlite:///<out>/mlruns.db``.
        plan: a plan JSON to use instead of planning (copied to ``DIR/plan.json``).
        num_workers: train.yaml's data loader workers (default: the config's).
        overrides: further train.yaml keys for both arms (e.g. ``{"val_interval": 2}``).
        logging_file: MONAI's ``logging_file`` (False: leave the caller's logging alone; None: the bundle's).
        n_boot: bootstrap resamples.
        calibrate: time one step of the planned network here and re-plan so that the budget holds on
            this machine (:func:`lgesynth.seg.data.ensure_plan`); only when the plan is made.
        min_scar_ml: the scar clean-up (:mod:`lgesynth.seg.postprocess`): ``"auto"`` chooses it per arm on
            the arm's validation cases, a number fixes it for both arms (0: none).
        evaluate_overrides: evaluate.yaml keys for the validation and test predictions of both arms (e.g.
            ``{"mirror_axes": []}``: one pass instead of nnU-Net's four mirrored ones).
    """
    from lgesynth.seg.data import ensure_plan

    real, synthetic, out = Path(real).resolve(), Path(synthetic).resolve(), Path(out).resolve()
    seeds = _seeds(seeds)
    _check_inputs(real, synthetic)
    out.mkdir(parents=True, exist_ok=True)
    the_plan = ensure_plan(plan, real, out, preset=preset, budget_minutes=budget_minutes, calibrate=calibrate)
    plan_path = out / "plan.json"
    tracking_uri = tracking_uri or f"sqlite:///{out / 'mlruns.db'}"
    overrides = dict(overrides or {})
    if num_workers is not None:
        overrides["num_workers"] = int(num_workers)
    epochs = int(overrides.get("max_epochs", the_plan["training"]["epochs"]))
    tracking = dict(tracking="mlflow", tracking_uri=tracking_uri, experiment_name=experiment_name)

    arms = [Arm(c, s, out / f"{c}_seed{s}") for s in seeds for c in CONDITIONS]
    with _explicit_tracking_uri():
        ran = {arm.run_name: _run_arm(arm, real, synthetic, synthetic_ratio, plan_path, epochs, overrides, tracking,
                                      logging_file, min_scar_ml, evaluate_overrides) for arm in arms}

    comparison = compare(arms, n_boot=n_boot)
    raw = compare(arms, n_boot=n_boot, as_predicted=True)
    comparison["as_predicted"] = {k: raw[k] for k in (*CONDITIONS, "paired")}
    comparison["postprocessing"] = {a.run_name: {k: v for k, v in json.loads(a.postprocess_json.read_text()).items()
                                                 if k != "per_case"} for a in arms}
    budget, iterations = the_plan["budget"], epochs * int(the_plan["training"]["iterations_per_epoch"])
    comparison.update(plan=str(plan_path), tracking_uri=tracking_uri, experiment_name=experiment_name,
                      real_datalist=str(real), synthetic_datalist=str(synthetic), synthetic_ratio=synthetic_ratio,
                      budget={"preset": budget["preset"], "budget_minutes_per_arm": budget["budget_minutes"],
                              "epochs": epochs, "iterations_per_arm": iterations,
                              "predicted_minutes_per_arm": round(budget["seconds_per_iteration"] * iterations / 60.0, 3),
                              "train_minutes": {a.run_name: round(a.train_seconds() / 60.0, 3) for a in arms}},
                      this_invocation=ran)
    write_json(out / "comparison.json", comparison)
    table = comparison_table(comparison)
    with atomic_path(out / "comparison.md") as tmp:
        tmp.write_text(table + "\n")
    save_comparison_png(out / "comparison.png", comparison)
    print(table)
    print(f"wrote {out / 'comparison.json'}, comparison.md, comparison.png; MLflow: {tracking_uri} ({experiment_name})")
    return comparison


# ---------------------------------------------------------------------------------------------
# comparison: JSON, table, figure
# ---------------------------------------------------------------------------------------------


def compare(arms: list[Arm], n_boot: int = N_BOOTSTRAP, seed: int = 0, as_predicted: bool = False) -> dict:
    """The comparison dict (without run settings) from the arms' ``eval/metrics.csv`` (module doc), or
    with ``as_predicted`` from the metrics without post-processing."""
    seeds = sorted({a.seed for a in arms})
    paths = {a: a.raw_metrics_csv if as_predicted else a.metrics_csv for a in arms}
    per_arm = {a: read_metrics_csv(paths[a]) for a in arms}
    cases = sorted(next(iter(per_arm.values())))
    for a, rows in per_arm.items():
        if sorted(rows) != cases:
            raise DataError(paths[a], f"evaluated cases {sorted(rows)} differ from {cases}; delete this eval/ "
                                           "folder and run the experiment again")
    # (condition) -> key -> (cases,) per-case value averaged over seeds
    per_case: dict[str, dict[str, np.ndarray]] = {}
    for condition in CONDITIONS:
        mine = [a for a in arms if a.condition == condition]
        per_case[condition] = {}
        for key in OVERALL_KEYS + REGION_KEYS:
            stack = np.array([[per_arm[a][c][key] for c in cases] for a in mine])  # (seeds, cases)
            per_case[condition][key] = _nanmean(stack, axis=0)
    result = {c: arm_summary(per_case[c], n_boot, seed) for c in CONDITIONS}
    for c in CONDITIONS:
        result[c]["per_seed"] = {str(a.seed): {k: _finite(_nanmean([per_arm[a][i][k] for i in cases])) for k in OVERALL_KEYS}
                                 for a in arms if a.condition == c}
    result["paired"] = {k: paired_statistics(per_case["baseline"][k], per_case["augmented"][k], n_boot, seed)
                        for k in OVERALL_KEYS + REGION_KEYS}
    result.update(seeds=seeds, cases=len(cases), case_ids=cases,
                  aggregation="per test case: mean over seeds; arms: mean over cases (NaN regions left out), "
                              f"95 % percentile bootstrap over cases ({n_boot} resamples, seed {seed}); paired over cases")
    return result


def _mean_of(arm: dict, key: str):
    return arm[key] if key in OVERALL_KEYS else arm["per_region"][key]


def _fmt(value, ci=None, signed=False) -> str:
    if value is None:
        return "n/a"
    s = f"{value:+.3f}" if signed else f"{value:.3f}"
    return s if not ci or ci[0] is None else s + f" [{ci[0]:.3f}, {ci[1]:.3f}]"


def _rows(comparison: dict, keys) -> list[str]:
    lines = []
    for key in keys:
        b, a, p = comparison["baseline"], comparison["augmented"], comparison["paired"][key]
        pv = "n/a" if p["p_value"] is None else f"{p['p_value']:.3g}"
        lines.append(f"| {key} | {_fmt(_mean_of(b, key), b['ci95'][key])} | {_fmt(_mean_of(a, key), a['ci95'][key])} | "
                     f"{_fmt(p['mean_difference'], p['ci95'], signed=True)} | {p['test']} | {pv} | {p['n']} |")
    return lines


def comparison_table(comparison: dict) -> str:
    """Markdown table: each arm's mean Dice [95 % CI], the paired difference [CI], test, p, n; the
    post-processing each arm chose on validation and, when it changed anything, the overall Dice as predicted."""
    header = ["| metric | baseline | augmented | augmented - baseline | test | p | n |", "|---|---|---|---|---|---|---|"]
    lines = [f"scar_seg experiment: {comparison['cases']} test cases, seeds {comparison['seeds']}", "", *header,
             *_rows(comparison, OVERALL_KEYS + REGION_KEYS)]
    post = comparison.get("postprocessing") or {}
    if post:
        chosen = ", ".join(f"{name} {rec['min_scar_ml']:g} ml" for name, rec in post.items())
        lines += ["", f"Scar components smaller than min_scar_ml become myocardium; chosen on each arm's validation "
                      f"cases: {chosen}."]
        if any(rec["min_scar_ml"] > 0 for rec in post.values()) and "as_predicted" in comparison:
            lines += ["", "As predicted (no clean-up):", "", *header, *_rows(comparison["as_predicted"], OVERALL_KEYS)]
    return "\n".join(lines)


def save_comparison_png(path: str | Path, comparison: dict) -> Path:
    """Bar chart: Dice per region (overall, basal, mid, apical) of both arms with 95 % CI error bars,
    one panel per structure (myocardium, scar)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = ("overall", *REGIONS)
    fig, axes = plt.subplots(1, len(STRUCTURES), figsize=(10, 3.8), sharey=True)
    x, width = np.arange(len(groups)), 0.38
    for ax, (short, name) in zip(axes, STRUCTURES.items()):
        keys = [f"dice_{short}"] + [f"dice_{short}_{r}" for r in REGIONS]
        for i, (condition, color) in enumerate(zip(CONDITIONS, ("tab:gray", "tab:orange"))):
            arm = comparison[condition]
            means = np.array([np.nan if _mean_of(arm, k) is None else _mean_of(arm, k) for k in keys])
            ci = np.array([[np.nan if v is None else v for v in arm["ci95"][k]] for k in keys])  # (groups, 2)
            err = np.nan_to_num(np.abs(np.stack([means - ci[:, 0], ci[:, 1] - means])))
            ax.bar(x + (i - 0.5) * width, np.nan_to_num(means), width, yerr=err, capsize=3, color=color, label=condition)
        ax.set_xticks(x, groups)
        ax.set_title(f"{name}: Dice (mean over test cases, 95 % CI)", fontsize=9)
        ax.set_ylim(0, 1.18)
        ax.set_yticks(np.linspace(0, 1, 6))
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("Dice")
    axes[0].legend(fontsize=8, loc="upper center", ncol=2, frameon=False)
    fig.suptitle(f"baseline vs augmented: {comparison['cases']} test cases, seeds {comparison['seeds']}", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return Path(path)
