"""The Dice coefficient of two masks, the one definition every stage reports.

    Dice(P, R) = 2 |P ∩ R| / (|P| + |R|)

Empty masks follow nnU-Net (``nnunetv2.evaluation.evaluate_predictions.compute_metrics``):

- both P and R empty: **NaN**, undefined (nothing to find and nothing found). Means over cases skip
  it (``np.nanmean``) and say how many cases were skipped; a paired test drops the pair.
- R empty, P not (e.g. scar predicted in a scar-free heart): **0.0**, as P empty and R not.

So a structure's mean Dice is over the cases where it is in the reference or in the prediction, and a
false positive in a case without the structure counts as a miss.
"""

from __future__ import annotations

import numpy as np
import torch


def dice(pred, ref, axis=None):
    """Dice of two bool (or 0 / 1) masks of one shape, reduced over ``axis``; empty masks as in the module doc.

    Args:
        pred: prediction, a numpy array or a torch tensor.
        ref: reference, of the same kind and shape.
        axis: dim(s) reduced (int or tuple); None: all. E.g. ``(subjects, points)`` masks with
            ``axis=-1`` give ``(subjects,)``.
    Returns:
        numpy: a float when every dim is reduced, else a float64 array of the kept dims;
        torch: a float64 tensor of the kept dims (0-d when every dim is reduced), on the masks' device.
    """
    if isinstance(pred, torch.Tensor) or isinstance(ref, torch.Tensor):
        pred, ref = torch.as_tensor(pred).bool(), torch.as_tensor(ref).bool()
        assert pred.shape == ref.shape, f"pred {tuple(pred.shape)} and ref {tuple(ref.shape)} differ"
        dims = tuple(range(pred.dim())) if axis is None else axis
        inter = (pred & ref).sum(dims).double()
        size = pred.sum(dims).double() + ref.sum(dims).double()
        return torch.where(size > 0, 2 * inter / size.clamp_min(1), torch.full_like(size, float("nan")))
    pred, ref = np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool)
    assert pred.shape == ref.shape, f"pred {pred.shape} and ref {ref.shape} differ"
    inter = np.count_nonzero(pred & ref, axis=axis)
    size = np.count_nonzero(pred, axis=axis) + np.count_nonzero(ref, axis=axis)
    out = np.where(size > 0, 2.0 * np.asarray(inter, dtype=np.float64) / np.maximum(size, 1), np.nan)
    return float(out) if out.ndim == 0 else out
