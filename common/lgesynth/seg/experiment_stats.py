"""Statistics of the scar_seg experiment: per-arm means with bootstrap CIs, and the paired comparison.

Per test case the Dice of each arm is averaged over seeds, then the arms are compared **paired over
cases**: the mean difference (augmented - baseline), its 95 % bootstrap CI (resampling cases, seeded),
and Wilcoxon's signed-rank test, or a paired t-test when there are fewer than ``MIN_WILCOXON_CASES``
cases (the exact two-sided Wilcoxon p-value cannot go below 2 / 2^n, 0.0625 for n = 5).
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from lgesynth.errors import DataError
from lgesynth.seg.experiment_arms import CONDITIONS, Arm, read_metrics_csv
from lgesynth.seg.regions import REGIONS

STRUCTURES = {"myo": "myocardium", "scar": "scar"}
OVERALL_KEYS = tuple(f"dice_{s}" for s in STRUCTURES)
REGION_KEYS = tuple(f"dice_{s}_{r}" for s in STRUCTURES for r in REGIONS)
MIN_WILCOXON_CASES = 6
N_BOOTSTRAP = 10_000


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


def scar_predicted(evaluations: list[dict[str, dict[str, float]]]) -> dict:
    """Does an arm predict scar at all? Over its seeds' test evaluations (``{case: metrics}`` each): how many
    (seed, case) predictions hold any scar, and the mean predicted and true scar burden (%). A baseline
    that predicts none cannot show what synthetic data adds (the comparison's Dice then only counts
    scar-free cases)."""
    rows = [m for ev in evaluations for m in ev.values()]
    pred = [m.get("burden_pred_pct", float("nan")) for m in rows]
    true = [m.get("burden_true_pct", float("nan")) for m in rows]
    return {"cases_with_predicted_scar": int(sum(1 for v in pred if v > 0)), "predictions": len(rows),
            "mean_burden_pred_pct": _finite(_nanmean(pred)) if rows else None,
            "mean_burden_true_pct": _finite(_nanmean(true)) if rows else None}


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
    result["scar_predicted"] = {c: scar_predicted([per_arm[a] for a in arms if a.condition == c]) for c in CONDITIONS}
    result["baseline_predicts_scar"] = result["scar_predicted"]["baseline"]["cases_with_predicted_scar"] > 0
    result["paired"] = {k: paired_statistics(per_case["baseline"][k], per_case["augmented"][k], n_boot, seed)
                        for k in OVERALL_KEYS + REGION_KEYS}
    result.update(seeds=seeds, cases=len(cases), case_ids=cases,
                  aggregation="per test case: mean over seeds; arms: mean over cases (NaN regions left out), "
                              f"95 % percentile bootstrap over cases ({n_boot} resamples, seed {seed}); paired over cases")
    return result
