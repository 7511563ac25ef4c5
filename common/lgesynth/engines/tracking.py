"""Params and tags on the MLflow run that MONAI's ``--tracking mlflow`` opens.

``python -m monai.bundle run ... --tracking mlflow`` appends a ``MLFlowHandler`` to
``train#handlers`` (MONAI's default tracking settings). That handler logs metrics, the engine's
``max_epochs``/``epoch_length`` and the executed config, but no tags and only the params it is
given. ``RunInfoHandler`` finds the MLFlowHandler(s) among the engine's ``handlers`` (the list a
``BundleEngine`` attaches and keeps, ``engines.base``; MONAI's tracking appends its handler to that list)
and, once their run exists (first iteration), logs our params (flattened config) and tags (bundle, stage,
dataset, preset, seed, git commit) through the handler's own client, so the run stays the one MONAI made.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from ignite.engine import Engine, Events


def git_commit(path: str | Path | None = None) -> str:
    """Short commit of the repository holding ``path`` (or this package), "unknown" outside git."""
    where = Path(path) if path else Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


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
        tags: str -> str, e.g. ``{"bundle": "inr_fit", "stage": "train"}``; ``git_commit`` is added.
        config_dir: folder where ``--tracking`` saved the executed config (``config_*.json``); the
            newest is logged as an artefact. (MONAI's own artefact path is built as a string
            expression that breaks when ``output_dir`` is overridden by a plain path, so we log it.)
        artifacts: further files to log at the end of the run (PNGs, CSVs) when they exist.
    """

    def __init__(self, params: dict | None = None, tags: dict | None = None, config_dir: str | None = None,
                 artifacts: list[str] | None = None):
        self.params = flatten(dict(params or {}))
        self.config_dir = config_dir
        self.artifacts = list(artifacts or [])
        self.tags = {"git_commit": git_commit(), **{k: str(v) for k, v in dict(tags or {}).items() if v is not None}}
        self._done = False

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_STARTED, self)
        engine.add_event_handler(Events.COMPLETED, self.log_artifacts)

    def log_artifacts(self, engine: Engine) -> None:
        for h in self._runs(engine):
            for path in self.artifacts:
                if Path(path).exists():
                    h.client.log_artifact(h.cur_run.info.run_id, str(path))

    @staticmethod
    def _runs(engine: Engine) -> list:
        from monai.handlers import MLFlowHandler

        return [h for h in getattr(engine, "handlers", ()) if isinstance(h, MLFlowHandler) and h.cur_run is not None]

    def __call__(self, engine: Engine) -> None:
        if self._done:
            return
        handlers = self._runs(engine)
        params = dict(self.params)
        if hasattr(engine, "run_params"):
            params.update(flatten(engine.run_params()))
        configs = sorted(Path(self.config_dir).glob("config_*.json"), key=lambda p: p.stat().st_mtime) if self.config_dir else []
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
