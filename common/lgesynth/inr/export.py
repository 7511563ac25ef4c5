"""Bank entries to NIfTI: on the canonical grid, on the subject's original grid, or at any spacing.

The bank stores, per subject, the canonical-grid ``meta`` (from ``lgesynth.data.canonical_case``) and,
per bank, the shared coordinate half-range ``z_extent``. A subject's own canonical box has the
physical aspect ``physical_aspect(meta)``; coordinates for another spacing are made in that box and
their z rescaled to the bank's frame (``z * z_extent / aspect``), so the label keeps its physical
extent whatever the spacing (continuous super-resolution, e.g. 1 mm isotropic through-plane).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lgesynth.data.canonical_case import from_canonical
from lgesynth.data.canonical_coords import canonical_coords, coords_for_spacing, physical_aspect
from lgesynth.data.canonical_intensity import denormalise_intensity
from lgesynth.inr.bank import InrBank
from lgesynth.inr.render import render_volume
from lgesynth.io import save_nifti


def bank_z_extent(bank: InrBank) -> float:
    """The coordinate half-range in z that the bank's INRs were fitted with."""
    return float(bank.fit.get("z_extent", 1.0))


def render_canonical(bank: InrBank, index: int | str, chunk: int = 65536) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(image (X, Y, Z) in [-1, 1], label (X, Y, Z) uint8, affine (4, 4))`` on the canonical grid."""
    meta = bank.subjects[bank.ids.index(index) if isinstance(index, str) else index]["canonical"]
    shape = tuple(meta["canonical_shape"])
    coords = canonical_coords(shape, bank_z_extent(bank))
    image, label = render_volume(bank.params(index), coords, shape, bank.spec, chunk)
    return image, label, np.asarray(meta["canonical_affine"], dtype=np.float64)


def render_original(bank: InrBank, index: int | str, chunk: int = 65536) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(image in original intensity units, label, affine)`` on the subject's original grid."""
    meta = bank.subjects[bank.ids.index(index) if isinstance(index, str) else index]["canonical"]
    image, label, _ = render_canonical(bank, index, chunk)
    image_o = from_canonical(denormalise_intensity(image, meta), meta, kind="image")
    label_o = from_canonical(label, meta, kind="label")
    return image_o.astype(np.float32), label_o.astype(np.uint8), np.asarray(meta["original_affine"], dtype=np.float64)


def render_spacing(bank: InrBank, index: int | str, spacing_mm, chunk: int = 65536) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(image in [-1, 1], label, affine)`` over the subject's canonical box at ``spacing_mm``."""
    meta = bank.subjects[bank.ids.index(index) if isinstance(index, str) else index]["canonical"]
    coords, shape, affine = coords_for_spacing(meta, spacing_mm)
    coords = coords.clone()
    coords[:, 2] *= bank_z_extent(bank) / physical_aspect(meta)
    image, label = render_volume(bank.params(index), coords, shape, bank.spec, chunk)
    return image, label, affine


def export_subjects(bank: InrBank, output_dir: str | Path, where: str = "canonical", spacing_mm=None,
                    ids: list[str] | None = None) -> list[dict]:
    """Write ``imagesTr/<id>.nii.gz`` + ``labelsTr/<id>.nii.gz`` for bank entries; returns datalist entries.

    Args:
        where: ``"canonical"``, ``"original"`` or ``"spacing"`` (then ``spacing_mm`` is required).
    """
    output_dir = Path(output_dir)
    entries = []
    for sid in ids or bank.ids:
        if where == "canonical":
            image, label, affine = render_canonical(bank, sid)
        elif where == "original":
            image, label, affine = render_original(bank, sid)
        elif where == "spacing":
            if spacing_mm is None:
                raise ValueError("where='spacing' needs spacing_mm")
            image, label, affine = render_spacing(bank, sid, spacing_mm)
        else:
            raise ValueError(f"where must be canonical, original or spacing, not {where!r}")
        img_path, lab_path = output_dir / "imagesTr" / f"{sid}.nii.gz", output_dir / "labelsTr" / f"{sid}.nii.gz"
        save_nifti(img_path, image, affine, dtype=np.float32)
        save_nifti(lab_path, label, affine, dtype=np.uint8)
        entries.append({"id": sid, "image": str(img_path), "label": str(lab_path), "rendered": where})
    return entries


def render_bank(bank_dir: str | Path, output_dir: str | Path, where: str = "canonical", spacing_mm=None,
                ids: list[str] | None = None) -> Path:
    """Bundle entry point (``inference.yaml``): render entries of a bank + write a datalist."""
    from lgesynth.data.datalist import write_datalist
    from lgesynth.inr.bank import load_bank

    bank = load_bank(bank_dir)
    entries = export_subjects(bank, output_dir, where, spacing_mm, ids)
    return write_datalist(Path(output_dir) / "datalist.json", entries, [])


def torch_threads(n: int) -> None:
    """Set torch's intra-op threads when ``n > 0`` (configs call it in ``initialize``)."""
    if int(n) > 0:
        torch.set_num_threads(int(n))
