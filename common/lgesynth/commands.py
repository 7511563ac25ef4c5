"""Implementations of the ``lgesynth`` CLI commands (see ``cli.py``).

Each command prints what it wrote and returns nothing (fire would echo a return value), except
where a value is the answer (``check-data`` exits non-zero when it finds problems).
"""

from __future__ import annotations

import sys
from pathlib import Path


def phantom(out: str = "runs/phantom", subjects: int = 20, seed: int = 0, test_fraction: float = 0.2) -> None:
    """Write a procedural LGE phantom cohort: NIfTI pairs, datalist.json and montage.png.

    Args:
        out: output folder (created).
        subjects: number of subjects.
        seed: random seed; same seed, same bytes.
        test_fraction: fraction held out as the "test" section (stratified by scar / no scar).
    """
    from lgesynth.data.phantom_cohort import make_phantom_cohort

    datalist = make_phantom_cohort(out, subjects=int(subjects), seed=int(seed), test_fraction=float(test_fraction))
    print(f"wrote {subjects} phantom subjects: {datalist} (montage: {Path(datalist).parent / 'montage.png'})")


def import_emidec(src: str, out: str, test_fraction: float = 0.2, seed: int = 0, skip_bad: bool = False) -> None:
    """Import an EMIDEC-layout folder (Case_X/Images, Case_X/Contours) into our layout + datalist.

    Labels map EMIDEC's 1 cavity, 2 myocardium, 3 infarct, 4 no-reflow to ours: myocardium {2,3,4},
    scar {3,4}. Bad cases stop the import (all listed); ``--skip_bad`` leaves them out instead.
    """
    from lgesynth.data.importers import import_emidec as _import

    datalist = _import(src, out, test_fraction=float(test_fraction), seed=int(seed), skip_bad=bool(skip_bad))
    print(f"imported EMIDEC cases from {src}: {datalist}")


def import_masks(images: str, myocardium: str, scar: str, out: str, test_fraction: float = 0.2, seed: int = 0,
                 skip_bad: bool = False, clip_scar: bool = False) -> None:
    """Import images with separate myocardium and scar mask files (folders or ``*`` globs, matched by id).

    Scar outside the myocardium is an error unless ``--clip_scar`` (then dropped with a warning).
    """
    from lgesynth.data.importers import import_masks as _import

    datalist = _import(images, myocardium, scar, out, test_fraction=float(test_fraction), seed=int(seed),
                       skip_bad=bool(skip_bad), clip_scar=bool(clip_scar))
    print(f"imported image/mask cases: {datalist}")


def check_data(datalist: str) -> None:
    """Validate every image/label pair of a datalist; print all problems; exit 1 when any."""
    from lgesynth.data.validate import check_datalist

    problems = check_datalist(datalist)
    for problem in problems:
        print(problem)
    if problems:
        print(f"check-data: {len(problems)} problem(s) in {datalist}", file=sys.stderr)
        sys.exit(1)
    print(f"check-data: {datalist}: all pairs OK")


def stats(*datalists: str, out: str | None = None) -> None:
    """Dataset fingerprint (spacing, shape, slices, myocardial volume, scar burden, contrasts).

    Prints a table (side by side when given several datalists) and writes JSON: ``--out PATH`` for
    one datalist, else ``fingerprint.json`` beside each datalist.
    """
    from lgesynth.data.fingerprint import compare_table, fingerprint, fingerprint_table, write_fingerprint

    if not datalists:
        raise SystemExit("lgesynth stats: give at least one datalist.json")
    prints = []
    for i, datalist in enumerate(datalists):
        fp = fingerprint(datalist)
        target = Path(out) if (out and len(datalists) == 1) else Path(datalist).parent / "fingerprint.json"
        write_fingerprint(target, fp)
        print(f"fingerprint of {datalist} -> {target}")
        prints.append(fp)
    if len(prints) == 1:
        print(fingerprint_table(prints[0]))
    else:
        names = [Path(d).parent.name or str(d) for d in datalists]
        print(compare_table(prints[0], prints[1], names[:2]) if len(prints) == 2 else "\n".join(fingerprint_table(p) for p in prints))


