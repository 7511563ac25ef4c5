"""The left-ventricular cavity as a fourth training class of scar_seg's heart-ROI network.

LGE makes scar and the blood pool equally bright. A network whose background class holds the cavity
beside lungs, liver and air has to learn the endocardial border, where subendocardial scar meets the
blood, from the myocardium's classes alone. Every label already fixes the cavity: on each slice it is
the blood the myocardial ring encloses, the voxels ``binary_fill_holes(label > 0)`` adds (a basal slice
whose ring is open has none). So real and synthetic cohorts get the class without annotation, and the
network is trained on four classes while it predicts the data contract's three.

- :func:`add_cavity_class` (the ROI plan, :mod:`lgesynth.seg.cascade_plan`): ``plan["cavity_class"]``
  and a fourth output channel.
- :class:`AddCavityd` (train.yaml's cached preprocessing): label ``(1, X, Y, Z)`` slice-last, {0, 1, 2}
  -> {0, 1, 2, ``CAVITY``}, for plans with the class; identity otherwise.
- :func:`fold_cavity`, :class:`CavityFoldingInferer` (what :func:`lgesynth.seg.engine_utils.plan_inferer`
  returns for such a plan): logits ``(B, 4, ...)`` ->
  ``(B, 3, ...)``, the cavity folded into background by log-sum-exp, so softmax(background) =
  p_background + p_cavity; everything after the inferer (softmax, argmax, clean-up, Dice, MONAI Label)
  sees the three classes.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.inferers import Inferer
from monai.transforms import MapTransform
from scipy import ndimage

from lgesynth.seg.network import N_CLASSES

CAVITY = N_CLASSES  # the extra class's index: 3, after background, myocardium, scar


def has_cavity_class(plan: dict) -> bool:
    """Whether ``plan``'s network is trained with the cavity as its fourth class."""
    return bool(plan.get("cavity_class", False))


def training_classes(plan: dict) -> int:
    """The network's output channels: 3, or 4 with the cavity class."""
    return N_CLASSES + int(has_cavity_class(plan))


def add_cavity_class(plan: dict) -> dict:
    """``plan`` (a new plan, not yet trained) with the cavity class: ``cavity_class``, a fourth output, the why."""
    plan["cavity_class"] = True
    plan["network"]["out_channels"] = training_classes(plan)
    plan["why"].append("classes background, myocardium, scar + the LV cavity in training (each slice's blood inside the "
                       "myocardial ring, from the label itself): scar and blood are both bright in LGE, so the "
                       "endocardial border is learnt as a class border; predictions fold the cavity into background "
                       "(lgesynth/seg/cavity.py)")
    return plan


def add_cavity(label: np.ndarray) -> np.ndarray:
    """``(1, X, Y, Z)`` {0, 1, 2} (slices along the last axis) -> a copy with ``CAVITY`` where a slice's
    myocardium (+ scar) encloses background."""
    out = np.array(label, copy=True)
    heart = out[0] > 0
    for z in range(heart.shape[-1]):
        ring = heart[..., z]
        if ring.any():
            out[0, ..., z][ndimage.binary_fill_holes(ring) & ~ring] = CAVITY
    return out


class AddCavityd(MapTransform):
    """:func:`add_cavity` on ``keys`` (slice-last labels) when ``plan`` has the cavity class; identity otherwise."""

    def __init__(self, keys, plan: dict, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.enabled = has_cavity_class(plan)

    def __call__(self, data):
        d = dict(data)
        if not self.enabled:
            return d
        for key in self.key_iterator(d):
            x = d[key]
            if isinstance(x, torch.Tensor):
                d[key] = torch.as_tensor(add_cavity(x.detach().cpu().numpy()), dtype=x.dtype)
            else:
                d[key] = add_cavity(np.asarray(x))
        return d


def fold_cavity(logits: torch.Tensor) -> torch.Tensor:
    """``(B, 4, ...)`` logits -> ``(B, 3, ...)``: background and cavity as one class (module doc)."""
    background = torch.logsumexp(logits[:, [0, CAVITY]], dim=1, keepdim=True)
    return torch.cat([background, logits[:, 1:CAVITY]], dim=1)


class CavityFoldingInferer(Inferer):
    """Another inferer whose ``(B, 4, ...)`` logits leave it folded to ``(B, 3, ...)`` (:func:`fold_cavity`)."""

    def __init__(self, inferer: Inferer):
        super().__init__()
        self.inferer = inferer

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs) -> torch.Tensor:
        return fold_cavity(self.inferer(inputs, network, *args, **kwargs))
