"""Scar clean-up: specks under the volume threshold become myocardium; real scar and the myocardium stay."""

from __future__ import annotations

import numpy as np
import torch
from monai.data import MetaTensor

from lgesynth.seg.postprocess import RemoveSmallScard, remove_small_scar, voxel_ml


def _heart():
    label = np.zeros((1, 24, 24, 5), dtype=np.int64)
    label[0, 2:22, 2:22, :] = 1
    label[0, 4:10, 4:10, 1:3] = 2  # 72 voxels of scar: 72 x 18 mm^3 = 1.3 ml at 1.5 x 1.5 x 8 mm
    label[0, 18, 18, 3] = 2  # a one-voxel speck (0.018 ml)
    label[0, 15:17, 4, 2] = 2  # two voxels (0.036 ml)
    return label


def test_specks_become_myocardium_and_scar_stays():
    label = _heart()
    x = MetaTensor(torch.tensor(label, dtype=torch.float32), affine=torch.diag(torch.tensor([1.5, 1.5, 8.0, 1.0], dtype=torch.float64)))
    assert abs(voxel_ml(x.affine) - 0.018) < 1e-12
    out = RemoveSmallScard("pred", min_scar_ml=0.03)({"pred": x})["pred"]
    assert isinstance(out, MetaTensor) and torch.equal(out.affine, x.affine)
    out = out.numpy().astype(np.int64)
    assert (out == 2).sum() == 72 + 2  # the speck went, the 2-voxel component (0.036 ml >= 0.03) stayed
    assert out[0, 18, 18, 3] == 1 and np.array_equal(out > 0, label > 0)  # myocardium unchanged
    out = RemoveSmallScard("pred", min_scar_ml=0.05)({"pred": x})["pred"].numpy()
    assert (out == 2).sum() == 72


def test_zero_threshold_and_scar_free_labels_are_untouched():
    label = _heart()[0]
    assert remove_small_scar(label, 0) is label
    free = np.where(label == 2, 1, label)
    assert np.array_equal(remove_small_scar(free, 100), free)
    x = {"pred": MetaTensor(torch.tensor(label[None], dtype=torch.float32))}
    assert RemoveSmallScard("pred", min_scar_ml=0.0)(x)["pred"] is x["pred"]
