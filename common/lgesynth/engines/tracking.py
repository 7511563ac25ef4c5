"""Params and tags on the MLflow run that MONAI's ``--tracking mlflow`` opens; the one tagging scheme.

``python -m monai.bundle run ... --tracking mlflow`` appends a ``MLFlowHandler`` to the handler list of
the config's engine (``train#handlers`` or ``handlers``, MONAI's default tracking settings). That
handler logs metrics, the engine's ``max_epochs``/``epoch_length`` and the executed config, but no tags
(MONAI's ``MLFlowHandler`` takes no ``tags``) and only the params it is given. ``RunInfoHandler`` finds
the MLFlowHandler(s) among the engine's ``handlers`` (the list a ``BundleEngine`` attaches and keeps,
``engines.base``), or in the list it is given (``handlers=``, for MONAI's own engines, e.g. scar_seg's),
and, once their run exists (first iteration), logs our params (flattened config) and tags through the
handler's own client (public ``client`` / ``cur_run``), so the run stays the one MONAI made. A run whose
engine never completed (it raised, or the process was interrupted) is ended as FAILED when the process
exits, through the handler's public ``run_finish_status`` and ``close()``, so MLflow does not list it as
RUNNING for ever (a SIGKILL leaves it RUNNING: nothing runs after one).

Tagging scheme: every MLflow run of the pipeline and of every bundle (by hand with ``--tracking
mlflow`` too) carries these six tags, never empty (``STANDARD_TAGS``):

    bundle      inr_fit | inr2vec | edm_synth | scar_seg                      (the config's handler)
    stage       the config's step: fit, train, evaluate, inference            (the config's handler)
    preset      the pipeline preset's ``name`` (smoke, cpu, ...); "none" outside the pipeline
    dataset     :func:`dataset_name` of what the bundle read (datalist, bank, inr2vec or edm models);
                "unknown" when it cannot be told
    seed        the config's ``seed``; a config without one (evaluate.yaml) gets the caller's (the
                pipeline: the stage's training seed; the scar_seg experiment: the arm's), else "none"
    git_commit  short commit of the lgesynth checkout, "unknown" outside git

Precedence: ``DEFAULT_TAGS`` < the caller's ``run_tags`` (a top-level config key, ``{}`` by default,
which the pipeline overrides with ``{preset, dataset, seed}``) < the config's own ``tags`` (what the
config knows: bundle, stage, seed, dataset). Any other tag (the experiment's ``condition``,
``synthetic_ratio``, ...) is added on top and stays. Filter with e.g.
``mlflow.search_runs(search_all_experiments=True, filter_string="tags.bundle = 'scar_seg'")``.
"""

from __future__ import annotations

import atexit
import json
import subprocess
from pathlib import Path

from ignite.engine import Engine, Events

STANDARD_TAGS = ("bundle", "stage", "preset", "dataset", "seed", "git_commit")
DEFAULT_TAGS = {"bundle": "unknown", "stage": "unknown", "preset": "none", "dataset": "unknown", "seed": "none"}
# files by which dataset_name() follows a derived artefact back to the bank, then to the datalist
_PROVENANCE = (("generator.json", ("inr2vec", "bank", "dir")),        # edm_synth models -> the inr2vec bank
               ("inr2vec_model.json", ("bank", "dir")),                 # inr2vec train output -> its bank
               ("latents.json", ("source", "bank_dir")),                # inr2vec encode -> its bank
               ("latents.json", ("source", "generator")),               # edm_synth inference -> its models
               ("inr_bank.json", ("subjects", 0, "source", "image")))   # inr_fit bank -> a source image


def git_commit(path: str | Path | None = None) -> str:
    """Short commit of the repository holding ``path`` (or this package), "unknown" outside git."""
    where = Path(path) if path else Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _dig(doc, keys):
    for k in keys:
        try:
            doc = doc[k]
        except (KeyError, IndexError, TypeError):
            return None
    return doc


def dataset_name(source: str | Path | None, _depth: int = 0) -> str | None:
    """The name of the data set behind ``source`` (the ``dataset`` tag), or None when it cannot be told.

    - a datalist JSON: its ``"name"`` (the importers record one: "EMIDEC", or the import folder's name);
      else "phantom" when ``phantom.json`` lies beside it (:func:`make_phantom_cohort` writes it); else
      the name of the folder holding it.
    - an artefact folder (or a file in it) of the other bundles, followed back through its records
      (``_PROVENANCE``): edm_synth models (``generator.json``) -> the inr2vec bank; inr2vec output
      (``inr2vec_model.json``, ``latents.json``) -> its bank; an inr_fit bank (``inr_bank.json``) -> the
      datalist beside its first subject's image folder (``<dir>/imagesTr/x.nii.gz`` + ``<dir>/datalist.json``).
    Never raises: a missing or unreadable record gives None.
    """
    if source is None or _depth > 6:
        return None
    try:
        path = Path(source)
        if path.is_file() and path.suffix == ".json" and path.name not in {f for f, _ in _PROVENANCE}:
            doc = _read_json(path)
            if not isinstance(doc, dict):
                return None
            if isinstance(doc.get("name"), str) and doc["name"].strip():
                return doc["name"].strip()
            return "phantom" if (path.parent / "phantom.json").exists() else path.resolve().parent.name or None
        folder = path if path.is_dir() else path.parent
        for file, keys in _PROVENANCE:
            found = _dig(_read_json(folder / file), keys)
            if not isinstance(found, str) or not found:
                continue
            if file == "inr_bank.json":
                image = Path(found)
                for up in (image.parent, image.parent.parent):
                    if (up / "datalist.json").is_file():
                        return dataset_name(up / "datalist.json", _depth + 1)
                return None
            return dataset_name(found, _depth + 1)
    except OSError:
        return None
    return None


