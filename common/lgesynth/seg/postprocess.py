"""Post-processing of predicted labels: drop scar specks (nnU-Net-style connected-component clean-up).

A segmenter that has learned scar often leaves a few scar voxels in scar-free hearts; the case then
scores scar Dice 0 instead of none (undefined, :mod:`lgesynth.dice`). ``RemoveSmallScard`` relabels every scar component smaller than
``min_scar_ml`` as healthy myocardium (scar lies inside the myocardium, so the myocardium mask is
unchanged). nnU-Net chooses such a step on validation cases; so does ``lgesynth experiment``
(:func:`choose_min_scar_ml` on each arm's validation predictions). The transform's default 0 leaves
predictions as they are.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from monai.transforms import MapTransform
from scipy import ndimage as ndi

from lgesynth.data.importers import nifti_stem
from lgesynth.data.labels import MYOCARDIUM, SCAR
from lgesynth.io import load_nifti, spacing_from_affine

MIN_SCAR_ML_CANDIDATES = (0.0, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0)  # ml; 1 ml ~ a 10 mm cube


def voxel_ml(affine) -> float:
    """Volume of one voxel in millilitres from a 4 x 4 affine (mm)."""
    return float(np.prod(spacing_from_affine(affine))) / 1000.0


def remove_small_scar(label: np.ndarray, min_voxels: float) -> np.ndarray:
    """``label`` (X, Y, Z) with 0 / 1 / 2: scar components (26-connected) under ``min_voxels`` become 1."""
    scar = label == SCAR
    if min_voxels <= 0 or not scar.any():
        return label
    comps, n = ndi.label(scar, structure=np.ones((3, 3, 3), dtype=bool))
    sizes = np.bincount(comps.ravel(), minlength=n + 1)
    small = np.flatnonzero(sizes < min_voxels)
    small = small[small > 0]
    out = label.copy()
    out[np.isin(comps, small)] = MYOCARDIUM
    return out


class RemoveSmallScard(MapTransform):
    """Dictionary transform on a channel-first label ``MetaTensor (1, X, Y, Z)`` (its affine gives the voxel
    volume): scar components smaller than ``min_scar_ml`` millilitres become myocardium."""

    def __init__(self, keys, min_scar_ml: float = 0.0, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.min_scar_ml = float(min_scar_ml)

    def __call__(self, data):
        d = dict(data)
        if self.min_scar_ml <= 0:
            return d
        for key in self.key_iterator(d):
            x = d[key]
            min_voxels = self.min_scar_ml / voxel_ml(np.asarray(x.affine))
            cleaned = np.stack([remove_small_scar(c.astype(np.int64), min_voxels) for c in x.detach().cpu().numpy()])
            d[key] = type(x)(torch.as_tensor(cleaned, dtype=x.dtype), meta=x.meta)
        return d


def prediction_path(predictions_dir: str | Path, image: str | Path) -> Path:
    """Where ``evaluate.yaml --save_predictions true`` writes the label predicted for ``image``."""
    return Path(predictions_dir) / f"{nifti_stem(image)}_seg.nii.gz"


def choose_min_scar_ml(cases: list[dict], predictions_dir: str | Path, candidates=MIN_SCAR_ML_CANDIDATES) -> dict:
    """nnU-Net's post-processing choice for the scar clean-up, on validation cases.

    Args:
        cases: ``{"id", "image", "label"}`` of the validation cases (absolute paths).
        predictions_dir: their predicted labels (:func:`prediction_path`), on each label's own grid.
        candidates: ``min_scar_ml`` values to try (ml).
    Returns:
        ``{"min_scar_ml", "candidates", "mean_dice_scar", "n_undefined", "per_case", "n_cases", "rule"}``: the
        candidate with the highest mean scar Dice, the smallest one on ties, so 0 unless the clean-up helps.
        As in nnU-Net the mean is over the cases whose Dice is defined (:mod:`lgesynth.dice`: a scar-free case
        predicted without scar has none; ``n_undefined`` per candidate); a candidate under which no case has
        one (no scar in any truth or prediction) is ranked as Dice 1, and its mean is None.
    Raises:
        DataError: naming a prediction file that is missing or not on its label's grid.
    """
    from lgesynth.errors import DataError
    from lgesynth.seg.metrics import dice

    candidates = sorted(float(c) for c in candidates)
    per_case: dict[str, list[float]] = {}
    for case in cases:
        path = prediction_path(predictions_dir, case["image"])
        if not path.is_file():
            raise DataError(path, f"no prediction for validation case {case['id']} (evaluate with save_predictions true)")
        pred, affine = load_nifti(path)
        truth, _ = load_nifti(case["label"])
        pred = np.rint(np.squeeze(pred)).astype(np.int64)
        if pred.shape != truth.shape:
            raise DataError(path, f"prediction shape {pred.shape} differs from its label's {truth.shape} ({case['label']})")
        truth_scar = np.asarray(truth) == SCAR
        ml = voxel_ml(affine)
        per_case[case["id"]] = [dice(remove_small_scar(pred, c / ml) == SCAR, truth_scar) for c in candidates]
    values = np.array(list(per_case.values()), dtype=np.float64).reshape(len(per_case), len(candidates))
    undefined = np.isnan(values).sum(axis=0)
    defined = len(per_case) - undefined
    means = np.where(defined > 0, np.nansum(values, axis=0) / np.maximum(defined, 1), np.nan)
    best = int(np.argmax(np.where(defined > 0, means, 1.0))) if per_case else 0
    return {"min_scar_ml": candidates[best], "candidates": candidates,
            "mean_dice_scar": [None if m != m else float(m) for m in means], "n_undefined": [int(u) for u in undefined],
            "per_case": {k: [None if d != d else d for d in v] for k, v in per_case.items()}, "n_cases": len(per_case),
            "rule": "highest mean validation scar Dice over the cases where it is defined (none: 1); smallest on ties"}
