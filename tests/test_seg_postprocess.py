"""Scar clean-up: specks under the volume threshold become myocardium; real scar and the myocardium stay."""

from __future__ import annotations

import numpy as np
import pytest
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


def _save(path, array, spacing=(1.5, 1.5, 8.0)):
    from lgesynth.io import save_nifti

    return str(save_nifti(path, array, np.diag([*spacing, 1.0]), dtype=np.uint8))


def test_min_scar_ml_is_chosen_on_validation_cases(tmp_path):
    """Validation cases: a scar-free heart predicted with a 2-voxel (0.036 ml) speck, and a heart whose
    72-voxel (1.3 ml) scar is predicted with 3 speck voxels beside it. Removing components < 0.05 ml
    makes the scar perfect and leaves the scar-free heart without scar (Dice undefined, out of the mean);
    1.5 ml also removes the real scar; the smallest of the best wins."""
    from lgesynth.errors import DataError
    from lgesynth.seg.postprocess import choose_min_scar_ml, prediction_path

    heart = _heart()[0]  # the 72-voxel scar plus a 1-voxel and a 2-voxel speck
    only_scar = np.where(heart == 2, 1, heart)
    only_scar[4:10, 4:10, 1:3] = 2
    free = np.where(heart == 2, 1, heart)
    free_pred = free.copy()
    free_pred[15:17, 4, 2] = 2
    preds, cases = tmp_path / "predictions", []
    for cid, truth, pred in (("free", free, free_pred), ("scar", only_scar, heart), ("exact", heart, heart)):
        image = _save(tmp_path / f"{cid}.nii.gz", np.zeros_like(truth))
        cases.append({"id": cid, "image": image, "label": _save(tmp_path / f"{cid}_label.nii.gz", truth)})
        _save(prediction_path(preds, image), pred)
    assert prediction_path(preds, cases[0]["image"]).name == "free_seg.nii.gz"

    out = choose_min_scar_ml(cases[:2], preds, candidates=(1.5, 0.0, 0.05, 0.1))
    assert out["candidates"] == [0.0, 0.05, 0.1, 1.5]
    assert out["mean_dice_scar"] == pytest.approx([0.5 * (0.0 + 2 * 72 / (72 + 75)), 1.0, 1.0, 0.0])
    assert out["n_undefined"] == [0, 1, 1, 1] and out["min_scar_ml"] == 0.05 and out["n_cases"] == 2
    assert out["per_case"]["free"] == [0.0, None, None, None]
    # a prediction already right: the clean-up would cut true specks, so none is chosen
    exact = choose_min_scar_ml(cases[2:], preds, candidates=(0.0, 0.05))
    assert exact["mean_dice_scar"][0] == 1.0 > exact["mean_dice_scar"][1] and exact["min_scar_ml"] == 0.0

    free_only = choose_min_scar_ml(cases[:1], preds, candidates=(0.0, 0.05))
    assert free_only["mean_dice_scar"] == [0.0, None] and free_only["min_scar_ml"] == 0.05  # no scar anywhere: Dice 1

    (preds / "free_seg.nii.gz").unlink()
    with pytest.raises(DataError, match="free_seg.nii.gz.*no prediction for validation case free"):
        choose_min_scar_ml(cases, preds)
