"""What the scar_seg bundle configs need between a datalist and MONAI: data dicts, the plan in the
training frame, real/synthetic mixing, and the 2D/3D switch.

- **Plan** (:func:`ensure_plan`, :func:`slice_last_plan`): the plan file is read when it exists,
  else derived from the training section's fingerprint and written (nnU-Net: derive, record, let the
  user edit). Plans are made in the datalist's stored axis order; the bundle's transforms put the
  slice axis last (:class:`~lgesynth.data.canonical_orientation.SliceLastOrientationd`), so the target spacing,
  patch and DynUNet kernels/strides are permuted the same way.
- **Data dicts** (:func:`split_training`, :func:`synthetic_dicts`, :func:`inference_dicts`):
  ``{"id", "image", "label", "synthetic"}`` with absolute paths. Validation during training uses the
  datalist's ``"validation"`` section when it has one, else a seeded hold-out of the training cases;
  the ``"test"`` section is never seen by training.
- **Mixing** (:class:`MixedSampler`): the training dataset is the real cases followed by the
  synthetic ones; the sampler decides what an epoch draws. ``synthetic_ratio`` r in [0, 1] makes
  round(r · samples) of each epoch's samples synthetic and the rest real, each kind in shuffled passes
  over its cases, shuffled together, so every batch holds r synthetic in expectation (r = 0: real
  only, r = 1: synthetic only); ``"all"`` simply concatenates the two lists and shuffles (the share is
  then whatever the two sizes give). It is a ``DistributedSampler``, so one class serves one process and torchrun (each rank takes
  its share of the same seeded order; MONAI's trainer calls ``set_epoch`` on it).
- **Seeded samples** (``MixedSampler(sample_seeds=True)`` + :class:`SeededSamples`): the sampler also
  gives every position of the epoch order a seed, and the dataset re-seeds its random transforms (patch
  crop, augmentation) with it before making that sample. A sample is then a function of (seed, epoch,
  position) only, not of the process, rank or loader worker that makes it: W ranks with batch B see
  exactly the samples of one process with batch W·B (``multi_gpu_train.yaml``), whatever ``num_workers``.
- **2D plans** (:class:`ToPlanDimsd`): training crops are 3D patches of depth 1 along the slice axis
  (last); this transform drops that axis so the 2D DynUNet sees (channel, x, y). Validation and
  inference run on whole volumes with MONAI's ``SliceInferer``.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import torch
from monai.transforms import MapTransform, SqueezeDim
from torch.utils.data import Dataset, DistributedSampler

from lgesynth.data.datalist import load_datalist
from lgesynth.errors import DataError
from lgesynth.flags import flag
from lgesynth.seg.cost_calibration import calibrate_plan
from lgesynth.seg.plan import load_plan, write_plan

NIFTI_SUFFIXES = (".nii", ".nii.gz")


# ---------------------------------------------------------------------------------------------
# plan
# ---------------------------------------------------------------------------------------------


def ensure_plan(plan_path: str | Path | None, datalist: str | Path, output_dir: str | Path,
                preset: str = "cpu", budget_minutes: float | None = None, calibrate: bool = False,
                stage: str = "full") -> dict:
    """The training plan: ``plan_path`` when given (it must exist; a copy goes to ``output_dir/plan.json``
    so that the run folder holds the plan its model was trained with); else ``output_dir/plan.json``,
    made from the training section's fingerprint with ``preset`` / ``budget_minutes`` when missing
    (so a resumed run keeps its plan, and a user's edit of it is respected). ``calibrate``: a new plan
    with a time budget is re-planned from one step of its network timed on this machine
    (:func:`lgesynth.seg.cost_calibration.calibrate_plan`), so the budget holds here and not only on the machine the
    cost model was measured on.

    Raises:
        DataError: naming ``plan_path`` when it is given but missing or not a plan.
    """
    path = Path(output_dir) / "plan.json"
    if plan_path not in (None, ""):
        plan = load_plan(plan_path)
        if Path(plan_path).resolve() != path.resolve():
            write_plan(path, plan)  # the run folder keeps the plan it was trained with
        return plan
    if path.exists():
        return load_plan(path)
    from lgesynth.data.fingerprint import fingerprint
    from lgesynth.seg.cascade_plan import stage_plan

    plan = stage_plan(fingerprint(datalist, "training"), stage, preset=preset, budget_minutes=budget_minutes)
    if calibrate and plan["budget"]["budget_minutes"] is not None:
        plan = calibrate_plan(plan)
    write_plan(path, plan)
    return plan


def slice_last_plan(plan: dict) -> dict:
    """A copy of ``plan`` in the bundle's array frame (slice axis last): ``target_spacing_mm``,
    ``patch_size`` (3D plans), a cascade stage's per-axis geometry and the network's ``kernel_size`` / ``strides`` / ``upsample_kernel_size``
    permuted accordingly; 2D plans' in-plane axes keep their order. Adds ``"frame": "slice-last"``."""
    if plan.get("frame") == "slice-last":
        return plan
    out = copy.deepcopy(plan)
    axis = int(plan["slice_axis"])
    order = [a for a in range(3) if a != axis] + [axis]
    out["target_spacing_mm"] = [plan["target_spacing_mm"][a] for a in order]
    for key in ("downsample", "input_spacing_mm", "roi_mm"):  # a cascade stage's per-axis geometry
        if key in (plan.get("cascade") or {}):
            out["cascade"][key] = [plan["cascade"][key][a] for a in order]
    if plan["network"]["spatial_dims"] == 3:
        out["patch_size"] = [plan["patch_size"][a] for a in order]
        for key in ("kernel_size", "strides", "upsample_kernel_size"):
            out["network"][key] = [[stage[a] for a in order] for stage in plan["network"][key]]
    out["slice_axis"], out["spatial_axes"], out["frame"] = 2, ([0, 1, 2] if plan["network"]["spatial_dims"] == 3 else [0, 1]), "slice-last"
    return out


# ---------------------------------------------------------------------------------------------
# data dicts
# ---------------------------------------------------------------------------------------------


def _dicts(entries: list[dict], synthetic: bool) -> list[dict]:
    return [{"id": e["id"], "image": e["image"], "label": e["label"], "synthetic": bool(e.get("synthetic", synthetic))}
            for e in entries]


def split_training(datalist: str | Path, val_fraction: float = 0.2, seed: int = 0) -> dict[str, list[dict]]:
    """``{"train": [...], "val": [...]}`` data dicts from a datalist (module doc).

    Validation: the ``"validation"`` section if present; else ``round(val_fraction · n)`` training cases
    (at least 1 and leaving at least 1 for training when ``val_fraction`` > 0), chosen with ``seed``.
    """
    doc_sections = {e["section"] for e in load_datalist(datalist)}
    train = _dicts(load_datalist(datalist, "training"), False)
    if "validation" in doc_sections:
        return {"train": train, "val": _dicts(load_datalist(datalist, "validation"), False)}
    n_val = 0 if val_fraction <= 0 or len(train) < 2 else min(max(1, round(val_fraction * len(train))), len(train) - 1)
    chosen = set(np.random.default_rng(seed).permutation(len(train))[:n_val].tolist())
    return {"train": [d for i, d in enumerate(train) if i not in chosen],
            "val": [d for i, d in enumerate(train) if i in chosen]}


def synthetic_dicts(synthetic_datalist: str | Path | None) -> list[dict]:
    """Data dicts of every entry of a synthetic cohort's datalist (all sections); ``[]`` for None."""
    if synthetic_datalist in (None, ""):
        return []
    return _dicts(load_datalist(synthetic_datalist), True)


def inference_dicts(source: str | Path) -> list[dict]:
    """``[{"id", "image"}]`` for a NIfTI file, a folder of them, or a datalist (its ``"test"`` section
    if it has one, else every entry).

    Raises:
        DataError: naming ``source`` when it is missing or holds no NIfTI file.
    """
    path = Path(source)
    if path.suffix == ".json":
        sections = {e["section"] for e in load_datalist(path)}
        entries = load_datalist(path, "test" if "test" in sections else None)
        return [{"id": e["id"], "image": e["image"]} for e in entries]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.name.endswith(NIFTI_SUFFIXES))
        if not files:
            raise DataError(path, "no .nii / .nii.gz files in this folder")
    elif path.is_file():
        files = [path]
    else:
        raise DataError(path, "input not found (give a NIfTI file, a folder of them, or a datalist .json)")
    return [{"id": p.name.split(".")[0], "image": str(p.resolve())} for p in files]


