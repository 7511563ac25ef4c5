"""Benchmark scar_seg: test Dice per training minute of the single-stage and the cascaded plans, same cohort, one run.

    python benchmarks/scar_seg_minutes.py --datalist runs/emidec/datalist.json \
        --out runs/bench_minutes [--minutes 1,2,4] [--configs full,roi] [--localizer_minutes 1.5] [--seed 0] [--mirror]

For every config (``full``: one network over the whole field of view; ``roi``: the ROI stage of the heart-ROI
cascade, :mod:`lgesynth.seg.cascade_plan`) and every budget m (minutes): a plan calibrated on this machine
(``ensure_plan(..., preset="cpu", budget_minutes=m, calibrate=True, stage=config)``) in ``OUT/<config>_<m>min``,
trained with the scar_seg bundle's train.yaml on the datalist's ``training`` section (``monai.bundle.run`` in this
process, as ``lgesynth experiment`` does), then evaluate.yaml on its ``test`` section (one pass, or nnU-Net's 4
mirrored ones with ``--mirror``; no scar clean-up). ``roi`` needs the cascade's localizer: trained once into
``OUT/localizer`` (budget ``--localizer_minutes``) and shipped with every roi model; its minutes are reported apart.
Measured per row: planned iterations and s/iteration, training seconds and iterations (the run's train_log.json:
the epochs' training iterations only, no validation), width (first filters), patch, test mean Dice myocardium and
scar, predicted and true scar burden (%), wall seconds of the planning (calibration), training and evaluation calls.

Resume: a folder whose ``models/model.pt`` exists is not trained again, one whose ``eval/metrics_summary.json``
exists is not evaluated again (a killed training restarts from its checkpoint); wall times are kept in
``OUT/<config>_<m>min/wall_seconds.json``. The machine is shared: compare rows of one run, not across runs.

Outputs in OUT: ``scar_seg_minutes.json`` (rows, localizer, machine: CPU model, avx512_bf16, torch threads and
version), ``scar_seg_minutes.md`` (the table, also printed), ``scar_seg_minutes.png`` (Dice vs training minutes).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

COLUMNS = ("config", "budget min", "width", "patch", "iterations", "it/s", "train min", "Dice myo", "Dice scar")


# --------------------------------------------------------------------------------------- machine
def cpu_info() -> dict:
    """``{"cpu": lscpu's model name, "avx512_bf16": "yes" / "no"}`` (``"?"`` where lscpu is missing)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {"cpu": "?", "avx512_bf16": "?"}
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    return {"cpu": fields.get("Model name", "?").strip(), "avx512_bf16": "yes" if "avx512_bf16" in flags else "no"}


def machine() -> dict:
    """CPU model, avx512_bf16, torch's intra-op threads and version."""
    return {**cpu_info(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__}


# --------------------------------------------------------------------------------------- bundle runs
def bundle_run(config: str, **overrides) -> float:
    """``monai.bundle.run`` of scar_seg's ``configs/<config>`` with ``overrides`` (as ``lgesynth experiment`` runs
    it); returns its wall seconds."""
    from lgesynth.seg import experiment

    start = time.perf_counter()
    experiment.bundle_run(config, False, **overrides)
    return time.perf_counter() - start


def _record_wall(folder: Path, key: str, seconds: float) -> None:
    """Add ``{key: seconds}`` to ``folder/wall_seconds.json``."""
    from lgesynth.io import write_json

    path = folder / "wall_seconds.json"
    record = json.loads(path.read_text()) if path.exists() else {}
    write_json(path, {**record, key: round(seconds, 1)})


def make_plan(folder: Path, datalist: Path, stage: str, minutes: float) -> dict:
    """``folder/plan.json`` of ``stage`` for ``minutes`` of training, calibrated here (kept when it exists).

    Raises:
        ValueError: the planner's, when ``minutes`` cannot fit one training iteration.
    """
    from lgesynth.seg.data import ensure_plan

    new, start = not (folder / "plan.json").is_file(), time.perf_counter()
    plan = ensure_plan(None, datalist, folder, preset="cpu", budget_minutes=minutes, calibrate=True, stage=stage)
    if new:
        _record_wall(folder, "plan", time.perf_counter() - start)
    return plan


def train(folder: Path, datalist: Path, seed: int, **overrides) -> None:
    """train.yaml with ``folder/plan.json`` into ``folder`` unless ``folder/models/model.pt`` exists."""
    if not (folder / "models" / "model.pt").is_file():
        print(f"training {folder.name}", flush=True)
        seconds = bundle_run("train.yaml", datalist=str(datalist), output_dir=str(folder),
                             plan_path=str(folder / "plan.json"), seed=seed, **overrides)
        _record_wall(folder, "train", seconds)


def evaluate(folder: Path, datalist: Path, mirror: bool) -> dict:
    """evaluate.yaml on the test section into ``folder/eval`` unless done; returns metrics_summary.json."""
    summary = folder / "eval" / "metrics_summary.json"
    if not summary.is_file():
        print(f"evaluating {folder.name}", flush=True)
        seconds = bundle_run("evaluate.yaml", datalist=str(datalist), train_dir=str(folder),
                             output_dir=str(folder / "eval"), mirror_axes=[0, 1] if mirror else [])
        _record_wall(folder, "evaluate", seconds)
    return json.loads(summary.read_text())


# --------------------------------------------------------------------------------------- measurements
def training_measured(folder: Path) -> dict:
    """From ``folder/train_log.json``: training seconds (sum over epochs), iterations, iterations/s."""
    entries = json.loads((folder / "train_log.json").read_text())
    seconds = sum(float(e["seconds"]) for e in entries)
    iterations = int(entries[-1]["iteration"])
    return {"train_seconds": round(seconds, 1), "iterations": iterations,
            "iterations_per_second": round(iterations / seconds, 3) if seconds else None}


def measure_row(config: str, minutes: float, folder: Path, plan: dict, summary: dict) -> dict:
    """One row of the results (module doc); seconds, minutes, Dice in [0, 1], burden in %."""
    mean = summary["mean"]
    wall_path = folder / "wall_seconds.json"
    wall = json.loads(wall_path.read_text()) if wall_path.exists() else {}
    return {"config": config, "budget_minutes": minutes, "folder": str(folder),
            "planned_iterations": int(plan["training"]["iterations"]),
            "planned_seconds_per_iteration": round(plan["budget"]["seconds_per_iteration"], 4),
            "width": int(plan["network"]["filters"][0]), "patch": plan["patch_size"], "dims": plan["network"]["spatial_dims"],
            **training_measured(folder),
            "dice_myo": mean.get("dice_myo"), "dice_scar": mean.get("dice_scar"),
            "burden_pred_pct": mean.get("burden_pred_pct"), "burden_true_pct": mean.get("burden_true_pct"),
            "n_test_cases": summary.get("n_cases"), "wall_seconds": wall,
            "wall_seconds_train_evaluate": round(wall.get("train", 0.0) + wall.get("evaluate", 0.0), 1)}


# --------------------------------------------------------------------------------------- outputs
def _fmt(value, spec: str) -> str:
    return "n/a" if value is None or value != value else format(value, spec)


def markdown_table(rows: list[dict]) -> str:
    """The rows as a Markdown table (COLUMNS); a refused plan shows its error."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['config']} | {r['budget_minutes']:g} | refused: {r['error']} |" + " |" * (len(COLUMNS) - 3))
            continue
        cells = [r["config"], f"{r['budget_minutes']:g}", str(r["width"]), "x".join(map(str, r["patch"])),
                 str(r["iterations"]), _fmt(r["iterations_per_second"], ".2f"), _fmt(r["train_seconds"] / 60, ".2f"),
                 _fmt(r["dice_myo"], ".3f"), _fmt(r["dice_scar"], ".3f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, title: str, localizer: dict | None) -> None:
    """Dice myocardium and Dice scar vs actual training minutes, one line per config, into ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    for config in dict.fromkeys(r["config"] for r in rows if "error" not in r):
        done = sorted((r for r in rows if r["config"] == config and "error" not in r), key=lambda r: r["train_seconds"])
        label = config + (f" (+ localizer {localizer['train_seconds'] / 60:.2f} min)" if config == "roi" and localizer else "")
        for ax, key in zip(axes, ("dice_myo", "dice_scar")):
            ax.plot([r["train_seconds"] / 60 for r in done], [r[key] for r in done], marker="o", label=label)
    for ax, name in zip(axes, ("Dice myocardium", "Dice scar")):
        ax.set_xlabel("training minutes (train_log.json)")
        ax.set_ylabel(f"test {name}")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------------------- main
def _check_datalist(datalist: Path) -> None:
    from lgesynth.data.datalist import load_datalist

    sections = {e["section"] for e in load_datalist(datalist)}
    if not {"training", "test"} <= sections:
        raise SystemExit(f'{datalist}: needs a "training" and a "test" section (has {sorted(sections)})')


def run_localizer(out: Path, datalist: Path, minutes: float, seed: int) -> dict:
    """Train (unless trained) the cascade's localizer into ``out/localizer``; its measurements."""
    folder = out / "localizer"
    plan = make_plan(folder, datalist, "localizer", minutes)
    train(folder, datalist, seed)
    wall_path = folder / "wall_seconds.json"
    return {"budget_minutes": minutes, "folder": str(folder), "planned_iterations": int(plan["training"]["iterations"]),
            "width": int(plan["network"]["filters"][0]), "patch": plan["patch_size"], **training_measured(folder),
            "wall_seconds": json.loads(wall_path.read_text()) if wall_path.exists() else {}}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datalist", required=True, help='MSD-style datalist with "training" and "test" sections')
    parser.add_argument("--out", required=True, help="output folder (re-run with the same one to resume)")
    parser.add_argument("--minutes", default="1,2,4", help="comma-separated training budgets (minutes)")
    parser.add_argument("--configs", default="full,roi", help="comma-separated: full, roi")
    parser.add_argument("--localizer_minutes", type=float, default=1.5, help="the roi cascade's localizer budget (minutes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mirror", action="store_true", help="evaluate with nnU-Net's 4 mirrored passes")
    args = parser.parse_args(argv)
    datalist, out = Path(args.datalist).resolve(), Path(args.out).resolve()
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    if not set(configs) <= {"full", "roi"}:
        raise SystemExit(f"unknown config in {configs}: choose from full, roi")
    budgets = [float(m) for m in args.minutes.split(",") if m.strip()]
    _check_datalist(datalist)
    out.mkdir(parents=True, exist_ok=True)
    info = machine()
    print(f"machine: {info}", flush=True)

    localizer = run_localizer(out, datalist, args.localizer_minutes, args.seed) if "roi" in configs else None
    rows = []
    for config in configs:
        extra = {"localizer_dir": str(out / "localizer" / "models")} if config == "roi" else {}
        for minutes in budgets:
            folder = out / f"{config}_{minutes:g}min"
            try:
                plan = make_plan(folder, datalist, config, minutes)
            except ValueError as error:  # the planner refuses a budget too small for one iteration
                rows.append({"config": config, "budget_minutes": minutes, "error": str(error)})
                continue
            train(folder, datalist, args.seed, **extra)
            rows.append(measure_row(config, minutes, folder, plan, evaluate(folder, datalist, args.mirror)))

    from lgesynth.engines.tracking import dataset_name

    cohort = dataset_name(datalist) or datalist.parent.name
    table = markdown_table(rows)
    result = {"cohort": cohort, "datalist": str(datalist), "machine": info, "mirror": args.mirror,
              "localizer": localizer, "rows": rows, "argv": sys.argv[1:] if argv is None else list(argv)}
    (out / "scar_seg_minutes.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "scar_seg_minutes.md").write_text(table + "\n")
    plot(rows, out / "scar_seg_minutes.png", f"scar_seg test Dice per training minute: {cohort}, {info['cpu']} "
                                              f"(avx512_bf16 {info['avx512_bf16']}, {info['torch_threads']} threads)", localizer)
    print()
    print(table)
    if localizer:
        print(f"\nlocalizer (roi only): {localizer['budget_minutes']:g} min budget, {localizer['iterations']} iterations, "
              f"{localizer['train_seconds'] / 60:.2f} training min")
    print(f"wrote {out / 'scar_seg_minutes.json'}, scar_seg_minutes.md, scar_seg_minutes.png")
    return result


if __name__ == "__main__":
    main()
