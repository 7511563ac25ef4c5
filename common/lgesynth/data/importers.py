"""Importers: bring other datasets into lgesynth's layout and label convention.

Output of every importer (``out``):

- ``imagesTr/<id>.nii.gz``: the original image data, dtype and affine (NIfTI; data with a scaling
  slope/intercept in its header is stored scaled, as float);
- ``labelsTr/<id>.nii.gz``: uint8 label on the image's affine, 0 background, 1 healthy myocardium,
  2 scar;
- ``datalist.json``: MSD-style, a seeded train/test split stratified by scar / no scar; every entry
  carries ``"scar": bool`` and ``"source"`` (the original image path) plus the original label
  path(s).

Bad cases (unreadable or corrupt file, missing label, label on another grid, unknown label values,
NaN, implausible spacing, empty myocardium, scar outside the myocardium mask): by default the import
**stops**. It still reads every case first, so one :class:`~lgesynth.errors.DataError` lists every
bad case, each line starting with the offending source file; ``datalist.json`` is then not written
(it is the import's commit point; the images and labels already written for good cases stay).
A changed cohort is a changed experiment, so dropping cases must be a decision: with
``skip_bad=True`` the bad cases are left out, each with a warning naming the file, and listed under
``"skipped"`` in the datalist.
Every imported pair passes :func:`lgesynth.data.validate.check_pair`: the importers run the same
checks on the converted data.
"""

from __future__ import annotations

import glob
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from lgesynth.data.datalist import stratified_split, write_datalist
from lgesynth.data.labels import SCAR, compose_label
from lgesynth.data.validate import finite_problems, grid_problems, image_problems, label_problems, mask_problems, spacing_problems
from lgesynth.errors import DataError
from lgesynth.io import load_nifti, save_nifti

NIFTI_SUFFIXES = (".nii.gz", ".nii")
LABEL_NAMES = {"0": "background", "1": "healthy myocardium", "2": "scar"}

# EMIDEC contours: 0 background, 1 LV cavity, 2 healthy myocardium, 3 infarct, 4 no-reflow (MVO)
EMIDEC_LABELS = (0, 1, 2, 3, 4)
EMIDEC_MYOCARDIUM = (2, 3, 4)
EMIDEC_SCAR = (3, 4)


@dataclass
class _Case:
    """One case to import: its id and source files (``"image"`` plus the label file(s))."""

    id: str
    sources: dict[str, Path]
    problems: list[str] = field(default_factory=list)  # known before reading (e.g. a missing file)


class _CaseProblems(Exception):
    def __init__(self, problems: list[str]):
        self.problems = problems


def nifti_stem(path: str | Path) -> str:
    """File name without ``.nii.gz`` / ``.nii`` (``a/p001.nii.gz`` -> ``p001``)."""
    path = Path(path)
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _prefixed(path: Path, problems: list[str]) -> list[str]:
    return [f"{path}: {p}" for p in problems]