def test_dicts(datalist: str | Path, section: str = "test") -> list[dict]:
    """``[{"id", "image", "label_file"}]`` of a datalist's test section, for evaluation: the label is
    not transformed, the report reads it from its file on its own grid."""
    return [{"id": e["id"], "image": e["image"], "label_file": e["label"]} for e in load_datalist(datalist, section)]


def validate_images(dicts: list[dict]) -> list[dict]:
    """Check every ``"image"`` as :func:`lgesynth.data.validate.validate_datalist` checks images
    (readable, 3D, plausible spacing, finite, not constant); returns ``dicts``.

    Raises:
        DataError: listing every problem, each line starting with the file's path.
    """
    from lgesynth.data.validate import image_problems, spacing_problems
    from lgesynth.io import load_nifti

    problems = []
    for d in dicts:
        try:
            image, affine = load_nifti(d["image"])
        except DataError as exc:
            problems.append(str(exc))
            continue
        problems += [f"{d['image']}: {p}" for p in spacing_problems(image.shape, affine) + image_problems(image)]
    if problems:
        lines = "\n".join(f"  {p}" for p in problems)
        raise DataError(None, f"{len(problems)} problem(s) in the input images; fix or remove them:\n{lines}")
    return dicts


# ---------------------------------------------------------------------------------------------
# real / synthetic mixing
# ---------------------------------------------------------------------------------------------


