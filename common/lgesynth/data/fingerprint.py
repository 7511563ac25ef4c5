"""Dataset fingerprint (after nnU-Net's): what a cohort looks like, per case and summarised.

Per case: spacing and shape (array axes as stored), slices containing myocardium, the myocardium's
bounding-box extent (mm per axis, what the scar_seg cascade's ROI is planned from), myocardial,
scar and blood-pool volume (ml), scar burden (scar / myocardium voxels), intensity percentiles
(5/50/95) of the blood pool, remote myocardium and scar, and the contrast ratios scar/remote and
blood/remote (ratios of the regions' medians).

Definitions:

- **Intensity normalisation**: each volume is mapped by ``(x - p1) / (p99 - p1)`` with its own 1st
  and 99th percentiles over non-zero voxels (``NORMALISATION_PERCENTILES``), so the numbers compare
  across scanners and scalings. Subtracting the low percentile matters: 8-bit re-distributions
  (like the EMIDEC copy used for development) carry an offset (air at ~40 % of p99) that would
  squash every contrast ratio towards 1; the canonical grid's robust scaling does the same.
- **Blood pool**: our labels have no cavity, so it is derived per slice: the myocardium with its
  holes filled (``scipy.ndimage.binary_fill_holes``) minus the myocardium = the LV cavity. Slices
  whose ring is open (e.g. at the base) contribute nothing.
- **Remote myocardium**: healthy myocardium (label 1) further than ``BORDER_ZONE_MM`` in plane
  from any scar (the peri-infarct border zone is excluded); all healthy myocardium if that leaves
  nothing.

Summary (``fp["summary"]``): ``median_spacing_mm`` (3,) and ``median_shape`` (3,) for planners, and
for every quantity ``{"n", "median", "p5", "p25", "p75", "p95", "min", "max"}`` over the cases where
it is defined (scar intensities and scar burden over the cases with scar only).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from lgesynth.data.datalist import load_datalist
from lgesynth.data.labels import MYOCARDIUM, SCAR
from lgesynth.data.validate import slice_axis
from lgesynth.errors import DataError
from lgesynth.io import load_nifti, spacing_from_affine, write_json

NORMALISATION_PERCENTILES = (1.0, 99.0)
INTENSITY_PERCENTILES = (5, 50, 95)
BORDER_ZONE_MM = 3.0
REGIONS = ("blood_pool", "remote", "scar")
STATS = ("median", "p5", "p25", "p75", "p95", "min", "max")


# ---------------------------------------------------------------------------------------------
# regions
# ---------------------------------------------------------------------------------------------


def blood_pool_mask(myocardium: np.ndarray, axis: int) -> np.ndarray:
    """LV cavity: per slice along ``axis``, filled myocardium minus myocardium. Bool, same shape."""
    myocardium = np.asarray(myocardium, dtype=bool)
    filled = np.zeros_like(myocardium)
    for k in range(myocardium.shape[axis]):
        index = (slice(None),) * axis + (k,)
        if myocardium[index].any():
            filled[index] = ndimage.binary_fill_holes(myocardium[index])
    return filled & ~myocardium


def remote_mask(label: np.ndarray, spacing_mm: np.ndarray, axis: int) -> np.ndarray:
    """Healthy myocardium further than ``BORDER_ZONE_MM`` in plane from scar. Bool, same shape."""
    healthy, scar = label == MYOCARDIUM, label == SCAR
    if not scar.any():
        return healthy
    in_plane = [float(spacing_mm[a]) for a in range(3) if a != axis]
    steps = max(1, int(round(BORDER_ZONE_MM / float(np.mean(in_plane)))))
    structure = ndimage.generate_binary_structure(3, 1)
    structure[(slice(None),) * axis + (0,)] = False  # no growth across slices
    structure[(slice(None),) * axis + (2,)] = False
    remote = healthy & ~ndimage.binary_dilation(scar, structure, iterations=steps)
    return remote if remote.any() else healthy


def _bbox(mask: np.ndarray, margin: int = 1) -> tuple[slice, ...]:
    """Bounding box of a non-empty mask, grown by ``margin`` voxels, clipped to the array."""
    box = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(max(int(hit[0]) - margin, 0), min(int(hit[-1]) + 1 + margin, mask.shape[axis])))
    return tuple(box)


def _percentiles(values: np.ndarray) -> dict | None:
    if values.size == 0:
        return None
    return {f"p{p}": float(v) for p, v in zip(INTENSITY_PERCENTILES, np.percentile(values, INTENSITY_PERCENTILES))}


# ---------------------------------------------------------------------------------------------
# per case and cohort
# ---------------------------------------------------------------------------------------------


def case_fingerprint(image: np.ndarray, label: np.ndarray, affine: np.ndarray) -> dict:
    """Fingerprint of one case (keys in the module docstring).

    Args:
        image: (x, y, z) intensities.
        label: (x, y, z) in {0, 1, 2}, on the image's grid.
        affine: (4, 4) voxel-to-world, mm.
    """
    spacing = spacing_from_affine(affine)
    axis = slice_axis(label.shape, spacing)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    myocardium = (label == MYOCARDIUM) | (label == SCAR)
    n_myo, n_scar = int(myocardium.sum()), int((label == SCAR).sum())
    fp = {
        "spacing_mm": [float(s) for s in spacing],
        "shape": [int(n) for n in label.shape],
        "slice_axis": axis,
        "slices_with_myocardium": int(myocardium.any(axis=tuple(a for a in range(3) if a != axis)).sum()),
        "myocardium_extent_mm": None,
        "myocardium_ml": n_myo * voxel_ml,
        "scar_ml": n_scar * voxel_ml,
        "scar_burden": n_scar / n_myo if n_myo else None,
        "has_scar": n_scar > 0,
        "blood_pool_ml": 0.0,
        "normaliser": None,
        "intensity": {region: None for region in REGIONS},
        "contrast": {"scar_remote": None, "blood_remote": None},
    }
    if not n_myo:
        return fp
    fp["myocardium_extent_mm"] = [float((b.stop - b.start) * s) for b, s in zip(_bbox(myocardium, margin=0), spacing)]
    values = image[image != 0] if np.any(image != 0) else image.ravel()
    low, high = (float(v) for v in np.percentile(values, NORMALISATION_PERCENTILES))
    normaliser = high - low
    fp["normaliser"] = [low, high]
    if not normaliser > 0:
        return fp  # a constant image: no meaningful intensities
    box = _bbox(myocardium)
    label, image = label[box], image[box]
    regions = {"blood_pool": blood_pool_mask(myocardium[box], axis), "remote": remote_mask(label, spacing, axis),
               "scar": label == SCAR}
    fp["blood_pool_ml"] = int(regions["blood_pool"].sum()) * voxel_ml
    for region, mask in regions.items():
        fp["intensity"][region] = _percentiles((image[mask].astype(np.float64) - low) / normaliser)
    median = {r: (v or {}).get("p50") for r, v in fp["intensity"].items()}
    if median["remote"]:
        for key, region in (("scar_remote", "scar"), ("blood_remote", "blood_pool")):
            fp["contrast"][key] = None if median[region] is None else median[region] / median["remote"]
    return fp


def _stats(values: list) -> dict:
    values = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if not values.size:
        return {"n": 0, **{k: None for k in STATS}}
    q = np.percentile(values, [50, 5, 25, 75, 95])
    return {"n": int(values.size), **dict(zip(STATS, [float(v) for v in q] + [float(values.min()), float(values.max())]))}


def _axis_stats(vectors: list[list[float]]) -> dict:
    per_axis = [_stats([v[a] for v in vectors]) for a in range(3)]
    return {k: [s[k] for s in per_axis] for k in ("n", *STATS)}


def summarise(cases: list[dict]) -> dict:
    """Cohort summary of per-case fingerprints (see the module docstring)."""
    spacing, shape = _axis_stats([c["spacing_mm"] for c in cases]), _axis_stats([c["shape"] for c in cases])
    scar_cases = [c for c in cases if c["has_scar"]]
    sections: dict[str, int] = {}
    for c in cases:
        sections[c.get("section", "all")] = sections.get(c.get("section", "all"), 0) + 1
    return {
        "num_cases": len(cases),
        "num_with_scar": len(scar_cases),
        "sections": sections,
        "median_spacing_mm": spacing["median"],
        "median_shape": [int(round(n)) for n in shape["median"]],
        "spacing_mm": spacing,
        "shape": shape,
        "slices_with_myocardium": _stats([c["slices_with_myocardium"] for c in cases]),
        "myocardium_extent_mm": _axis_stats([c["myocardium_extent_mm"] for c in cases if c.get("myocardium_extent_mm")]),
        "myocardium_ml": _stats([c["myocardium_ml"] for c in cases]),
        "blood_pool_ml": _stats([c["blood_pool_ml"] for c in cases]),
        "scar_ml": _stats([c["scar_ml"] for c in scar_cases]),
        "scar_burden": _stats([c["scar_burden"] for c in scar_cases]),
        "intensity": {region: {f"p{p}": _stats([(c["intensity"][region] or {}).get(f"p{p}") for c in cases])
                               for p in INTENSITY_PERCENTILES} for region in REGIONS},
        "contrast": {key: _stats([c["contrast"][key] for c in cases]) for key in ("scar_remote", "blood_remote")},
    }


def fingerprint(datalist: str | Path, sections: tuple[str, ...] | str | None = None) -> dict:
    """Fingerprint of every case of a datalist: ``{"cases": [...], "summary": {...}, ...}``.

    Args:
        datalist: MSD-style datalist JSON (entries need ``"label"``).
        sections: which sections (default: all present).
    Raises:
        DataError: naming the file, for a missing/unreadable file or a label on another grid
            (validate first with :func:`lgesynth.data.validate.validate_datalist` to see everything).
    """
    cases = []
    for entry in load_datalist(datalist, sections):
        if entry.get("label") is None:
            raise DataError(datalist, f'entry "{entry["id"]}" has no "label"; the fingerprint needs labels')
        image, affine = load_nifti(entry["image"])
        label, _ = load_nifti(entry["label"])
        if label.shape != image.shape:
            raise DataError(entry["label"], f"shape {label.shape} differs from its image {entry['image']} {image.shape}")
        case = {"id": entry["id"], "section": entry["section"], "image": entry["image"], "label": entry["label"]}
        case.update(case_fingerprint(image, np.asarray(label), affine))
        cases.append(case)
    return {
        "datalist": str(Path(datalist).resolve()),
        "sections": sorted({c["section"] for c in cases}),
        "intensity_normalisation": "each volume mapped by (x - p%g) / (p%g - p%g), percentiles over non-zero voxels" % (NORMALISATION_PERCENTILES[0], NORMALISATION_PERCENTILES[1], NORMALISATION_PERCENTILES[0]),
        "regions": {"blood_pool": "per slice: myocardium with holes filled minus myocardium (LV cavity)",
                    "remote": f"healthy myocardium (1) further than {BORDER_ZONE_MM:g} mm in plane from scar",
                    "scar": "label 2"},
        "summary": summarise(cases),
        "cases": cases,
    }


def write_fingerprint(path: str | Path, fp: dict) -> Path:
    """Write a fingerprint as JSON, atomically."""
    return write_json(path, fp)


# ---------------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------------


def _scaled(stats: dict, factor: float) -> dict:
    return {k: v * factor if k != "n" and v is not None else v for k, v in stats.items()}


def _rows(summary: dict) -> list[tuple[str, dict, str]]:
    """(quantity, stats, number format) in table order."""
    rows = [(f"spacing axis {a} (mm)", {k: v[a] for k, v in summary["spacing_mm"].items()}, "{:.2f}") for a in range(3)]
    rows += [(f"shape axis {a} (voxels)", {k: v[a] for k, v in summary["shape"].items()}, "{:.0f}") for a in range(3)]
    rows += [("slices with myocardium", summary["slices_with_myocardium"], "{:.0f}"),
             ("myocardium (ml)", summary["myocardium_ml"], "{:.1f}"),
             ("blood pool (ml)", summary["blood_pool_ml"], "{:.1f}"),
             ("scar (ml), scar cases", summary["scar_ml"], "{:.1f}"),
             ("scar burden (%), scar cases", _scaled(summary["scar_burden"], 100.0), "{:.1f}")]
    names = {"blood_pool": "blood pool", "remote": "remote myocardium", "scar": "scar"}
    for region in REGIONS:
        rows += [(f"{names[region]} intensity p{p}", summary["intensity"][region][f"p{p}"], "{:.3f}")
                 for p in INTENSITY_PERCENTILES]
    rows += [("contrast scar / remote", summary["contrast"]["scar_remote"], "{:.2f}"),
             ("contrast blood / remote", summary["contrast"]["blood_remote"], "{:.2f}")]
    return rows


def _fmt(fmt: str, value) -> str:
    return "-" if value is None else fmt.format(value)


def _header(fp: dict) -> str:
    s = fp["summary"]
    sections = ", ".join(f"{k} {v}" for k, v in s["sections"].items())
    return f"{s['num_cases']} cases ({sections}), {s['num_with_scar']} with scar"


def fingerprint_table(fp: dict) -> str:
    """The summary as a fixed-width text table: median, IQR, 5-95 % range and n per quantity."""
    lines = [f"Dataset fingerprint: {fp['datalist']}", f"  {_header(fp)}",
             f"  intensities: {fp['intensity_normalisation']}",
             f"{'quantity':<32}{'median':>9}{'p25-p75':>17}{'p5-p95':>17}{'n':>5}"]
    for name, stats, fmt in _rows(fp["summary"]):
        iqr = f"{_fmt(fmt, stats['p25'])}-{_fmt(fmt, stats['p75'])}"
        span = f"{_fmt(fmt, stats['p5'])}-{_fmt(fmt, stats['p95'])}"
        lines.append(f"{name:<32}{_fmt(fmt, stats['median']):>9}{iqr:>17}{span:>17}{stats['n']:>5}")
    return "\n".join(lines)


def print_fingerprint(fp: dict) -> None:
    """Print :func:`fingerprint_table`."""
    print(fingerprint_table(fp))


def compare_table(fp_a: dict, fp_b: dict, names: tuple[str, str] = ("A", "B")) -> str:
    """Two cohorts side by side: per quantity, each cohort's ``median [p25-p75]``. Returns the text."""
    width = 28
    cases = [f"{fp['summary']['num_cases']} ({fp['summary']['num_with_scar']} with scar)" for fp in (fp_a, fp_b)]
    lines = [f"{'quantity':<32}{names[0]:>{width}}{names[1]:>{width}}",
             f"{'cases':<32}{cases[0]:>{width}}{cases[1]:>{width}}"]
    for (name, a, fmt), (_, b, _) in zip(_rows(fp_a["summary"]), _rows(fp_b["summary"])):
        cells = [f"{_fmt(fmt, s['median'])} [{_fmt(fmt, s['p25'])}-{_fmt(fmt, s['p75'])}]" for s in (a, b)]
        lines.append(f"{name:<32}{cells[0]:>{width}}{cells[1]:>{width}}")
    return "\n".join(lines)