def _import_cases(cases: list[_Case], convert: Callable[[_Case], tuple[np.ndarray, np.ndarray, np.ndarray]],
                  out: str | Path, test_fraction: float, seed: int, skip_bad: bool, src: str | Path, **meta) -> Path:
    """Convert every case, write image/label pairs and the datalist; see the module docstring."""
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    out = Path(out)
    done: list[dict] = []
    bad: list[tuple[_Case, list[str]]] = []
    for case in cases:
        try:
            if case.problems:
                raise _CaseProblems(case.problems)
            image, affine, label = convert(case)
        except DataError as exc:
            bad.append((case, [str(exc)]))
            continue
        except _CaseProblems as exc:
            bad.append((case, exc.problems))
            continue
        image_path = save_nifti(out / "imagesTr" / f"{case.id}.nii.gz", image, affine, dtype=image.dtype)
        label_path = save_nifti(out / "labelsTr" / f"{case.id}.nii.gz", label, affine, dtype=np.uint8)
        entry = {"id": case.id, "image": str(image_path.resolve()), "label": str(label_path.resolve()),
                 "scar": bool(np.any(label == SCAR)), "source": str(case.sources["image"])}
        entry.update({f"source_{key}": str(path) for key, path in case.sources.items() if key != "image"})
        done.append(entry)

    if bad and not skip_bad:
        lines = "\n".join(f"  {p}" for _, problems in bad for p in problems)
        raise DataError(src, f"{len(bad)} of {len(cases)} cases have problems; datalist not written. Fix them, or "
                             f"pass skip_bad=True to import the other cases:\n{lines}")
    for case, problems in bad:
        warnings.warn(f"{'; '.join(problems)} (case {case.id} skipped)", stacklevel=3)
    if not done:
        raise DataError(src, "no case could be imported")

    ids = [e["id"] for e in done]
    train_ids, test_ids = stratified_split(ids, [e["scar"] for e in done], test_fraction, seed)
    by_id = {e["id"]: e for e in done}
    return write_datalist(
        out / "datalist.json", [by_id[i] for i in train_ids], [by_id[i] for i in test_ids],
        **meta, labels=LABEL_NAMES, modality={"0": "LGE MRI"}, numTraining=len(train_ids), numTest=len(test_ids),
        split={"test_fraction": test_fraction, "seed": seed, "stratified_by": "scar"},
        skipped=[{"id": case.id, "source": str(case.sources["image"]), "problems": problems} for case, problems in bad],
    )


# ---------------------------------------------------------------------------------------------
# EMIDEC
# ---------------------------------------------------------------------------------------------


def _nifti_in(folder: Path, stem: str) -> Path:
    """``folder/<stem>.nii.gz`` or ``.nii``, whichever exists (the ``.nii.gz`` name when neither does)."""
    for suffix in NIFTI_SUFFIXES:
        if (folder / f"{stem}{suffix}").exists():
            return folder / f"{stem}{suffix}"
    return folder / f"{stem}{NIFTI_SUFFIXES[0]}"


def _emidec_cases(src: Path) -> list[_Case]:
    if not src.is_dir():
        raise DataError(src, "not a folder; expected the EMIDEC training folder holding Case_X/Images/Case_X.nii.gz "
                             "and Case_X/Contours/Case_X.nii.gz")
    cases = []
    for case_dir in sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not (case_dir / "Images").is_dir() and not (case_dir / "Contours").is_dir():
            continue  # not a case folder
        image, contour = _nifti_in(case_dir / "Images", case_dir.name), _nifti_in(case_dir / "Contours", case_dir.name)
        problems = [f"{p}: file not found (each EMIDEC case needs Images/{case_dir.name}.nii.gz and "
                    f"Contours/{case_dir.name}.nii.gz)" for p in (image, contour) if not p.exists()]
        cases.append(_Case(case_dir.name, {"image": image, "label": contour}, problems))
    if not cases:
        raise DataError(src, "no EMIDEC cases found; expected Case_X/Images/Case_X.nii.gz and Case_X/Contours/Case_X.nii.gz")
    return cases


def _convert_emidec(case: _Case) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    image_path, contour_path = case.sources["image"], case.sources["label"]
    image, affine = load_nifti(image_path)
    contour, contour_affine = load_nifti(contour_path)
    problems = _prefixed(image_path, spacing_problems(image.shape, affine) + image_problems(image))
    own = grid_problems(contour.shape, contour_affine, image.shape, affine, f"its image {image_path}")
    own = own or finite_problems(contour, "contour")
    if not own:
        values = np.unique(contour)
        unknown = values[~np.isin(values, EMIDEC_LABELS)]
        if unknown.size:
            own.append(f"contour values {', '.join(str(v) for v in unknown)} are not EMIDEC labels "
                       "(0 background, 1 cavity, 2 myocardium, 3 infarct, 4 no-reflow)")
    if not own:
        label = compose_label(np.isin(contour, EMIDEC_MYOCARDIUM), np.isin(contour, EMIDEC_SCAR))
        own = label_problems(label, contour_affine)
    problems += _prefixed(contour_path, own)
    if problems:
        raise _CaseProblems(problems)
    return image, affine, label


