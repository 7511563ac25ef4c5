"""comparison.json / .md say when the baseline predicts no scar at all (then the comparison says nothing)."""

from __future__ import annotations

import numpy as np

from lgesynth.seg.experiment_report import comparison_table
from lgesynth.seg.experiment_stats import OVERALL_KEYS, REGION_KEYS, arm_summary, paired_statistics, scar_predicted


def _eval(pred_pcts):
    return {f"c{i}": {"burden_pred_pct": p, "burden_true_pct": 10.0} for i, p in enumerate(pred_pcts)}


def test_scar_predicted_counts_predictions_with_any_scar_over_seeds():
    seen = scar_predicted([_eval([0.0, 0.0, 3.0]), _eval([0.0, 1.0, 0.0])])
    assert seen == {"cases_with_predicted_scar": 2, "predictions": 6, "mean_burden_pred_pct": 4.0 / 6,
                    "mean_burden_true_pct": 10.0}
    assert scar_predicted([_eval([0.0, 0.0])])["cases_with_predicted_scar"] == 0


def _comparison(baseline_pcts):
    keys = OVERALL_KEYS + REGION_KEYS
    arm = arm_summary({k: np.array([0.5, 0.6]) for k in keys}, n_boot=10)
    paired = {k: paired_statistics([0.5, 0.6], [0.55, 0.6], n_boot=10) for k in keys}
    seen = scar_predicted([_eval(baseline_pcts)])
    return {"cases": 2, "seeds": [0], "baseline": arm, "augmented": arm, "paired": paired,
            "scar_predicted": {"baseline": seen, "augmented": seen},
            "baseline_predicts_scar": seen["cases_with_predicted_scar"] > 0}


def test_report_flags_a_baseline_that_predicts_no_scar():
    flagged = comparison_table(_comparison([0.0, 0.0]))
    assert "The baseline predicts no scar on any of its 2 test predictions" in flagged
    assert "predicts no scar" not in comparison_table(_comparison([0.0, 2.0]))
