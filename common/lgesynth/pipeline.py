"""The main job: ``lgesynth pipeline --data DATALIST --out DIR --preset NAME``.

Stages, each through its bundle's own configs with ``monai.bundle.run`` (the same code path as
``python -m monai.bundle run``), all tracked in one MLflow experiment (``sqlite:///DIR/mlruns.db``
unless ``--tracking_uri``):

    data        phantom cohort (default) or the user's datalist; validated; fingerprint
    inr_fit     train.yaml -> DIR/inr_fit (bank), evaluate.yaml -> fit_metrics.csv
    inr2vec     train.yaml -> DIR/inr2vec, inference.yaml encode -> latents, evaluate.yaml
    edm_synth   train.yaml -> DIR/edm_synth, inference.yaml -> DIR/synthetic (cohort + report);
                DIR/edm_synth is a bundle folder (configs/, docs/, models/): lgesynth pack DIR/edm_synth
    scar_seg    the experiment: baseline vs augmented -> DIR/experiment/comparison.json
    report      DIR/report.html

Resume: a finished stage writes ``DIR/.stages/<stage>.json`` with the digest of its settings and
is skipped when that record matches and its outputs exist; an unfinished stage is re-entered and
the bundles resume themselves (inr_fit keeps finished subjects, the trainers their checkpoints).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import yaml

from lgesynth.bundles import bundle_dir, make_bundle_folder
from lgesynth.io import write_json

logger = logging.getLogger("lgesynth.pipeline")
PRESETS = Path(__file__).resolve().parent / "presets"
STAGES = ("data", "inr_fit", "inr2vec", "edm_synth", "scar_seg", "report")


def load_preset(preset: str | Path) -> dict:
    """A preset by name (``smoke``, ``cpu``, ``paper``) or by path to a copied/edited YAML."""
    path = Path(preset)
    if not path.suffix:
        path = PRESETS / f"{preset}.yaml"
    if not path.exists():
        from lgesynth.errors import DataError

        raise DataError(path, f"no such preset; built-in ones: {sorted(p.stem for p in PRESETS.glob('*.yaml'))}")
    return yaml.safe_load(path.read_text())


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Pipeline:
    """One pipeline run in ``out``; ``run()`` executes the stages not yet done.

    Args:
        out: output folder (everything goes under it).
        preset: preset name or YAML path.
        data: the user's datalist; None makes a phantom cohort (the embedded default).
        tracking_uri: MLflow tracking URI (default: SQLite under ``out``).
        experiment_name: MLflow experiment (default ``lgesynth_<preset>``).
        bundles: folder holding the four bundles (default: the installed package's,
            :func:`lgesynth.bundles.bundle_dir`: the repository's ``bundles/`` in an editable install).
        stages: run only these stages (names from ``STAGES``).
    """

    def __init__(self, out: str | Path, preset: str | Path = "smoke", data: str | Path | None = None,
                 tracking_uri: str | None = None, experiment_name: str | None = None,
                 bundles: str | Path | None = None, stages: tuple[str, ...] | None = None):
        self.out = Path(out).resolve()
        self.preset = load_preset(preset)
        self.data = None if data is None else Path(data).resolve()
        self.tracking_uri = tracking_uri or f"sqlite:///{self.out / 'mlruns.db'}"
        self.experiment_name = experiment_name or f"lgesynth_{self.preset.get('name', 'custom')}"
        self.bundles = Path(bundles) if bundles else None  # None: lgesynth.bundles.bundles_root()
        self.stages = tuple(stages) if stages else STAGES
        self.times: dict[str, float] = {}
        self.dataset = "phantom" if self.data is None else self.data.parent.name

    # -- plumbing -------------------------------------------------------------------------------
    def run_bundle(self, bundle: str, config: str, run_id: str = "run", track: bool = True, tags: dict | None = None,
                   **overrides) -> None:
        """``python -m monai.bundle run`` in-process, with MLflow settings of this pipeline.

        ``tags``: more MLflow tags for the run, over :meth:`run_tags` (preset, dataset, seed), passed as the
        config's ``run_tags`` (the tagging scheme: ``lgesynth.engines.tracking``)."""
        from monai.bundle import run

        configs = bundle_dir(bundle, self.bundles) / "configs"
        kwargs = dict(overrides)
        if track:
            kwargs.update(tracking="mlflow", tracking_uri=self.tracking_uri, experiment_name=self.experiment_name,
                          run_name=f"{bundle}_{Path(config).stem}" + ("" if run_id == "run" else f"_{run_id}"))
            kwargs["run_tags"] = {**self.run_tags(bundle, configs), **dict(tags or {})}
        if self.preset.get("threads"):
            kwargs.setdefault("num_threads", int(self.preset["threads"]))
        logger.info("stage %s: %s %s", bundle, config, run_id)
        run(run_id=run_id, config_file=str(configs / config), meta_file=str(configs / "metadata.json"),
            logging_file=False, **kwargs)

    def run_tags(self, bundle: str, configs: Path | None = None) -> dict:
        """The tags this pipeline gives every MLflow run of ``bundle`` (``lgesynth.engines.tracking``): ``preset``
        (the preset's name), ``dataset`` (``dataset_name`` of the datalist) and ``seed``, the stage's training
        seed (the preset's ``<bundle>.train.seed``, else ``configs/train.yaml``'s); a config's own ``seed``
        wins over it, so it tags the runs of configs without one (evaluate.yaml)."""
        from lgesynth.engines.tracking import dataset_name

        seed = dict(dict(self.preset.get(bundle) or {}).get("train") or {}).get("seed")
        train = Path(configs) / "train.yaml" if configs is not None else None
        if seed is None and train is not None and train.exists():
            seed = (yaml.safe_load(train.read_text()) or {}).get("seed")
        return {"preset": str(self.preset.get("name", "custom")), "dataset": dataset_name(self.datalist) or self.dataset,
                "seed": seed}

    def _stage_record(self, name: str) -> Path:
        return self.out / ".stages" / f"{name}.json"

    def _recorded_seconds(self, name: str) -> float | None:
        """The wall seconds a finished stage recorded, None without a record."""
        record = self._stage_record(name)
        return json.loads(record.read_text()).get("seconds") if record.exists() else None

    def _done(self, name: str, settings: dict, outputs: list[Path]) -> bool:
        record = self._stage_record(name)
        if not record.exists() or not all(Path(p).exists() for p in outputs):
            return False
        return json.loads(record.read_text()).get("digest") == _digest(settings)

    def _finish(self, name: str, settings: dict, seconds: float) -> None:
        write_json(self._stage_record(name), {"stage": name, "digest": _digest(settings), "seconds": seconds,
                                              "settings": settings})

    def stage(self, name: str, settings: dict, outputs: list[Path], body) -> None:
        """Run ``body()`` unless the stage is done with the same settings; record its wall time."""
        if name not in self.stages:
            return
        if self._done(name, settings, outputs):
            self.times[name] = self._recorded_seconds(name) or 0.0
            logger.info("stage %s: done already (same settings), skipped", name)
            return
        t0 = time.perf_counter()
        body()
        self.times[name] = time.perf_counter() - t0
        self._finish(name, settings, self.times[name])

    # -- the stages -----------------------------------------------------------------------------
    @property
    def datalist(self) -> Path:
        return self.data if self.data is not None else self.out / "data" / "datalist.json"

    def _data(self) -> None:
        from lgesynth.data.fingerprint import fingerprint, write_fingerprint
        from lgesynth.data.validate import validate_datalist

        if self.data is None:
            from lgesynth.data.phantom_cohort import make_phantom_cohort

            p = dict(self.preset.get("phantom", {}))
            make_phantom_cohort(self.out / "data", subjects=int(p.get("subjects", 24)), seed=int(p.get("seed", 0)),
                                test_fraction=float(p.get("test_fraction", 0.2)))
        validate_datalist(self.datalist)
        write_fingerprint(self.out / "data" / "fingerprint.json", fingerprint(self.datalist))

    def _inr_fit(self) -> None:
        o = self.preset.get("inr_fit", {})
        self.run_bundle("inr_fit", "train.yaml", datalist=str(self.datalist), output_dir=str(self.out / "inr_fit"),
                        **o.get("train", {}))
        self.run_bundle("inr_fit", "evaluate.yaml", output_dir=str(self.out / "inr_fit"), **o.get("evaluate", {}))

    def _inr2vec(self) -> None:
        o = self.preset.get("inr2vec", {})
        model_dir, bank = self.out / "inr2vec", self.out / "inr_fit"
        self.run_bundle("inr2vec", "train.yaml", bank_dir=str(bank), output_dir=str(model_dir), **o.get("train", {}))
        self.run_bundle("inr2vec", "inference.yaml", run_id="encode", track=False, model_dir=str(model_dir),
                        bank_dir=str(bank), datalist=str(self.datalist), **o.get("encode", {}))
        self.run_bundle("inr2vec", "evaluate.yaml", model_dir=str(model_dir), bank_dir=str(bank),
                        latents=str(model_dir / "latents.json"), **o.get("evaluate", {}))

    def _edm_synth(self) -> None:
        o = self.preset.get("edm_synth", {})
        models = self.out / "edm_synth" / "models"
        # OUT/edm_synth is the bundle folder of this run: its configs + docs beside the generator it trains
        # (their bundle_root defaults then read OUT/edm_synth/models), so `lgesynth pack OUT/edm_synth` zips it
        make_bundle_folder("edm_synth", models.parent, self.bundles)
        self.run_bundle("edm_synth", "train.yaml", inr2vec_dir=str(self.out / "inr2vec"), output_dir=str(self.out / "edm_synth"),
                        models_dir=str(models), **o.get("train", {}))
        self.run_bundle("edm_synth", "inference.yaml", models_dir=str(models), output_dir=str(self.out / "synthetic"),
                        reference_datalist=str(self.datalist), **o.get("inference", {}))

    def _scar_seg(self) -> None:
        from lgesynth.seg.experiment import run_experiment

        o = dict(self.preset.get("scar_seg", {}).get("experiment", {}))
        if o.get("budget_minutes") == "auto":
            o["budget_minutes"] = self._arm_minutes(o)
        tags = {**self.run_tags("scar_seg"), "seed": None}  # each arm's runs carry its own seed
        o["overrides"] = {"run_tags": tags, **dict(o.get("overrides") or {})}
        o["evaluate_overrides"] = {"run_tags": tags, **dict(o.get("evaluate_overrides") or {})}
        run_experiment(self.datalist, self.out / "synthetic" / "datalist.json", self.out / "experiment",
                       tracking_uri=self.tracking_uri, experiment_name=self.experiment_name, **o)

    def _arm_minutes(self, experiment: dict) -> float:
        """``budget_minutes: auto``: the minutes left of the preset's budget per arm (:mod:`lgesynth.seg.arm_budget`),
        from the wall times of the stages before scar_seg (this run's, or the records of stages done earlier); the
        reckoning goes to ``DIR/experiment/arm_budget.json`` and the log. An experiment already planned keeps its plan."""
        from lgesynth.seg.arm_budget import arm_minutes
        from lgesynth.seg.experiment import parse_seeds
        from lgesynth.seg.plan import PRESETS as PLAN_PRESETS

        spent = {}
        for name in STAGES[: STAGES.index("scar_seg")]:
            seconds = self.times.get(name, self._recorded_seconds(name))
            if seconds is not None:
                spent[name] = float(seconds)
        localizer = 0.0 if experiment.get("cascade") is False else float(
            experiment.get("localizer_minutes") or PLAN_PRESETS[experiment.get("preset", "cpu")]["localizer_minutes"] or 0.0)
        budget = arm_minutes(self.preset["budget_minutes"], spent, len(parse_seeds(experiment.get("seeds", (0, 1, 2)))), localizer)
        write_json(self.out / "experiment" / "arm_budget.json", {**budget, "spent_seconds": spent})
        logger.info("scar_seg: %s", budget["why"])
        return budget["arm_minutes"]

    def run(self) -> dict:
        """Run every stage not yet done, then write ``report.html``; returns the wall time per stage (s).

        The report is not a resumable stage: it is cheap and always rebuilt from what the stages wrote.
        """
        from tqdm import tqdm

        self.out.mkdir(parents=True, exist_ok=True)
        p, out = self.preset, self.out
        plan = [  # (stage, settings whose digest marks it done, outputs that must exist, body)
            ("data", {"data": str(self.data), "phantom": p.get("phantom")}, [self.datalist], self._data),
            ("inr_fit", {"data": str(self.datalist), **p.get("inr_fit", {})}, [out / "inr_fit" / "inr_bank.json"], self._inr_fit),
            ("inr2vec", {"data": str(self.datalist), **p.get("inr2vec", {})}, [out / "inr2vec" / "latents.json"], self._inr2vec),
            ("edm_synth", {"data": str(self.datalist), **p.get("edm_synth", {})},
             [out / "synthetic" / "datalist.json", out / "synthetic" / "report.json"], self._edm_synth),
            ("scar_seg", {"data": str(self.datalist), **p.get("scar_seg", {})}, [out / "experiment" / "comparison.json"], self._scar_seg),
        ]
        bar = tqdm(plan, desc="pipeline", unit="stage")
        for name, settings, outputs, body in bar:
            bar.set_postfix(stage=name)
            self.stage(name, settings, outputs, body)
        write_json(out / "stage_times.json", self.times)
        if "report" in self.stages:
            from lgesynth.report import write_report

            write_report(out, f"lgesynth pipeline: {p.get('name')} preset on {self.dataset}")
        return self.times


def run_pipeline(out: str, preset: str = "smoke", data: str | None = None, tracking_uri: str | None = None,
                 experiment_name: str | None = None, stages: str | tuple[str, ...] | None = None) -> dict:
    """CLI entry: see ``Pipeline``; ``stages`` is a comma-separated subset of ``STAGES`` (fire hands
    ``--stages data,inr_fit`` over as a tuple, a single name as a string)."""
    if isinstance(stages, str):
        stages = stages.split(",")
    chosen = tuple(str(s).strip() for s in stages) if stages else None
    unknown = [s for s in chosen or () if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; stages are {list(STAGES)}")
    return Pipeline(out, preset, data, tracking_uri, experiment_name, stages=chosen).run()
