"""The scar_seg experiment: does adding synthetic volumes improve the segmenter? (issue 7)

``lgesynth experiment --real DATALIST --synthetic DATALIST --out DIR [--seeds 0,1,2]`` trains two arms
per seed with the scar_seg bundle's own configs (``monai.bundle.run`` in this process, the code path
of ``python -m monai.bundle run``):

- **baseline**: the real datalist's training cases only;
- **augmented**: the same, with the synthetic cohort mixed in at ``synthetic_ratio`` of every epoch's
  samples (:class:`lgesynth.seg.data.MixedSampler`).

Both arms of every seed use one plan (``DIR/plan.json``, made once from the real training cases, or
``--plan``), hence the same network, patch, iterations and budget, and the same seed (the same
validation hold-out and initialisation). By default that plan is the ROI stage of a heart-ROI cascade
(:mod:`lgesynth.seg.cascade_plan`): its localizer is trained once, on the real training cases, into
``DIR/localizer/`` before any arm, and every arm ships it beside its own network (``cascade=False``:
single-stage networks over the whole field of view). Each model is evaluated with ``evaluate.yaml`` on the real
datalist's ``test`` section, after nnU-Net-style post-processing chosen on that arm's own validation
cases (``--min_scar_ml auto``: scar specks under the chosen volume become myocardium,
:func:`lgesynth.seg.postprocess.choose_min_scar_ml`; ``postprocess.json``); when the clean-up changes
anything the same network pass also scores the test cases as predicted (``eval_raw/``,
``comparison.json["as_predicted"]``). Everything is tracked in one MLflow experiment
(:mod:`lgesynth.seg.experiment_tracking`): training run ``<condition>_seed<seed>``, evaluation run
``<condition>_seed<seed>_eval`` (``test_<metric>`` after the clean-up, ``test_raw_<metric>`` as predicted).

Statistics: :mod:`lgesynth.seg.experiment_stats` (per-case Dice averaged over seeds, arms compared
paired over cases). Outputs: :mod:`lgesynth.seg.experiment_report` (``comparison.json``,
``comparison.md``, also printed, ``comparison.png``).

Layout of ``DIR``: ``plan.json``, ``localizer/`` (a cascade's stage 1: ``plan.json``, ``models/``), ``mlruns.db`` + ``mlruns/``, ``<condition>_seed<seed>/`` (a training
``output_dir``: ``plan.json``, ``models/``, ``train_log.json``; ``val_eval/`` (validation predictions),
``postprocess.json``, ``eval/metrics.csv``, ..., ``eval_raw/``; :class:`lgesynth.seg.experiment_arms.Arm`),
``comparison.*``. Resume: an arm whose final checkpoint (after all planned epochs) and evaluation exist
is skipped; an arm stopped mid-training is started again and the bundle resumes from its checkpoint.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from lgesynth.errors import DataError
from lgesynth.io import write_json
from lgesynth.seg.cascade_plan import plan_stage
from lgesynth.seg.experiment_arms import CONDITIONS, Arm
from lgesynth.seg.experiment_report import write_comparison
from lgesynth.seg.experiment_stats import N_BOOTSTRAP, compare
from lgesynth.seg.experiment_tracking import (bundle_tracking, delete_runs, eval_run_name, explicit_tracking_uri,
                                              tag_arm_runs)

logger = logging.getLogger("lgesynth.experiment")


def bundle_run(config: str, logging_file, **overrides) -> None:
    """``monai.bundle.run`` of the scar_seg bundle's ``configs/<config>`` in this process, with ``overrides``."""
    from monai.bundle import run

    from lgesynth.bundles import bundle_dir

    configs = bundle_dir("scar_seg") / "configs"  # the repository's (editable install) or the wheel's
    run(config_file=str(configs / config), meta_file=str(configs / "metadata.json"), logging_file=logging_file,
        **overrides)


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


def parse_seeds(seeds) -> list[int]:
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
            bundle_run("evaluate.yaml", logging_file, datalist=str(datalist), train_dir=str(arm.folder),
                        output_dir=str(folder), save_predictions=True, min_scar_ml=0.0, n_png=0,
                        save_execute_config=str(folder / "config_evaluate.json"), **evaluate_overrides)
            record = choose_min_scar_ml(val, folder / "predictions")
    write_json(arm.postprocess_json, record)
    logger.info("%s: min_scar_ml %.2f ml (%s)", arm.run_name, record["min_scar_ml"], record["rule"])
    return record


def _evaluate(arm: Arm, real: Path, min_scar_ml: float, tracking: dict, logging_file, evaluate_overrides: dict) -> None:
    """evaluate.yaml on the real test section into ``arm.folder/eval`` (and, when ``min_scar_ml`` > 0, the
    same predictions as predicted into ``eval_raw``), replacing an older MLflow run ``<arm>_eval``."""
    run_name = eval_run_name(arm)
    delete_runs(tracking["tracking_uri"], tracking["experiment_name"], run_name)
    raw = {"raw_output_dir": str(arm.raw_metrics_csv.parent)} if min_scar_ml > 0 else {}
    bundle_run("evaluate.yaml", logging_file, datalist=str(real), train_dir=str(arm.folder),
                output_dir=str(arm.metrics_csv.parent), run_name=run_name, min_scar_ml=min_scar_ml,
                save_execute_config=str(arm.metrics_csv.parent / "config_evaluate.json"),
                **raw, **evaluate_overrides, **tracking)


