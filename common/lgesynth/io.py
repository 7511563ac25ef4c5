"""Atomic file writing and NIfTI reading with clear errors.

Every output of lgesynth is written to a temporary file in the destination folder and renamed
into place, so an interrupted run never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from lgesynth.errors import DataError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``.

    The temporary name keeps the file's suffixes (``.nii.gz``, ``.png``) so that writers that
    choose a format by extension still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; outputs get the usual permissions
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: str | Path, obj) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")
    return Path(path)


def write_csv(path: str | Path, rows: list[dict], columns: list[str] | tuple[str, ...] | None = None,
              float_format: str | None = "{:.4f}") -> Path:
    """Write rows as CSV atomically; ``columns`` default to the first row's keys (extra keys dropped)."""
    import csv
    import io as _io

    buffer = _io.StringIO()
    if rows or columns:
        writer = csv.DictWriter(buffer, fieldnames=list(columns or rows[0]), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (float_format.format(v) if float_format and isinstance(v, float) else v) for k, v in row.items()})
    with atomic_path(path) as tmp:
        tmp.write_text(buffer.getvalue())
    return Path(path)


def read_json(path: str | Path):
    """Parse a JSON file; a file that is not valid JSON raises DataError naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(path, f"not valid JSON ({exc})") from None


def file_sha256(path: str | Path) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB blocks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def save_nifti(path: str | Path, array: np.ndarray, affine: np.ndarray, dtype=None) -> Path:
    """Save a 3D array as NIfTI (``.nii`` or ``.nii.gz``) atomically.

    Args:
        array: (x, y, z) voxel data.
        affine: (4, 4) voxel-to-world (RAS, mm) matrix.
        dtype: on-disk dtype (e.g. ``np.uint8`` for labels, ``np.float32`` for images).
    """
    import nibabel as nib

    data = np.asarray(array if dtype is None else np.asarray(array).astype(dtype))
    img = nib.Nifti1Image(data, np.asarray(affine, dtype=np.float64))
    img.header.set_xyzt_units("mm", "sec")
    if dtype is not None:
        img.set_data_dtype(dtype)
    with atomic_path(path) as tmp:
        # nibabel writes gzip with the current time in its header; zero it so same input, same bytes.
        # Level 1 (nibabel's own default): ~10x faster than 9 on LGE stacks, files ~6 % larger.
        if str(path).endswith(".gz"):
            import gzip
            import io as _io

            raw = _io.BytesIO()
            file_map = nib.Nifti1Image.make_file_map({"image": raw, "header": raw})
            img.to_file_map(file_map)
            with open(tmp, "wb") as fh, gzip.GzipFile(fileobj=fh, mode="wb", compresslevel=1, mtime=0, filename="") as gz:
                gz.write(raw.getvalue())
        else:
            nib.save(img, str(tmp))
    return Path(path)


def load_nifti(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Load a 3D volume; returns ``(array (x, y, z), affine (4, 4))``.

    Raises:
        DataError: naming ``path`` when it is missing, unreadable or corrupt, not 3D, or non-finite
            in its affine.
    """
    import nibabel as nib

    path = Path(path)
    if not path.exists():
        raise DataError(path, "file not found")
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise DataError(path, f"cannot read as NIfTI ({type(exc).__name__}: {exc}); is the file corrupt or truncated?") from None
    data = np.squeeze(data) if data.ndim > 3 else data
    if data.ndim != 3:
        raise DataError(path, f"expected a 3D volume, got shape {tuple(data.shape)}")
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)):
        raise DataError(path, "affine contains NaN/inf; fix the NIfTI header (qform/sform)")
    return data, affine


def spacing_from_affine(affine: np.ndarray) -> np.ndarray:
    """Voxel spacing in mm, (3,), from a (4, 4) affine."""
    return np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