def import_emidec(src: str | Path, out: str | Path, test_fraction: float = 0.2, seed: int = 0, skip_bad: bool = False) -> Path:
    """Import the EMIDEC training set (or a subset in its layout); returns ``out/datalist.json``.

    Layout: ``src/Case_X/Images/Case_X.nii.gz`` (image) and ``src/Case_X/Contours/Case_X.nii.gz``
    (0 background, 1 LV cavity, 2 myocardium, 3 infarct, 4 no-reflow). Mapped to lgesynth labels:
    myocardium {2, 3, 4} -> 1, scar (infarct incl. no-reflow) {3, 4} -> 2; the cavity becomes
    background. Ids are the case folder names. Folders without ``Images``/``Contours`` are ignored.

    EMIDEC is CC BY-NC-SA 4.0 (non-commercial, share-alike): the licence is recorded in the datalist;
    keep imported copies out of the repository.

    Args:
        src: the EMIDEC folder.
        out: output folder (``imagesTr``, ``labelsTr``, ``datalist.json``).
        test_fraction: fraction of cases in ``"test"``, per scar / no-scar stratum.
        seed: split seed.
        skip_bad: leave bad cases out with a warning instead of stopping (module docstring).
    Raises:
        DataError: ``src`` is not an EMIDEC folder, or (unless ``skip_bad``) some cases are bad; the
            message lists every problem, each line starting with the source file.
    """
    src = Path(src)
    return _import_cases(_emidec_cases(src), _convert_emidec, out, test_fraction, seed, skip_bad, src,
                         name="EMIDEC", description=f"EMIDEC LGE MRI imported from {src.resolve()}",
                         licence="CC BY-NC-SA 4.0",
                         reference="Lalande et al., Medical Image Analysis 79 (2022) 102428; emidec.com",
                         importer="lgesynth.data.importers.import_emidec")


# ---------------------------------------------------------------------------------------------
# generic: image + myocardium mask + scar mask
# ---------------------------------------------------------------------------------------------


def _collect(spec: str | Path, what: str) -> dict[str, Path]:
    """Files of a folder or glob pattern by id.

    A folder: every ``*.nii.gz``/``*.nii`` in it, id = file name without the suffix. A pattern: the
    files it matches; if its file-name part has exactly one ``*`` (and no other wildcard), the id is
    the text that ``*`` matched (``raw/*_myo.nii.gz`` gives ``p01`` for ``raw/p01_myo.nii.gz``),
    otherwise the file name without the suffix.
    """
    spec_path = Path(spec)
    if spec_path.is_dir():
        files = sorted(p for p in spec_path.iterdir() if p.name.endswith(NIFTI_SUFFIXES) and not p.name.startswith("."))
        ids = [nifti_stem(p) for p in files]
    else:
        files = sorted(Path(p) for p in glob.glob(str(spec)) if Path(p).is_file())
        name = spec_path.name
        if name.count("*") == 1 and not any(c in name for c in "?["):
            prefix, suffix = name.split("*")
            ids = [p.name[len(prefix): len(p.name) - len(suffix)] for p in files]
        else:
            ids = [nifti_stem(p) for p in files]
    if not files:
        raise DataError(spec, f"no {what} files found (give a folder of .nii/.nii.gz files or a glob pattern)")
    by_id: dict[str, Path] = {}
    for case_id, path in zip(ids, files):
        if case_id in by_id:
            raise DataError(path, f"same id {case_id!r} as {by_id[case_id]}; {what} files must have distinct ids")
        by_id[case_id] = path
    return by_id


