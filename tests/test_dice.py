"""The one Dice (lgesynth.dice): nnU-Net's empty-mask convention, numpy and torch, batched over kept dims."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lgesynth.dice import dice


def test_empty_masks_follow_nnunet():
    empty, some = np.zeros((6, 5), bool), np.zeros((6, 5), bool)
    some[1:3, 1:4] = True
    assert math.isnan(dice(empty, empty))  # nothing to find, nothing found: undefined
    assert dice(some, empty) == 0.0  # a false positive where the reference is empty
    assert dice(empty, some) == 0.0 and dice(some, some) == 1.0
    assert all(isinstance(dice(a, b), float) for a, b in ((empty, empty), (some, empty), (some, some)))


def test_numpy_and_torch_agree_and_keep_the_unreduced_dims():
    rng = np.random.default_rng(0)
    pred, ref = rng.random((4, 3, 50)) > 0.6, rng.random((4, 3, 50)) > 0.5
    ref[0, 0] = pred[0, 0] = False  # both empty
    ref[1, 2] = False  # reference empty, prediction not
    expected = np.array([[2 * (p & r).sum() / (p.sum() + r.sum()) if (p.sum() + r.sum()) else np.nan
                          for p, r in zip(ps, rs)] for ps, rs in zip(pred, ref)])
    ours = dice(pred, ref, axis=-1)
    assert ours.shape == (4, 3) and math.isnan(ours[0, 0]) and ours[1, 2] == 0.0
    np.testing.assert_allclose(ours, expected, equal_nan=True)
    theirs = dice(torch.from_numpy(pred), torch.from_numpy(ref), axis=-1)
    assert theirs.dtype == torch.float64 and theirs.shape == (4, 3)
    np.testing.assert_allclose(theirs.numpy(), expected, equal_nan=True)
    assert dice(pred[2], ref[2]) == pytest.approx(float(dice(torch.from_numpy(pred[2]), torch.from_numpy(ref[2]))))
    assert dice(pred, ref, axis=(1, 2)).shape == (4,)


def test_inr_fit_metrics_report_scar_free_subjects_as_undefined_or_zero():
    from lgesynth.inr.loss import fit_metrics

    target = torch.zeros(3, 20, 3)
    target[:, :10, 1] = 1  # myocardium on the first 10 points
    target[0, :4, 2] = 1  # subject 0 has scar
    logits = torch.full((3, 20, 3), -9.0)
    logits[..., 1] = torch.where(target[..., 1] > 0, 9.0, -9.0)
    logits[0, :4, 2] = 9.0  # subject 0: scar exact; subject 1: none; subject 2: scar where there is none
    logits[2, :2, 2] = 9.0
    m = fit_metrics(logits, target)
    assert m["dice_scar"][0] == 1.0 and math.isnan(m["dice_scar"][1]) and m["dice_scar"][2] == 0.0
    assert m["has_scar"].tolist() == [True, False, False] and m["dice_myo"].tolist() == [1.0, 1.0, 1.0]
