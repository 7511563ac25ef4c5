"""``lgesynth compare``: the runs of an MLflow experiment side by side, read with MLflow's own API."""

from __future__ import annotations

import math


def compare_runs(tracking_uri: str, experiment: str | None = None, metrics: list[str] | None = None,
                 png: str | None = None) -> str:
    """A text table: one row per run (name, bundle/stage/condition tags) and the chosen metrics.

    Args:
        tracking_uri: MLflow store.
        experiment: experiment name; None = all experiments.
        metrics: metric keys shown when a run has them.
        png: optional bar chart path (one group per metric, one bar per run).
    """
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    experiments = [client.get_experiment_by_name(experiment)] if experiment else client.search_experiments()
    experiments = [e for e in experiments if e is not None]
    if not experiments:
        return f"no experiment {experiment!r} in {tracking_uri}"
    runs = client.search_runs([e.experiment_id for e in experiments], order_by=["attributes.start_time ASC"])
    shown = [m for m in (metrics or []) if any(m in r.data.metrics for r in runs)]
    header = ["run", "bundle", "stage", "condition"] + shown
    rows = []
    for r in runs:
        tags = r.data.tags
        rows.append([r.info.run_name or r.info.run_id[:8], tags.get("bundle", ""), tags.get("stage", ""), tags.get("condition", "")]
                    + [_fmt(r.data.metrics.get(m)) for m in shown])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)] if rows else [len(h) for h in header]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)) for row in [header] + rows]
    if png and rows and shown:
        _plot(png, runs, shown)
    return "\n".join(lines)


def _fmt(v) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"


def _plot(path: str, runs, shown: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lgesynth.io import atomic_path

    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(shown) * max(1, len(runs)) / 3), 4))
    width = 0.8 / max(1, len(runs))
    for i, r in enumerate(runs):
        values = [r.data.metrics.get(m, float("nan")) for m in shown]
        ax.bar([j + i * width for j in range(len(shown))], values, width, label=r.info.run_name)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(shown))], shown, rotation=30, ha="right")
    ax.legend(fontsize=6)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