def synthetic_fraction(n_real: int, n_synthetic: int, ratio) -> float:
    """Share of an epoch's samples that are synthetic (module doc); ``ratio`` in [0, 1] or "all"."""
    if n_synthetic == 0:
        return 0.0
    if n_real == 0:
        return 1.0
    if ratio == "all":
        return n_synthetic / (n_real + n_synthetic)
    ratio = float(ratio)
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f'synthetic_ratio must be in [0, 1] or "all", got {ratio}')
    return ratio


class MixedSampler(DistributedSampler):
    """Indices into ``real + synthetic`` (real first) for one epoch (module doc).

    An epoch holds round(fraction · total) synthetic samples and the rest real ones; each kind is
    drawn as consecutive shuffled passes over its cases (every case once before any repeats), then
    the two are shuffled together.

    Args:
        dataset: the concatenated dataset (only its length is used).
        n_real: how many of its first items are real.
        ratio: synthetic share in [0, 1], or ``"all"`` (the share the two list sizes give); ignored
            without synthetic items.
        num_samples: samples per epoch on all ranks together; default one pass over the real cases
            plus the synthetic ones that the ratio adds to it (all synthetic ones for ``"all"``).
        num_replicas, rank: torchrun world size and this process's rank (default 1 and 0).
        seed: the order is a function of (seed, epoch) only, identical on every rank.
        sample_seeds: yield ``(index, sample seed)`` pairs for :class:`SeededSamples` instead of indices.
    """

    def __init__(self, dataset, n_real: int, ratio=0.5, num_samples: int | None = None,
                 num_replicas: int = 1, rank: int = 0, seed: int = 0, sample_seeds: bool = False):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.sample_seeds = flag(sample_seeds, "sample_seeds")
        self.n_real, self.n_synthetic = int(n_real), len(dataset) - int(n_real)
        if self.n_real + self.n_synthetic == 0:
            raise ValueError("no training cases: the datalist's training section and the synthetic datalist are empty")
        self.fraction = synthetic_fraction(self.n_real, self.n_synthetic, ratio)
        if num_samples:
            total = int(num_samples)
        elif self.fraction == 1.0:
            total = self.n_synthetic
        else:
            total = max(1, round(self.n_real / (1.0 - self.fraction)))
        self.num_samples = math.ceil(total / self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas
        self.n_synthetic_per_epoch = round(self.fraction * self.total_size)

    @staticmethod
    def _passes(n: int, offset: int, count: int, g: torch.Generator) -> list[int]:
        out: list[int] = []
        while len(out) < count:
            out += (offset + torch.randperm(n, generator=g)).tolist()
        return out[:count]

    def epoch_order(self) -> tuple[list[int], list[int]]:
        """All ranks' indices for the current epoch (length ``num_samples · num_replicas``) and a seed per position."""
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        n_synthetic = self.n_synthetic_per_epoch
        both = (self._passes(self.n_real, 0, self.total_size - n_synthetic, g)
                + self._passes(self.n_synthetic, self.n_real, n_synthetic, g))
        order = [both[i] for i in torch.randperm(len(both), generator=g).tolist()]
        return order, torch.randint(2**31 - 1, (len(order),), generator=g).tolist()  # drawn after the order

    def epoch_indices(self) -> list[int]:
        """All ranks' indices for the current epoch (length ``num_samples · num_replicas``)."""
        return self.epoch_order()[0]

    def __iter__(self):
        order, seeds = self.epoch_order()
        items = list(zip(order, seeds)) if self.sample_seeds else order
        return iter(items[self.rank :: self.num_replicas])

    def __len__(self) -> int:
        return self.num_samples


class SeededSamples(Dataset):
    """``dataset`` indexed by the ``(index, seed)`` pairs of ``MixedSampler(sample_seeds=True)``.

    Item ``(i, seed)`` is ``dataset[i]`` made after re-seeding ``dataset.transform`` (a MONAI ``Compose``,
    which seeds each of its random transforms from ``seed``), so its random crop and augmentation depend
    on ``seed`` alone (module doc). Works with loader workers: each re-seeds its own copy per item.
    """

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        self.dataset.transform.set_random_state(seed=int(seed))
        return self.dataset[int(index)]


# ---------------------------------------------------------------------------------------------
# 2D plans
# ---------------------------------------------------------------------------------------------


class ToPlanDimsd(MapTransform):
    """Drop the trailing spatial axis of depth-1 patches when the plan is 2D; identity for 3D.

    ``(channel, x, y, 1) -> (channel, x, y)`` for ``spatial_dims == 2``.
    """

    def __init__(self, keys, spatial_dims: int, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.spatial_dims = int(spatial_dims)

    def __call__(self, data):
        d = dict(data)
        if self.spatial_dims == 3:
            return d
        for key in self.key_iterator(d):
            img = d[key]
            assert img.shape[-1] == 1, f"2D plan: expected a depth-1 patch, got {tuple(img.shape)}"
            d[key] = SqueezeDim(dim=img.ndim - 1)(img)  # MONAI drops the axis from the affine too
        return d