def experiment(real: str, synthetic: str, out: str, seeds="0,1,2", preset: str = "cpu", budget_minutes: float | None = None,
               synthetic_ratio=0.5, tracking_uri: str | None = None, experiment_name: str = "scar_seg_experiment",
               plan: str | None = None, num_workers: int | None = None, calibrate: bool = True, min_scar_ml="auto",
               cascade: bool = True, localizer_minutes: float | None = None) -> None:
    """Baseline (real only) vs augmented (real + synthetic) scar_seg, same plan, seeds and budget.

    Trains and evaluates both arms per seed through the scar_seg bundle configs, tracked in one MLflow
    experiment (default ``sqlite:///OUT/mlruns.db``), then writes OUT/comparison.json, .md and .png
    (paired over the real test cases). Run again to resume: finished arms are skipped.

    Args:
        real: datalist with "training" and "test" sections (the test set of both arms).
        synthetic: the synthetic cohort's datalist (edm_synth), used for training only.
        out: experiment folder.
        seeds: comma-separated seeds, e.g. 0,1,2.
        preset: planning preset (smoke | cpu | paper) for OUT/plan.json when it is made.
        budget_minutes: training budget per arm (default: the preset's).
        synthetic_ratio: the augmented arm's synthetic share of samples, in [0, 1], or "all".
        tracking_uri: MLflow tracking URI.
        experiment_name: MLflow experiment name.
        plan: an existing plan.json to use for both arms instead of planning.
        num_workers: data loader workers of the training config.
        calibrate: time one step of the planned network on this machine and re-plan so that the budget
            holds here (--nocalibrate: plan from the stored cost model alone).
        min_scar_ml: scar components under this volume (ml) become myocardium: "auto" chooses it per arm
            on the arm's validation cases (nnU-Net-style), a number fixes it (0: predictions as they are).
        cascade: a heart-ROI cascade (a localizer trained once, then each arm's network inside the heart's box);
            --nocascade: single-stage networks over the whole field of view.
        localizer_minutes: the localizer's training budget (default: the preset's).
    """
    import logging

    from lgesynth.seg.experiment import run_experiment

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s - %(name)s - %(levelname)s - %(message)s")
    run_experiment(real, synthetic, out, seeds=seeds, preset=preset, budget_minutes=budget_minutes,
                   synthetic_ratio=synthetic_ratio, tracking_uri=tracking_uri, experiment_name=experiment_name,
                   plan=plan, num_workers=num_workers, calibrate=calibrate, min_scar_ml=min_scar_ml, cascade=cascade,
                   localizer_minutes=localizer_minutes)


def pipeline(data: str | None = None, out: str = "runs/pipeline", preset: str = "smoke", tracking_uri: str | None = None,
             experiment_name: str | None = None, stages: str | None = None) -> None:
    """The main job: inr_fit -> inr2vec -> edm_synth -> scar_seg experiment -> report.html.

    Args:
        data: a datalist (e.g. from ``lgesynth import-emidec``); default: a fresh phantom cohort.
        out: output folder; run again to resume (finished stages are skipped).
        preset: smoke | cpu | paper, or the path of a copied and edited preset YAML.
        tracking_uri: MLflow tracking URI (default ``sqlite:///OUT/mlruns.db``).
        experiment_name: MLflow experiment (default ``lgesynth_<preset>``).
        stages: comma-separated subset, e.g. ``data,inr_fit``.
    """
    import logging

    from lgesynth.pipeline import run_pipeline

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s - %(name)s - %(levelname)s - %(message)s")
    times = run_pipeline(out, preset, data, tracking_uri, experiment_name, stages)
    print(f"pipeline done in {Path(out)}: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in times.items()))
    print(f"report: {Path(out) / 'report.html'}")


def compare(experiment: str | None = None, tracking_uri: str = "sqlite:///runs/pipeline/mlruns.db",
            metrics: str = "psnr_mean,dice_myo_mean,dice_scar_mean,psnr_test,dice_myo_test,dice_scar_test,"
                           "plausible_fraction,copies_flagged,test_dice_myo,test_dice_scar",
            png: str | None = None) -> None:
    """Print (and optionally plot) the runs of an MLflow experiment side by side, from MLflow's API.

    Args:
        experiment: experiment name (default: every experiment in the store).
        tracking_uri: the store, e.g. ``sqlite:///runs/pipeline/mlruns.db``.
        metrics: comma-separated metric keys to show when present.
        png: write a bar chart of the shown metrics per run to this path.
    """
    from lgesynth.compare import compare_runs

    print(compare_runs(tracking_uri, experiment, [m for m in metrics.split(",") if m], png))


def pack(bundle_dir: str, out: str = ".", large_mb: float = 25.0, url_base: str = "") -> None:
    """Zip a trained bundle for the MONAI model zoo: ``OUT/<name>_v<version>.zip`` (see ``lgesynth.pack``).

    Args:
        bundle_dir: the bundle folder (above configs/), e.g. bundles/edm_synth after training, or bundles/scar_seg
            trained with --models_dir bundles/scar_seg/models.
        out: folder the zip is written to.
        large_mb: model files above this size are listed in ``large_files.yml`` (the zoo's 25 MB rule).
        url_base: where you will host those files (their ``url`` is url_base/models/<file>).
    """
    from lgesynth.pack import pack_bundle

    target = pack_bundle(bundle_dir, out, float(large_mb), url_base)
    name = Path(bundle_dir).resolve().name
    print(f"wrote {target}\nserve it and fetch it with: python -m monai.bundle download --name {name} "
          f"--url <URL of {target.name}> --bundle_dir <folder>")
