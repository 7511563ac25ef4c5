"""The LV cavity as scar_seg's fourth training class: derived from the label, folded away at inference."""

from __future__ import annotations

import numpy as np
import torch

from lgesynth.seg.cavity import CAVITY, AddCavityd, add_cavity, fold_cavity, has_cavity_class, training_classes
from lgesynth.seg.engine_utils import plan_inferer


def _ring(shape=(24, 24), centre=(12, 12), inner=5, outer=8) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    r = np.hypot(yy - centre[0], xx - centre[1])
    return (r >= inner) & (r < outer)


def test_cavity_is_the_blood_each_ring_encloses_and_an_open_ring_has_none():
    label = np.zeros((1, 24, 24, 3), dtype=np.uint8)
    ring = _ring()
    label[0, ..., 0][ring] = 1
    label[0, 10:14, 4:7, 0][ring[10:14, 4:7]] = 2  # scar in the wall is part of the ring
    label[0, ..., 1][ring] = 1
    label[0, 12:, 11:14, 1] = 0  # a gap: the basal slice's open ring
    out = add_cavity(label)
    enclosed = (np.hypot(*(np.mgrid[:24, :24] - 12)) < 5)
    assert np.array_equal(out[0, ..., 0] == CAVITY, enclosed)
    assert not (out[0, ..., 1] == CAVITY).any() and not (out[0, ..., 2] == CAVITY).any()  # open ring, empty slice
    keep = out != CAVITY
    assert np.array_equal(out[keep], label[keep])  # myocardium, scar and outside untouched
    tensor = AddCavityd("label", {"cavity_class": True})({"label": torch.as_tensor(label)})["label"]
    assert tensor.dtype == torch.uint8 and np.array_equal(tensor.numpy(), out)
    assert AddCavityd("label", {})({"label": label})["label"] is label  # plans without the class: untouched


def test_folded_logits_give_background_the_cavitys_probability():
    logits = torch.randn(2, 4, 5, 6) * 3
    folded = fold_cavity(logits)
    p, q = torch.softmax(logits, 1), torch.softmax(folded, 1)
    assert folded.shape == (2, 3, 5, 6)
    assert torch.allclose(q[:, 0], p[:, 0] + p[:, CAVITY], atol=1e-6)
    assert torch.allclose(q[:, 1:], p[:, 1:CAVITY], atol=1e-6)


def test_a_plan_with_the_cavity_class_predicts_three_classes():
    plan = {"cavity_class": True, "patch_size": [16, 16], "network": {"spatial_dims": 2, "out_channels": 4}}
    assert has_cavity_class(plan) and training_classes(plan) == 4 and training_classes({}) == 3

    class CavityEverywhere(torch.nn.Module):
        def forward(self, x):
            return torch.cat([torch.zeros_like(x)] * 3 + [torch.ones_like(x)], dim=1)

    out = plan_inferer(plan, mirror_axes=(0, 1))(torch.zeros(1, 1, 16, 16, 2), CavityEverywhere())
    assert out.shape == (1, 3, 16, 16, 2) and bool((out.argmax(1) == 0).all())  # the cavity is background
