"""Per-volume results of a cohort (:class:`CohortStats`), and the real cohorts the quality report compares with.

A cohort's stats hold, per volume, its ``FEATURES``, its plausibility problems, its myocardium mask on
one ``grid_shape`` (for image-space distances), optionally its latent, and the mid-ventricular slice
(image and label, 2D) of the first ``keep_slices`` volumes (for the nearest-neighbour figure). They
are saved as ``<name>.json`` + ``<name>.safetensors`` so a report needs no training data.

The edm_synth models folder holds two real-cohort stats, both written by the train run's export:

- ``reference``: the training cohort **as the inr2vec decoder renders it** (decoded training
  latents, :meth:`GeneratorExporter.reference_stats`); what the EDM learned from.
- ``source``: the training subjects' **own** volumes and labels, re-made on the canonical grid from the
  source files the INR bank records (:func:`source_stats`), each at its own canonical voxel size, with
  every subject's mid slice; what the generator should match. A decoder that dilates masks shows
  against this one, not against the decoded reference.

:func:`reference_from_datalist` measures real pairs of a datalist the same way (``--reference_datalist``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lgesynth.errors import DataError
from lgesynth.io import atomic_path, spacing_from_affine, write_json
from lgesynth.synth.features import plausibility_problems, resize_mask, volume_features

logger = logging.getLogger("lgesynth.edm")

SOURCE = "source"
REFERENCE = "reference"


@dataclass
class CohortStats:
    """Per-volume results of a cohort (see module doc).

    Attributes:
        grid_shape: (X, Y, Z) grid the myocardium masks are compared on.
        ids, features, problems: per volume.
        masks: per volume, the myocardium mask resized to ``grid_shape`` and flattened, (X*Y*Z,) bool.
        latents: (n, dim) or None.
        keep_slices: how many volumes' mid slices to keep (the first ones added); None keeps every one.
        slices: id -> ``(image (x, y) float32 or None, label (x, y) uint8)``, the mid-ventricular slice
            (``viz.mid_slice``) across the slice axis.
    """

    grid_shape: tuple[int, int, int]
    ids: list[str] = field(default_factory=list)
    features: list[dict] = field(default_factory=list)
    problems: list[list[str]] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    latents: torch.Tensor | None = None
    keep_slices: int | None = 0
    slices: dict[str, tuple[np.ndarray | None, np.ndarray]] = field(default_factory=dict)

    def add(self, sid: str, image: np.ndarray | None, label: np.ndarray, spacing_mm, axis: int = 2) -> dict:
        """Measure one volume (image and label (x, y, z), ``spacing_mm`` (3,) mm, slice axis ``axis``);
        returns its record (``id``, features, ``plausible``, ``problems``)."""
        from lgesynth.viz import mid_slice

        label = np.asarray(label)
        myo = np.isin(label, (1, 2))
        feats = volume_features(image, label, spacing_mm, axis)
        problems = plausibility_problems(myo, label == 2, axis, spacing_mm)
        self.ids.append(str(sid))
        self.features.append(feats)
        self.problems.append(problems)
        self.masks.append(resize_mask(myo, self.grid_shape).reshape(-1))
        if self.keep_slices is None or len(self.slices) < self.keep_slices:
            lab = np.moveaxis(label, axis, -1)
            k = mid_slice(lab)
            img = None if image is None else np.asarray(np.moveaxis(np.asarray(image), axis, -1)[..., k], dtype=np.float32)
            self.slices[str(sid)] = (img, lab[..., k].astype(np.uint8))
        return {"id": str(sid), **feats, "plausible": not problems, "problems": problems}

    def __len__(self) -> int:
        return len(self.ids)

    def values(self, name: str) -> np.ndarray:
        """Finite values of one feature, (k,) float64."""
        v = np.asarray([f[name] for f in self.features], dtype=np.float64)
        return v[np.isfinite(v)]

    def mask_matrix(self) -> np.ndarray:
        """(n, X*Y*Z) bool."""
        return np.stack(self.masks) if self.masks else np.zeros((0, int(np.prod(self.grid_shape))), dtype=bool)

    @property
    def plausible_fraction(self) -> float:
        return float(np.mean([not p for p in self.problems])) if self.problems else float("nan")

    def save(self, directory: str | Path, name: str = REFERENCE) -> None:
        """``name.safetensors`` (packed masks, latents, mid slices) then ``name.json`` (ids, features, problems)."""
        from safetensors.torch import save_file

        d = Path(directory)
        tensors = {"masks": torch.from_numpy(np.packbits(self.mask_matrix(), axis=1))}
        if self.latents is not None:
            tensors["latents"] = self.latents.detach().to(torch.float32).contiguous().cpu()
        slice_ids = list(self.slices)
        if slice_ids:
            labels = [self.slices[s][1] for s in slice_ids]
            if len({lab.shape for lab in labels}) > 1:
                raise ValueError(f"{name}: mid slices of different shapes cannot be stacked: {sorted({lab.shape for lab in labels})}")
            images = [self.slices[s][0] for s in slice_ids]
            tensors["slice_labels"] = torch.from_numpy(np.stack(labels))
            tensors["slice_images"] = torch.from_numpy(np.stack([np.zeros(lab.shape, np.float32) if img is None else img
                                                                 for img, lab in zip(images, labels)]).astype(np.float16))
            tensors["slice_has_image"] = torch.tensor([img is not None for img in images], dtype=torch.uint8)
        with atomic_path(d / f"{name}.safetensors") as tmp:
            save_file(tensors, str(tmp))
        write_json(d / f"{name}.json", {"grid_shape": list(self.grid_shape), "ids": self.ids,
                                        "features": [{k: (None if v != v else v) for k, v in f.items()} for f in self.features],
                                        "problems": self.problems, "slice_ids": slice_ids})

    @classmethod
    def load(cls, directory: str | Path, name: str = REFERENCE) -> "CohortStats":
        """Read ``name.json`` + ``name.safetensors``; ``DataError`` naming the file when missing or torn."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        d = Path(directory)
        jpath, tpath = d / f"{name}.json", d / f"{name}.safetensors"
        for p in (jpath, tpath):
            if not p.is_file():
                raise DataError(p, "cohort statistics not found; the edm_synth train run writes them into models_dir "
                                "at its end (copy the whole models folder, or pass a reference datalist)")
        try:
            doc = json.loads(jpath.read_text())
            tensors = load_file(str(tpath))
            n, P = len(doc["ids"]), int(np.prod(doc["grid_shape"]))
            masks = np.unpackbits(tensors["masks"].numpy(), axis=1, count=P).astype(bool) if n else np.zeros((0, P), bool)
            feats = [{k: (float("nan") if v is None else v) for k, v in f.items()} for f in doc["features"]]
            slices = {}
            for i, sid in enumerate(doc.get("slice_ids", [])):
                img = tensors["slice_images"][i].float().numpy() if int(tensors["slice_has_image"][i]) else None
                slices[sid] = (img, tensors["slice_labels"][i].numpy())
        except (KeyError, IndexError, ValueError, OSError, SafetensorError) as exc:
            raise DataError(jpath, f"unreadable cohort statistics ({type(exc).__name__}: {exc}); re-export the "
                            "generator (the edm_synth train run's end) or copy the whole models folder") from None
        return cls(tuple(doc["grid_shape"]), list(doc["ids"]), feats, [list(p) for p in doc["problems"]], list(masks),
                   tensors.get("latents"), None, slices)