def _masks_cases(images: str | Path, myocardium: str | Path, scar: str | Path | None) -> list[_Case]:
    found = {"image": _collect(images, "image"), "myocardium": _collect(myocardium, "myocardium mask")}
    specs = {"image": images, "myocardium": myocardium}
    if scar is not None:
        found["scar"], specs["scar"] = _collect(scar, "scar mask"), scar
    cases = []
    for case_id in sorted(set().union(*found.values())):
        sources = {key: files[case_id] for key, files in found.items() if case_id in files}
        anchor = sources.get("image") or next(iter(sources.values()))
        problems = [f"{anchor}: no {key} file with id {case_id!r} in {specs[key]}" for key in found if key not in sources]
        cases.append(_Case(case_id, sources if "image" in sources else {"image": anchor, **sources}, problems))
    return cases


def _masks_converter(clip_scar: bool) -> Callable[[_Case], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    def convert(case: _Case) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        image_path = case.sources["image"]
        image, affine = load_nifti(image_path)
        problems = _prefixed(image_path, spacing_problems(image.shape, affine) + image_problems(image))
        masks = {}
        for key in ("myocardium", "scar"):
            if key not in case.sources:
                continue
            mask, mask_affine = load_nifti(case.sources[key])
            own = grid_problems(mask.shape, mask_affine, image.shape, affine, f"its image {image_path}")
            own = own or finite_problems(mask, f"{key} mask")
            problems += _prefixed(case.sources[key], own)
            masks[key] = np.asarray(mask) != 0
        if problems:
            raise _CaseProblems(problems)
        myo = masks["myocardium"]
        scar = masks.get("scar", np.zeros_like(myo))
        outside = mask_problems(myo, scar)
        if outside and not clip_scar:
            raise _CaseProblems(_prefixed(case.sources["scar"], [outside[0] + " (clip_scar=True drops them)"]))
        if outside:
            warnings.warn(f"{case.sources['scar']}: {outside[0].split(';')[0]}; clipped to the myocardium (clip_scar=True)",
                          stacklevel=4)
        label = compose_label(myo, scar)  # scar outside the myocardium is dropped here
        own = label_problems(label, affine)
        if own:
            raise _CaseProblems(_prefixed(case.sources["myocardium"], own))
        return image, affine, label

    return convert


def import_masks(images: str | Path, myocardium: str | Path, scar: str | Path | None, out: str | Path,
                 test_fraction: float = 0.2, seed: int = 0, skip_bad: bool = False, clip_scar: bool = False) -> Path:
    """Import images with separate myocardium and scar masks; returns ``out/datalist.json``.

    Files are matched by id (see :func:`_collect`): a folder gives ids from file names without
    ``.nii.gz``/``.nii``; a glob pattern with one ``*`` in its file name gives the text ``*`` matched,
    so one folder can hold ``p01_lge.nii.gz``, ``p01_myo.nii.gz``, ``p01_scar.nii.gz``.
    Masks: nonzero = inside; the myocardium mask is the whole myocardium (it includes the scar).
    Both masks must be on the image's grid.

    Scar outside the myocardium mask is an error by default (it usually means swapped or misregistered
    masks); with ``clip_scar=True`` it is dropped with a warning that counts the voxels.

    Args:
        images, myocardium, scar: folders or glob patterns; ``scar=None`` for a cohort without scar.
        out, test_fraction, seed, skip_bad: as in :func:`import_emidec`.
        clip_scar: drop scar voxels outside the myocardium instead of reporting the case.
    Raises:
        DataError: a folder/pattern matches nothing, two files share an id, or (unless ``skip_bad``)
            some cases are bad (an id without its image or masks is a bad case); every problem starts
            with the offending file.
    """
    cases = _masks_cases(images, myocardium, scar)
    return _import_cases(cases, _masks_converter(clip_scar), out, test_fraction, seed, skip_bad, images,
                         name=Path(out).resolve().name,
                         description=f"imported from images {images}, myocardium {myocardium}, scar {scar}",
                         importer="lgesynth.data.importers.import_masks")