def _train_localizer(out: Path, real: Path, preset: str, budget_minutes, calibrate: bool, overrides: dict,
                     tracking: dict, logging_file) -> Path:
    """Stage 1 of the cascade, once per experiment (resumed or skipped like an arm): ``DIR/localizer/models``."""
    from lgesynth.seg.data import ensure_plan

    folder = out / "localizer"
    if not (folder / "models" / "model.pt").is_file():
        ensure_plan(None, real, folder, preset=preset, budget_minutes=budget_minutes, calibrate=calibrate,
                    stage="localizer")
        logger.info("localizer: training in %s", folder)
        keep = {k: v for k, v in overrides.items() if k in ("num_workers", "val_interval", "log_every", "run_tags")}
        bundle_run("train.yaml", logging_file, datalist=str(real), output_dir=str(folder),
                    plan_path=str(folder / "plan.json"), seed=0, run_name="localizer",
                    save_execute_config=str(folder / "config_train.json"), **keep, **tracking)
    return folder / "models"


def _run_arm(arm: Arm, real: Path, synthetic: Path, synthetic_ratio, plan_path: Path, epochs: int, overrides: dict,
             tracking: dict, logging_file, min_scar_ml="auto", evaluate_overrides: dict | None = None) -> dict:
    """Train (unless trained), choose the post-processing, evaluate (unless evaluated), tag the MLflow runs.

    Test evaluation: ``eval/`` (run ``<arm>_eval``) with the chosen ``min_scar_ml``; when that is > 0 the same
    pass also writes ``eval_raw/`` (the predictions as predicted; ``test_raw_<metric>`` in the same run).
    """
    augmented = arm.condition == "augmented"
    t0, did = time.perf_counter(), []
    evaluate_overrides = evaluate_overrides or {}
    if not arm.trained(epochs):
        logger.info("%s: training in %s", arm.run_name, arm.folder)
        data = {"synthetic_datalist": str(synthetic), "synthetic_ratio": synthetic_ratio} if augmented else {}
        bundle_run("train.yaml", logging_file, datalist=str(real), output_dir=str(arm.folder), plan_path=str(plan_path),
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
    tag_arm_runs(tracking, arm, real, synthetic, synthetic_ratio, plan_path, chosen)
    done = {"did": did or ["skipped (done)"], "seconds": round(time.perf_counter() - t0, 1)}
    logger.info("%s: %s in %.1f s", arm.run_name, ", ".join(done["did"]), done["seconds"])
    return done


def run_experiment(real: str | Path, synthetic: str | Path, out: str | Path, seeds=(0, 1, 2), preset: str = "cpu",
                   budget_minutes: float | None = None, synthetic_ratio=0.5, tracking_uri: str | None = None,
                   experiment_name: str = "scar_seg_experiment", plan: str | Path | None = None,
                   num_workers: int | None = None, overrides: dict | None = None, logging_file=False,
                   n_boot: int = N_BOOTSTRAP, calibrate: bool = True, min_scar_ml="auto",
                   evaluate_overrides: dict | None = None, cascade: bool = True,
                   localizer_minutes: float | None = None) -> dict:
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
        cascade: plan the arms as the ROI stage of a heart-ROI cascade and train its localizer first (module
            doc); False: single-stage networks. A given ``plan`` says its own stage.
        localizer_minutes: the localizer's training budget (default: the preset's ``localizer_minutes``).
    """
    from lgesynth.seg.data import ensure_plan

    real, synthetic, out = Path(real).resolve(), Path(synthetic).resolve(), Path(out).resolve()
    seeds = parse_seeds(seeds)
    _check_inputs(real, synthetic)
    out.mkdir(parents=True, exist_ok=True)
    the_plan = ensure_plan(plan, real, out, preset=preset, budget_minutes=budget_minutes, calibrate=calibrate,
                           stage="roi" if cascade else "full")
    plan_path = out / "plan.json"
    tracking = bundle_tracking(out, tracking_uri, experiment_name)
    tracking_uri = tracking["tracking_uri"]
    overrides = dict(overrides or {})
    if num_workers is not None:
        overrides["num_workers"] = int(num_workers)
    if plan_stage(the_plan) == "roi":
        with explicit_tracking_uri():
            overrides["localizer_dir"] = str(_train_localizer(out, real, preset, localizer_minutes, calibrate, overrides,
                                                              tracking, logging_file))
    epochs = int(overrides.get("max_epochs", the_plan["training"]["epochs"]))

    arms = [Arm(c, s, out / f"{c}_seed{s}") for s in seeds for c in CONDITIONS]
    with explicit_tracking_uri():
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
                              "train_minutes": {a.run_name: round(a.train_seconds() / 60.0, 3) for a in arms},
                              "trained_epochs": {a.run_name: a.trained_epochs() for a in arms}},
                      this_invocation=ran)
    table = write_comparison(out, comparison)
    print(table)
    print(f"wrote {out / 'comparison.json'}, comparison.md, comparison.png; MLflow: {tracking_uri} ({experiment_name})")
    return comparison