def run_tags_of(tags: dict | None = None, run_tags: dict | None = None) -> dict[str, str]:
    """The tags of a run (module doc): ``DEFAULT_TAGS`` and ``git_commit``, then the caller's ``run_tags``,
    then the config's ``tags``; None and empty values are left out (the one below stays)."""
    def given(d):
        return {str(k): str(v) for k, v in dict(d or {}).items() if v is not None and str(v).strip()}

    return {**DEFAULT_TAGS, "git_commit": git_commit(), **given(run_tags), **given(tags)}


def flatten(d: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists become strings (MLflow params are strings)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) or v is None else str(v)
    return out


class RunInfoHandler:
    """Log ``params`` and ``tags`` to the run of every MLFlowHandler in the engine's ``handlers`` (module doc).

    Args:
        params: nested dict (flattened with dots); values over MLflow's 6000-char limit are cut. An
            engine with a ``run_params()`` method adds its own (e.g. the full fit configuration).
        tags: the config's own tags, e.g. ``{"bundle": "inr_fit", "stage": "fit", "seed": "@seed", "dataset":
            "$lgesynth.engines.tracking.dataset_name(@datalist)"}``; the six of ``STANDARD_TAGS`` always end up
            on the run (:func:`run_tags_of`, module doc), ``git_commit`` is added.
        run_tags: the caller's tags (the config's top-level ``run_tags``; the pipeline: preset, dataset,
            seed), below the config's own and above the defaults; extra keys are kept.
        handlers: the handler list that ``--tracking mlflow`` appends its MLFlowHandler to, for an engine
            that does not keep its handlers (MONAI's ``SupervisedTrainer``/``SupervisedEvaluator``).
        config_dir: folder where ``--tracking`` saved the executed config (``config_*.json``); the
            newest is logged as an artefact. (MONAI's own artefact path is built as a string
            expression that breaks when ``output_dir`` is overridden by a plain path, so we log it.)
        artifacts: further files to log at the end of the run (PNGs, CSVs) when they exist.
    """

    def __init__(self, params: dict | None = None, tags: dict | None = None, config_dir: str | None = None,
                 artifacts: list[str] | None = None, run_tags: dict | None = None, handlers: list | None = None):
        self.params = flatten(dict(params or {}))
        self.config_dir = config_dir
        self.artifacts = list(artifacts or [])
        self.tags = run_tags_of(tags, run_tags)
        self.handlers = list(handlers or [])
        self._done = False
        self._tracked: list = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_STARTED, self)
        engine.add_event_handler(Events.COMPLETED, self.log_artifacts)

    def end_unfinished_runs(self) -> None:
        """At exit: end the runs of an engine that never completed as FAILED (module doc); a completed
        engine unregisters it."""
        for h in self._tracked:
            if h.cur_run is None:
                continue
            try:
                if h.client.get_run(h.cur_run.info.run_id).info.status == "RUNNING":
                    h.run_finish_status = "FAILED"
                    h.close()
            except Exception:  # the store may be gone by now (a temporary folder); nothing left to mark
                pass

    def log_artifacts(self, engine: Engine) -> None:
        atexit.unregister(self.end_unfinished_runs)
        for h in self._runs(engine):
            for path in self.artifacts:
                if Path(path).exists():
                    h.client.log_artifact(h.cur_run.info.run_id, str(path))

    def _runs(self, engine: Engine) -> list:
        from monai.handlers import MLFlowHandler

        found = []
        for h in [*self.handlers, *(getattr(engine, "handlers", None) or ())]:
            if isinstance(h, MLFlowHandler) and h.cur_run is not None and all(h is not f for f in found):
                found.append(h)
        return found

    def __call__(self, engine: Engine) -> None:
        if self._done:
            return
        handlers = self._runs(engine)
        params = dict(self.params)
        if hasattr(engine, "run_params"):
            params.update(flatten(engine.run_params()))
        configs = sorted(Path(self.config_dir).glob("config_*.json"), key=lambda p: p.stat().st_mtime) if self.config_dir else []
        if handlers and not self._tracked:
            atexit.register(self.end_unfinished_runs)
        self._tracked += [h for h in handlers if all(h is not t for t in self._tracked)]
        for h in handlers:
            run_id = h.cur_run.info.run_id
            if configs:
                h.client.log_artifact(run_id, str(configs[-1]), "config")
            logged = h.client.get_run(run_id).data.params
            for k, v in params.items():
                if k not in logged:
                    h.client.log_param(run_id, k, str(v)[:6000])
            for k, v in self.tags.items():
                h.client.set_tag(run_id, k, v)
        self._done = bool(handlers) or engine.state.iteration > 1