def reference_from_datalist(datalist: str | Path, grid: dict, sections=("training",), latents: torch.Tensor | None = None) -> CohortStats:
    """Stats of real image/label pairs brought onto the generator's canonical grid (each at its own
    canonical voxel size), with every mid slice."""
    from lgesynth.data.canonical import CanonicalGrid
    from lgesynth.data.canonical_case import to_canonical
    from lgesynth.data.datalist import load_datalist

    g = CanonicalGrid.from_record(grid)
    stats = CohortStats(g.shape, latents=latents, keep_slices=None)
    for e in load_datalist(datalist, sections):
        case = to_canonical(e.get("image"), e["label"], g)
        stats.add(e["id"], case.image, case.label, spacing_from_affine(case.affine))
    return stats


def source_stats(bank_dir: str | Path, ids: list[str], grid: dict) -> CohortStats:
    """Stats of the subjects ``ids`` from the source files their INR bank records (``inr_bank.json``),
    re-made on the canonical ``grid`` as inr2vec's targets are (``data.canonical_case.to_canonical``), each at
    its own canonical voxel size, with every mid slice.

    Raises:
        DataError: naming the bank or the source file when it is missing or unreadable, or when the
            bank does not hold one of ``ids``.
    """
    from lgesynth.data.canonical import CanonicalGrid
    from lgesynth.data.canonical_case import to_canonical
    from lgesynth.inr.bank import BANK_JSON, load_bank

    bank = load_bank(bank_dir)
    where = Path(bank_dir) if Path(bank_dir).name == BANK_JSON else Path(bank_dir) / BANK_JSON
    by_id = {s["id"]: s for s in bank.subjects}
    missing = [sid for sid in ids if not by_id.get(sid, {}).get("source", {}).get("label")]
    if missing:
        raise DataError(where, f"no source files recorded for {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    g = CanonicalGrid.from_record(grid)
    stats = CohortStats(g.shape, keep_slices=None)
    for sid in ids:
        src = by_id[sid]["source"]
        case = to_canonical(src.get("image"), src["label"], g)
        stats.add(sid, case.image, case.label, spacing_from_affine(case.affine))
    return stats


def measure_source(inr2vec_record: dict, inr2vec_dir: str | Path, ids: list[str]) -> tuple[CohortStats | None, str | None]:
    """``(source_stats(bank, ids, grid), None)`` for the bank and grid an inr2vec model records
    (``inr2vec_model.json``; a relative bank folder that does not exist from here is taken relative to
    ``inr2vec_dir``), or ``(None, why)`` with a logged warning when the bank or a source file cannot be read."""
    bank = Path(inr2vec_record.get("bank", {}).get("dir", ""))
    bank = bank if bank.exists() or bank.is_absolute() else Path(inr2vec_dir) / bank
    try:
        return source_stats(bank, ids, inr2vec_record["grid"]), None
    except (DataError, OSError) as exc:
        logger.warning("source cohort not measured, the quality report will lack it: %s", exc)
        return None, f"the training subjects' source files could not be read at export ({exc})"


def load_source_stats(models_dir: str | Path, record: dict | None = None) -> tuple[CohortStats | None, str | None]:
    """``(source stats, None)`` from ``models_dir/source.{json,safetensors}``, or ``(None, why)`` when the
    generator was exported without them (``record``: generator.json, whose ``source`` says why)."""
    status = (record or {}).get(SOURCE) or {}
    if status.get("missing"):
        return None, str(status["missing"])
    if not (Path(models_dir) / f"{SOURCE}.json").is_file():
        return None, (f"{Path(models_dir) / (SOURCE + '.json')} not found: the edm_synth train run writes it beside "
                      "generator.json when the INR bank's source files are readable; copy the whole models folder")
    return CohortStats.load(models_dir, SOURCE), None
