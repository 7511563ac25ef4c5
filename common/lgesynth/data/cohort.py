"""A datalist brought onto the canonical grid, as the tensors that INR fitting and inr2vec use.

``load_canonical_cohort(datalist, grid)`` validates the datalist (bad input fails here, naming the
file), converts every case with ``to_canonical`` and keeps the per-case ``meta`` needed to map
results back to the original space.

Coordinates are shared by every subject of a cohort: the canonical voxel centres with x, y in
(-1, 1) and z in (-z_extent, z_extent), where ``z_extent`` is one number per cohort/bank (by
default the median physical aspect of its cases, rounded to 0.01). A per-subject aspect would
give every INR its own coordinate frame, and inr2vec's decoder (and every synthetic subject)
would then need the aspect as an extra input; the per-subject physical box stays in ``meta``
(the canonical affine), which is what maps a rendered volume back to millimetres.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lgesynth.data.canonical import CanonicalGrid
from lgesynth.data.canonical_case import CanonicalCase, to_canonical
from lgesynth.data.canonical_coords import canonical_coords, physical_aspect
from lgesynth.data.datalist import load_datalist
from lgesynth.data.labels import SCAR, myocardium_mask


@dataclass
class CanonicalCohort:
    """Cases of a datalist on the canonical grid.

    Attributes:
        entries: datalist entries (absolute paths, ``section`` key), one per case.
        cases: ``CanonicalCase`` per entry (image (X, Y, Z) in [-1, 1], label, meta).
        grid: the canonical grid.
        z_extent: half-range of the z coordinate shared by all subjects.
    """

    entries: list[dict]
    cases: list[CanonicalCase]
    grid: CanonicalGrid
    z_extent: float

    @property
    def ids(self) -> list[str]:
        return [e["id"] for e in self.entries]

    def __len__(self) -> int:
        return len(self.cases)

    def coords(self) -> torch.Tensor:
        """(X*Y*Z, 3) float32 voxel-centre coordinates, C order (reshape to (X, Y, Z, 3))."""
        return canonical_coords(self.grid.shape, self.z_extent)

    def targets(self, indices: list[int] | None = None) -> torch.Tensor:
        """(subjects, X*Y*Z, 3) float32: intensity in [-1, 1], myocardium {0, 1}, scar {0, 1}."""
        indices = range(len(self.cases)) if indices is None else indices
        return torch.stack([case_targets(self.cases[i]) for i in indices])

    def has_scar(self) -> list[bool]:
        return [bool((c.label == SCAR).any()) for c in self.cases]


def case_targets(case: CanonicalCase) -> torch.Tensor:
    """(X*Y*Z, 3) float32 fitting targets of one case, C-order flattened like ``canonical_coords``."""
    image = np.asarray(case.image, dtype=np.float32).reshape(-1)
    label = np.asarray(case.label).reshape(-1)
    target = np.stack([image, myocardium_mask(label), label == SCAR], axis=-1).astype(np.float32)
    return torch.from_numpy(target)


def cohort_z_extent(cases: list[CanonicalCase]) -> float:
    """Median physical aspect (z extent / in-plane extent of the canonical box), rounded to 0.01."""
    return float(np.round(np.median([physical_aspect(c.meta) for c in cases]), 2))


def load_canonical_cohort(datalist: str | Path, grid: CanonicalGrid | dict | None = None,
                          sections: tuple[str, ...] | str | None = None, ids: list[str] | None = None,
                          z_extent: float | None = None, validate: bool = True, progress: bool = False) -> CanonicalCohort:
    """Load (a subset of) a datalist onto the canonical grid.

    Args:
        datalist: MSD-style datalist JSON.
        grid: ``CanonicalGrid`` or its dict (default 96 x 96 x 12).
        sections: datalist sections (default: all).
        ids: keep only these ids (in datalist order).
        z_extent: shared z half-range; default ``cohort_z_extent`` of the loaded cases.
        validate: run ``validate_datalist`` first (raises one DataError listing every bad file).
    """
    grid = grid if isinstance(grid, CanonicalGrid) else CanonicalGrid.from_dict(grid)
    if validate:
        from lgesynth.data.validate import validate_datalist

        validate_datalist(datalist, sections=sections)
    entries = load_datalist(datalist, sections=sections)
    if ids is not None:
        wanted = set(ids)
        entries = [e for e in entries if e["id"] in wanted]
    iterator = entries
    if progress:
        from tqdm import tqdm

        iterator = tqdm(entries, desc="canonical grid", unit="case", leave=False)
    cases = [to_canonical(e["image"], e["label"], grid) for e in iterator]
    extent = cohort_z_extent(cases) if z_extent is None else float(z_extent)
    return CanonicalCohort(entries=entries, cases=cases, grid=grid, z_extent=extent)
