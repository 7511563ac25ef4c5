"""Canonical step 3 (labels): resize an integer label by one-hot, per-axis nearest/linear, argmax.

``label_mode="auto"`` (default) uses nearest (exact centre lookup) on axes that the resize
enlarges and linear on axes it shrinks. Round-trip Dice (canonical and back) on all 50 emidec50
cases, myocardium mean / min: auto 0.9948 / 0.969, nearest 0.9947 / 0.966, linear 0.9932 / 0.968
(scar mean: 0.9891, 0.9890, 0.9843); the cases below 0.98 are those whose crop (117–127 px at the
nominal 1 mm) must shrink to 96. On 1.4 mm synthetic stacks auto and nearest are exact (Dice 1.0).
The image itself is resized by MONAI's ``Resized`` (trilinear, anti-aliased where it shrinks).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.transforms import InvertibleTransform, MapTransform, Resize

from lgesynth.data.labels import ALLOWED_LABELS

NUM_CLASSES = len(ALLOWED_LABELS)


def label_resize_modes(in_shape, out_shape, label_mode: str = "auto") -> list[str]:
    """Per-axis mode of the forward label resize ``in_shape → out_shape``; the inverse reuses it.

    Returns:
        three of ``"nearest"`` / ``"linear"``; ``"auto"`` picks nearest where ``out >= in``.
    """
    if label_mode in ("nearest", "linear"):
        return [label_mode] * 3
    return ["nearest" if o >= i else "linear" for i, o in zip(in_shape, out_shape)]


def resize_label(label: torch.Tensor, size: Sequence[int], modes: Sequence[str]) -> torch.Tensor:
    """Resize an integer label (x, y, z) → ``size``: one-hot, per-axis linear/nearest, argmax.

    Returns:
        (size) int64 class indices.
    """
    onehot = F.one_hot(torch.as_tensor(label).round().long(), NUM_CLASSES).permute(3, 0, 1, 2)[None].float()
    linear_size = [s if m == "linear" else n for s, m, n in zip(size, modes, label.shape)]
    onehot = F.interpolate(onehot, size=linear_size, mode="trilinear", align_corners=False)
    onehot = F.interpolate(onehot, size=list(size), mode="nearest-exact")
    return onehot[0].argmax(0)


class ResizeLabeld(MapTransform, InvertibleTransform):
    """Resize labels (1, x, y, z) to ``spatial_size`` by ``resize_label``; invertible.

    The affine is updated by MONAI's ``Resize`` (align_corners=False) so it matches the image's.
    """

    def __init__(self, keys, spatial_size: Sequence[int], label_mode: str = "auto", allow_missing_keys=False):
        super().__init__(keys, allow_missing_keys)
        self.spatial_size, self.label_mode = tuple(int(s) for s in spatial_size), label_mode
        self.resizer = Resize(self.spatial_size, mode="nearest-exact")  # carries meta and affine

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            modes = label_resize_modes(img.shape[1:], self.spatial_size, self.label_mode)
            values = resize_label(torch.as_tensor(img[0]), self.spatial_size, modes)[None]
            out = self.resizer(img)
            d[key] = MetaTensor(values.to(out.dtype), meta=out.meta, applied_operations=out.applied_operations) \
                if isinstance(out, MetaTensor) else values.to(out.dtype)
            self.push_transform(d, key, extra_info={"modes": modes})
        return d

    def inverse(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            modes = self.pop_transform(d[key])["extra_info"]["modes"]
            img = d[key]
            orig_size = img.applied_operations[-1]["orig_size"]
            values = resize_label(torch.as_tensor(img[0]), orig_size, modes)[None]
            out = self.resizer.inverse(img)
            d[key] = MetaTensor(values.to(out.dtype), meta=out.meta, applied_operations=out.applied_operations)
        return d
