"""The scar_seg experiment's outputs: ``comparison.json``, ``comparison.md`` (a Markdown table) and
``comparison.png`` (Dice per region, both arms, 95 % CI bars)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lgesynth.io import atomic_path, write_json
from lgesynth.seg.experiment_arms import CONDITIONS
from lgesynth.seg.experiment_stats import OVERALL_KEYS, REGION_KEYS, STRUCTURES
from lgesynth.seg.regions import REGIONS


def write_comparison(out: Path, comparison: dict) -> str:
    """Write ``out/comparison.json``, ``.md`` and ``.png``; returns the Markdown table."""
    write_json(out / "comparison.json", comparison)
    table = comparison_table(comparison)
    with atomic_path(out / "comparison.md") as tmp:
        tmp.write_text(table + "\n")
    save_comparison_png(out / "comparison.png", comparison)
    return table


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
    lines = [f"scar_seg experiment: {comparison['cases']} test cases, seeds {comparison['seeds']}", ""]
    if comparison.get("baseline_predicts_scar") is False:
        seen = comparison["scar_predicted"]["baseline"]
        lines += [f"**The baseline predicts no scar on any of its {seen['predictions']} test predictions (true burden "
                  f"{seen['mean_burden_true_pct'] or 0:.1f} %): this comparison says nothing about synthetic data.**", ""]
    lines += [*header, *_rows(comparison, OVERALL_KEYS + REGION_KEYS)]
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
