"""MSD-style datalists: ``{"training": [...], "test": [...]}`` with paths relative to the file.

Each entry: ``{"id": "p001", "image": "imagesTr/p001.nii.gz", "label": "labelsTr/p001.nii.gz"}``
plus optional keys (``"synthetic": true``, ``"scar": true``, ``"pattern": "ischemic"``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lgesynth.errors import DataError
from lgesynth.io import read_json, write_json

SECTIONS = ("training", "validation", "test")


def load_datalist(path: str | Path, sections: tuple[str, ...] | str | None = None, absolute: bool = True) -> list[dict]:
    """Entries of a datalist, image/label paths made absolute (relative to the file's folder).

    Args:
        path: the datalist JSON.
        sections: which sections to return (default: all present, in ``SECTIONS`` order). Each entry
            gains a ``"section"`` key.
    Raises:
        DataError: naming the file if it is missing, not JSON, or has no entries.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(path, "datalist not found")
    doc = read_json(path)
    if not isinstance(doc, dict):
        raise DataError(path, 'expected an object like {"training": [...], "test": [...]}')
    if isinstance(sections, str):
        sections = (sections,)
    wanted = sections or tuple(s for s in SECTIONS if s in doc)
    entries = []
    for section in wanted:
        for i, item in enumerate(doc.get(section, [])):
            if not isinstance(item, dict) or "image" not in item:
                raise DataError(path, f'entry {i} of "{section}" has no "image" key')
            entry = dict(item)
            entry.setdefault("id", Path(str(item["image"])).name.split(".")[0])
            entry["section"] = section
            if absolute:
                for key in ("image", "label"):
                    if key in entry and entry[key] is not None:
                        entry[key] = str((path.parent / entry[key]).resolve())
            entries.append(entry)
    if not entries:
        raise DataError(path, f"no entries in sections {list(wanted)}")
    return entries


def write_datalist(path: str | Path, training: list[dict], test: list[dict] | None = None, **extra) -> Path:
    """Write a datalist atomically; absolute image/label paths are made relative to its folder."""
    path = Path(path)
    root = path.parent.resolve()

    def rel(entry: dict) -> dict:
        out = {k: v for k, v in entry.items() if k != "section"}
        for key in ("image", "label"):
            if key in out and out[key] is not None:
                p = Path(out[key])
                out[key] = str(p.resolve().relative_to(root)) if p.is_absolute() else str(p)
        return out

    doc = {"training": [rel(e) for e in training], "test": [rel(e) for e in (test or [])]}
    doc.update(extra)
    return write_json(path, doc)


def stratified_split(ids: list[str], has_scar: list[bool], test_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Seeded train/test split that keeps the scar / no-scar proportion in both parts.

    Returns ``(train_ids, test_ids)``, each in the input order.
    """
    rng = np.random.default_rng(seed)
    test = set()
    for flag in (True, False):
        group = [i for i, s in zip(ids, has_scar) if bool(s) == flag]
        n_test = int(round(len(group) * test_fraction))
        if len(group) > 1:
            n_test = min(max(n_test, 1 if test_fraction > 0 else 0), len(group) - 1)
        order = rng.permutation(len(group))
        test.update(group[j] for j in order[:n_test])
    return [i for i in ids if i not in test], [i for i in ids if i in test]
