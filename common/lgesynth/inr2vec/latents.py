"""Latents file: what inr2vec hands to edm_synth.

Two files in one folder, written atomically (the JSON last: it commits the pair):

- ``latents.safetensors``: one tensor ``latents: (N, latent_dim)`` float32.
- ``latents.json``: ``format``, ``version``, ``latent_dim``, ``count``, ``encoder_sha256`` (checksum of
  the encoder state that made them; decoders check it), ``weights_sha256`` (of the safetensors file,
  so a torn pair is detected), free-form ``source`` (bank, checkpoint) and ``subjects``: per row
  ``id``, ``section``, ``has_scar``, ``scar_burden`` (scar voxels / myocardium voxels of the canonical
  label), ``pattern`` when the datalist gives one, ``canonical_spacing_mm`` ``[sx, sy, sz]`` (the
  subject's canonical voxel size: the crop normalises each heart's size, so its physical size lives
  here) and ``source_spacing_mm`` (its original voxel size in canonical axis order, the slice spacing
  last). Synthetic cohorts record per sample the ``canonical_spacing_mm`` it was generated with and the
  ``spacing_mm`` it was written at. Older files without the spacings still load.

``load_latents`` verifies the pair and refuses a mismatch with a ``DataError`` naming the file;
``subject_spacing`` reads a spacing field of every row, checked.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lgesynth.errors import DataError
from lgesynth.io import atomic_path, file_sha256, read_json, write_json

FORMAT = "lgesynth.latents"
VERSION = 1
LATENTS_WEIGHTS = "latents.safetensors"
LATENTS_JSON = "latents.json"


def state_sha256(module: torch.nn.Module) -> str:
    """Checksum of a module's state: tensor names, shapes and float32 bytes, in name order."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().to(torch.float32).contiguous().cpu()
        h.update(f"{name}:{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def scar_record(label: np.ndarray) -> dict:
    """``has_scar`` and ``scar_burden`` (scar / myocardium voxels, 0 without myocardium) of a label."""
    label = np.asarray(label)
    myo = int(np.isin(label, (1, 2)).sum())
    scar = int((label == 2).sum())
    return {"has_scar": scar > 0, "scar_burden": scar / myo if myo else 0.0}


@dataclass
class Latents:
    """In memory: ``latents (N, latent_dim)`` and one record per row (``subjects[i]["id"]`` ...)."""

    latents: torch.Tensor
    subjects: list[dict]
    encoder_sha256: str | None = None
    source: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.subjects)

    @property
    def ids(self) -> list[str]:
        return [s["id"] for s in self.subjects]

    def rows(self, section: str | None = None) -> list[int]:
        """Row indices of one datalist section (all rows for ``None``)."""
        return [i for i, s in enumerate(self.subjects) if section is None or s.get("section") == section]


def _dir(path: str | Path) -> Path:
    path = Path(path)
    return path.parent if path.name in (LATENTS_WEIGHTS, LATENTS_JSON) else path


def save_latents(directory: str | Path, latents: Latents) -> Path:
    """Write ``latents.safetensors`` then ``latents.json`` into ``directory``; returns the folder."""
    from safetensors.torch import save_file

    z = latents.latents.detach().to(torch.float32).contiguous().cpu()
    assert z.dim() == 2 and z.shape[0] == len(latents.subjects), (z.shape, len(latents.subjects))
    d = _dir(directory)
    d.mkdir(parents=True, exist_ok=True)
    with atomic_path(d / LATENTS_WEIGHTS) as tmp:
        save_file({"latents": z}, str(tmp), metadata={"format": FORMAT})
        sha = file_sha256(tmp)
    doc = {"format": FORMAT, "version": VERSION, "latent_dim": int(z.shape[1]), "count": int(z.shape[0]),
           "encoder_sha256": latents.encoder_sha256, "weights_sha256": sha, "source": latents.source,
           "subjects": latents.subjects}
    write_json(d / LATENTS_JSON, doc)
    return d


def load_latents(path: str | Path) -> Latents:
    """Read and verify a latents pair (the folder or either file).

    Raises:
        DataError: naming the file when it is missing, not a latents file, torn (checksum), or the
            tensor shape disagrees with the JSON.
    """
    from safetensors.torch import load_file

    d = _dir(path)
    jpath, wpath = d / LATENTS_JSON, d / LATENTS_WEIGHTS
    for p in (jpath, wpath):
        if not p.exists():
            raise DataError(p, "latents file not found (latents are latents.json + latents.safetensors in one folder; "
                            "write them with the inr2vec bundle's `encode`)")
    doc = read_json(jpath)
    if doc.get("format") != FORMAT:
        raise DataError(jpath, f"not a latents file (format {doc.get('format')!r}, expected {FORMAT!r})")
    if doc.get("weights_sha256") and file_sha256(wpath) != doc["weights_sha256"]:
        raise DataError(wpath, "does not match latents.json (checksum differs): the pair is torn or mixed; re-encode")
    z = load_file(str(wpath)).get("latents")
    want = (len(doc.get("subjects", [])), doc.get("latent_dim"))
    if z is None or tuple(z.shape) != want:
        raise DataError(wpath, f"tensor 'latents' has shape {None if z is None else tuple(z.shape)}, expected {want} "
                        "from latents.json")
    return Latents(z, doc["subjects"], doc.get("encoder_sha256"), doc.get("source", {}))


SPACING_KEYS = ("canonical_spacing_mm", "source_spacing_mm", "spacing_mm")


def subject_spacing(subjects: list[dict], key: str = "canonical_spacing_mm", where: str | Path | None = None) -> np.ndarray | None:
    """``(n, 3)`` float64 voxel sizes (mm) from the ``key`` field of every record; None when any record lacks it.

    Raises:
        DataError: naming ``where`` when a record has the field but not three positive finite numbers.
    """
    assert key in SPACING_KEYS, key
    if not subjects or any(key not in s for s in subjects):
        return None
    out = np.zeros((len(subjects), 3))
    for i, s in enumerate(subjects):
        try:
            v = np.asarray(s[key], dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            v = np.zeros(0)
        if v.size != 3 or not np.all(np.isfinite(v)) or not np.all(v > 0):
            raise DataError(where, f"subject {s.get('id', i)!r}: {key} must be three positive numbers (mm), got "
                            f"{s[key]!r}; re-encode with the inr2vec bundle's `encode`")
        out[i] = v
    return out
