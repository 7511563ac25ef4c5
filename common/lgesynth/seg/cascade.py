"""scar_seg's heart-ROI cascade at run time: the stages' grids in training, and the two-stage inferer.

Plans: :mod:`lgesynth.seg.cascade_plan`. Every array here is in the bundle's slice-last frame, ``(C, X, Y, Z)``
for one volume or ``(B, C, X, Y, Z)`` for a batch, at the plan's fine target spacing; plans are slice-last
(:func:`lgesynth.seg.data.slice_last_plan`).

- **Training** (:class:`CascadeGridd`, in train.yaml's cached preprocessing): the localizer's volumes are
  downsampled in plane (:func:`downsample_image`, :func:`downsample_label`); the ROI stage's are cropped
  in plane to the label's myocardium box plus the margin (at least the patch), all slices.
- **Inference** (:class:`CascadeInferer`, what :func:`plan_cascade_inferer` returns for an ROI plan): the
  localizer runs on the downsampled volume, the largest connected component of its heart mask gives the
  box, the ROI network runs inside the box plus the margin, and its logits are placed on the input's
  grid with certain background outside, so MONAI's ``Invertd`` maps them back to the image as for a
  single-stage network. A volume where the localizer finds no heart is segmented over its whole field of
  view, with a warning naming the file.

A trained cascade is one ``models/`` folder: ``model.pt`` + ``plan.json`` (the ROI network) and
``localizer.pt`` + ``localizer_plan.json`` (the localizer, copied there by train.yaml's ``localizer_dir``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import Inferer
from monai.transforms import MapTransform
from monai.transforms.utils import generate_spatial_bounding_box
from scipy import ndimage

from lgesynth.errors import DataError
from lgesynth.pack import LOCALIZER_PLAN, LOCALIZER_WEIGHTS
from lgesynth.seg.cascade_plan import plan_stage
from lgesynth.seg.data import slice_last_plan
from lgesynth.seg.engine_utils import load_weights, plan_inferer
from lgesynth.seg.network import build_dynunet
from lgesynth.seg.plan import load_plan

logger = logging.getLogger("lgesynth.seg.cascade")

BACKGROUND_LOGIT_GAP = 30.0  # outside the ROI: background logit 0, every other class -30 (softmax ~1e-13)


def downsample_image(x: torch.Tensor, factor) -> torch.Tensor:
    """``(..., C, X, Y, Z)`` -> the mean over ``factor`` blocks (a partial block at the end: the mean of
    what it holds); ``factor`` (3,) ints, 1 leaves an axis alone."""
    return _pool(x, factor, F.avg_pool3d)


def downsample_label(y: torch.Tensor, factor) -> torch.Tensor:
    """A label ``(..., 1, X, Y, Z)`` in {0, 1, 2} -> the maximum over ``factor`` blocks (scar wins over
    myocardium over background, so a one-voxel wall stays visible to the localizer)."""
    return _pool(y, factor, F.max_pool3d)


def _pool(x: torch.Tensor, factor, pool) -> torch.Tensor:
    factor = tuple(int(f) for f in factor)
    if all(f == 1 for f in factor):
        return x
    batched = x.ndim == 5
    t = torch.as_tensor(x).float()
    out = pool(t if batched else t[None], kernel_size=factor, stride=factor, ceil_mode=True)
    return (out if batched else out[0]).to(x.dtype)


def roi_box(lo, hi, margin, min_size, shape) -> tuple[slice, slice]:
    """In-plane crop ``(slice X, slice Y)``: the box ``[lo, hi)`` (voxels, 2 axes) grown by ``margin`` voxels
    each side, at least ``min_size`` voxels (centred), shifted inside ``shape`` when it fits, else clipped."""
    box = []
    for a in range(2):
        centre = (lo[a] + hi[a]) / 2.0
        size = int(max(np.ceil(hi[a] - lo[a] + 2 * margin[a]), min_size[a]))
        start = int(np.floor(centre - size / 2.0))
        start = min(max(start, 0), max(int(shape[a]) - size, 0))
        box.append(slice(start, min(start + size, int(shape[a]))))
    return box[0], box[1]


def label_box(mask: np.ndarray) -> tuple[list[int], list[int]] | None:
    """In-plane bounding box ``(lo, hi)`` of a ``(X, Y, Z)`` mask (hi exclusive), None when empty."""
    if not mask.any():
        return None
    lo, hi = generate_spatial_bounding_box(mask[None])  # MONAI's, over the (X, Y, Z) axes; hi exclusive
    return [int(lo[0]), int(lo[1])], [int(hi[0]), int(hi[1])]


def input_spacing_mm(plan: dict) -> list[float]:
    """The spacing a stage's volumes are resampled to before :class:`CascadeGridd`: the fine target spacing
    (for the localizer its ``input_spacing_mm``, which it then downsamples; otherwise the plan's target)."""
    return list((plan.get("cascade") or {}).get("input_spacing_mm", plan["target_spacing_mm"]))


def _margin_voxels(plan: dict) -> list[float]:
    return [plan["cascade"]["margin_mm"] / plan["target_spacing_mm"][a] for a in (0, 1)]


def _in_plane_patch(plan: dict) -> list[int]:
    return [int(p) for p in plan["patch_size"][:2]]


class CascadeGridd(MapTransform):
    """A cascade stage's training grid (module doc); the identity for a single-stage plan.

    ``keys``: the image and label keys; ``label_key`` marks the label (pooled by maximum; its myocardium
    box places the ROI). Arrays ``(C, X, Y, Z)``, slice-last, at the plan's fine target spacing.
    """

    def __init__(self, keys, plan: dict, label_key: str = "label", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.plan, self.label_key, self.stage = plan, label_key, plan_stage(plan)

    def __call__(self, data):
        d = dict(data)
        if self.stage == "localizer":
            factor = self.plan["cascade"]["downsample"]
            for key in self.key_iterator(d):
                d[key] = (downsample_label if key == self.label_key else downsample_image)(d[key], factor)
        elif self.stage == "roi":
            box = label_box(np.asarray(d[self.label_key][0]) > 0)
            if box is not None:
                crop = roi_box(*box, _margin_voxels(self.plan), _in_plane_patch(self.plan), d[self.label_key].shape[1:3])
                for key in self.key_iterator(d):
                    d[key] = d[key][:, crop[0], crop[1]]
        return d


class CascadeInferer(Inferer):
    """Two-stage inference (module doc): ``(B, 1, X, Y, Z)`` -> logits ``(B, classes, X, Y, Z)`` on the same grid.

    Args:
        localizer: the stage-1 network (put in eval mode here).
        localizer_plan, plan: the two stages' slice-last plans.
        inferer: the ROI network's inferer (sliding window over its patch, mirroring).
        localizer_inferer: the localizer's inferer.
    """

    def __init__(self, localizer: torch.nn.Module, localizer_plan: dict, plan: dict, inferer, localizer_inferer):
        super().__init__()
        self.localizer, self.localizer_plan, self.plan = localizer.eval(), localizer_plan, plan
        self.inferer, self.localizer_inferer = inferer, localizer_inferer
        self.factor = [int(f) for f in localizer_plan["cascade"]["downsample"]]

    def heart_box(self, x: torch.Tensor) -> tuple[list[int], list[int]] | None:
        """The in-plane box (fine voxels, hi exclusive) of the localizer's largest heart component in one
        volume ``(1, 1, X, Y, Z)``; None when it finds no heart."""
        with torch.no_grad():
            logits = self.localizer_inferer(downsample_image(x, self.factor), self.localizer)
        heart = (torch.argmax(logits, dim=1)[0] > 0).cpu().numpy()
        components, n = ndimage.label(heart)
        if n == 0:
            return None
        sizes = ndimage.sum_labels(heart, components, index=np.arange(1, n + 1))
        lo, hi = label_box(components == 1 + int(np.argmax(sizes)))
        return [lo[a] * self.factor[a] for a in (0, 1)], [min(hi[a] * self.factor[a], x.shape[2 + a]) for a in (0, 1)]

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs) -> torch.Tensor:
        return torch.cat([self._one(inputs[b:b + 1], network, *args, **kwargs) for b in range(inputs.shape[0])])

    def _one(self, x: torch.Tensor, network, *args, **kwargs) -> torch.Tensor:
        box = self.heart_box(x)
        if box is None:
            logger.warning("%s: the localizer found no heart; segmenting the whole field of view", _source_name(x))
            return self.inferer(x, network, *args, **kwargs)
        sx, sy = roi_box(*box, _margin_voxels(self.plan), _in_plane_patch(self.plan), x.shape[2:4])
        roi_logits = self.inferer(x[:, :, sx, sy], network, *args, **kwargs)
        out = torch.full((1, roi_logits.shape[1], *x.shape[2:]), -BACKGROUND_LOGIT_GAP, dtype=roi_logits.dtype,
                         device=roi_logits.device)
        out[:, 0] = 0.0
        out[:, :, sx, sy] = torch.as_tensor(roi_logits)
        return out


def _source_name(x: torch.Tensor) -> str:
    """The file a (MetaTensor) batch came from, for messages."""
    name = getattr(x, "meta", {}).get("filename_or_obj", "an input volume")
    return str(name[0] if isinstance(name, (list, tuple)) else name)


def plan_cascade_inferer(plan: dict, models_dir: str | Path, device=None, overlap: float = 0.5, mode: str = "gaussian",
                         mirror_axes=()):
    """The inferer for a trained network of ``plan`` (slice-last): :func:`lgesynth.seg.engine_utils.plan_inferer`
    for a single-stage plan, a :class:`CascadeInferer` over the localizer in ``models_dir`` for an ROI plan.

    Raises:
        DataError: naming the missing file when an ROI plan's localizer is not in ``models_dir``.
    """
    inferer = plan_inferer(plan, overlap, mode, mirror_axes=mirror_axes)
    if plan_stage(plan) != "roi":
        return inferer
    models_dir = Path(models_dir)
    weights = models_dir / LOCALIZER_WEIGHTS
    if not weights.is_file():
        raise DataError(weights, "missing: this network is the ROI stage of a cascade and needs its localizer "
                                 f"({LOCALIZER_WEIGHTS} + {LOCALIZER_PLAN}); train with --localizer_dir")
    localizer_plan = slice_last_plan(load_plan(models_dir / LOCALIZER_PLAN))
    localizer = load_weights(build_dynunet(localizer_plan), weights).to(device or "cpu")
    return CascadeInferer(localizer, localizer_plan, plan, inferer, plan_inferer(localizer_plan, overlap, mode))


def check_localizer(plan: dict, localizer_dir) -> None:
    """Before training an ROI stage: its localizer's ``model.pt`` + ``plan.json`` must exist in ``localizer_dir``.

    Raises:
        DataError: naming what is missing.
    """
    if plan_stage(plan) != "roi":
        return
    if localizer_dir in (None, ""):
        raise DataError("localizer_dir", "this plan is the ROI stage of a cascade: train its localizer first "
                                         "(a plan with stage localizer) and pass its models folder as --localizer_dir")
    for name in ("model.pt", "plan.json"):
        if not (Path(localizer_dir) / name).is_file():
            raise DataError(Path(localizer_dir) / name, "missing: the localizer's training has not finished")


def localizer_files(localizer_dir) -> dict[str, str]:
    """What ships beside an ROI network (train.yaml's ``ModelExporter(extra_files=...)``): ``{name in models/:
    source}``, the localizer's ``model.pt`` / ``plan.json`` as ``localizer.pt`` / ``localizer_plan.json``; {}
    without a ``localizer_dir``."""
    if localizer_dir in (None, ""):
        return {}
    return {LOCALIZER_WEIGHTS: str(Path(localizer_dir) / "model.pt"), LOCALIZER_PLAN: str(Path(localizer_dir) / "plan.json")}
