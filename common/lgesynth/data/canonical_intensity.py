"""Canonical step 4: robust intensity scaling to [-1, 1], and its inverse.

The ``percentiles`` (default 0.5, 99.5) of the canonical image map to -1 and +1, values outside
are clipped; the two percentile values are kept (in original intensity units) to de-normalise.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import InvertibleTransform, MapTransform


class RobustScaleIntensityd(MapTransform, InvertibleTransform):
    """Map the ``lower``/``upper`` percentiles to [-1, 1] and clip; invertible up to the clipping.

    The percentile values are stored in the image meta as ``intensity_lo`` / ``intensity_hi``.
    """

    def __init__(self, keys, lower: float = 0.5, upper: float = 99.5, allow_missing_keys=False):
        super().__init__(keys, allow_missing_keys)
        self.lower, self.upper = float(lower), float(upper)

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            x = torch.as_tensor(img).float()
            lo, hi = (float(v) for v in np.percentile(x.cpu().numpy(), [self.lower, self.upper]))
            hi = hi if hi > lo else lo + 1.0  # a constant image maps to -1
            y = torch.clamp(2.0 * (x - lo) / (hi - lo) - 1.0, -1.0, 1.0)
            if isinstance(img, MetaTensor):
                y = MetaTensor(y.as_tensor() if isinstance(y, MetaTensor) else y, meta=dict(img.meta),
                               applied_operations=list(img.applied_operations))
                y.meta["intensity_lo"], y.meta["intensity_hi"] = lo, hi
            d[key] = y
            self.push_transform(d, key, extra_info={"lo": lo, "hi": hi})
        return d

    def inverse(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            info = self.pop_transform(d[key])["extra_info"]
            d[key] = _denormalise(d[key], info["lo"], info["hi"])
        return d


def _denormalise(x, lo: float, hi: float):
    return (x + 1.0) * (0.5 * (hi - lo)) + lo


def denormalise_intensity(x, meta: Mapping):
    """Canonical intensities [-1, 1] → the original intensity units of the case.

    Args:
        x: array, tensor or float of any shape.
        meta: a ``CanonicalCase.meta`` (``intensity_lo`` / ``intensity_hi``).
    """
    return _denormalise(x, float(meta["intensity_lo"]), float(meta["intensity_hi"]))
