"""The phantom cohort on disk: the embedded default data set of lgesynth (no downloads at run time).

Subject k of a cohort is drawn from ``np.random.default_rng([seed, k])`` with a scar pattern that
depends only on ``(seed, k)``, so subject k is identical whatever the cohort size, and the same
seed gives the same bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lgesynth.data.datalist import stratified_split, write_datalist
from lgesynth.data.phantom_params import PATTERN_PROBS
from lgesynth.data.phantom_subject import sample_subject
from lgesynth.io import save_nifti, write_json
from lgesynth.viz import mid_slice, save_montage

MONTAGE_MAX_SUBJECTS = 40


def subject_pattern(seed: int, index: int) -> str:
    """Scar pattern of cohort subject ``index``: a golden-ratio sequence through ``PATTERN_PROBS``, so
    that every run of consecutive subjects has the stated proportions (to within one subject) and
    subject k's pattern does not depend on the cohort size."""
    v = (0.5 + 0.6180339887498949 * index + 0.4142135623730951 * seed) % 1.0
    return list(PATTERN_PROBS)[int(np.searchsorted(np.cumsum(list(PATTERN_PROBS.values())), v, side="right"))]


def make_phantom_cohort(out_dir: str | Path, subjects: int = 20, seed: int = 0, test_fraction: float = 0.2) -> Path:
    """Write a phantom cohort and return the path of its ``datalist.json``.

    Writes ``out_dir/imagesTr/ph_0001.nii.gz`` (float32), ``out_dir/labelsTr/ph_0001.nii.gz``
    (uint8, 0/1/2), ``datalist.json`` (MSD-style; entries ``id, image, label, scar, pattern``; a
    scar-stratified train/test split seeded by ``seed``), ``phantom.json`` (every subject's drawn
    parameters) and ``montage.png`` (mid-ventricular slices of the first ``MONTAGE_MAX_SUBJECTS``).
    Subject ``k`` is drawn from ``np.random.default_rng([seed, k])``: same seed, same bytes.
    """
    if int(subjects) < 1 or int(seed) < 0 or not 0.0 <= float(test_fraction) < 1.0:
        raise ValueError(f"need subjects >= 1, seed >= 0 and 0 <= test_fraction < 1; "
                         f"got subjects={subjects}, seed={seed}, test_fraction={test_fraction}")
    out = Path(out_dir)
    entries, params, images, labels, titles = [], {}, [], [], []
    for k in range(int(subjects)):
        sid = f"ph_{k + 1:04d}"
        subject = sample_subject(np.random.default_rng([int(seed), k]), pattern=subject_pattern(int(seed), k))
        save_nifti(out / "imagesTr" / f"{sid}.nii.gz", subject.image, subject.affine, dtype=np.float32)
        save_nifti(out / "labelsTr" / f"{sid}.nii.gz", subject.label, subject.affine, dtype=np.uint8)
        has_scar = bool((subject.label == 2).any())
        pattern = subject.params["pattern"] if has_scar else "none"
        entries.append({"id": sid, "image": f"imagesTr/{sid}.nii.gz", "label": f"labelsTr/{sid}.nii.gz",
                        "scar": has_scar, "pattern": pattern})
        params[sid] = subject.params
        if k < MONTAGE_MAX_SUBJECTS:
            z = mid_slice(subject.label)
            images.append(subject.image[..., z])
            labels.append(subject.label[..., z])
            territory = subject.params.get("territory") or ""
            titles.append(f"{sid} {pattern} {territory} {100 * subject.params['scar_burden']:.0f}%".replace("  ", " "))
    ids, has_scar = [e["id"] for e in entries], [e["scar"] for e in entries]
    train_ids, test_ids = stratified_split(ids, has_scar, float(test_fraction), int(seed))
    by_id = {e["id"]: e for e in entries}
    write_json(out / "phantom.json", {"seed": int(seed), "subjects": int(subjects), "pattern_probs": PATTERN_PROBS,
                                      "params": params})
    save_montage(out / "montage.png", images, labels, titles=titles)
    return write_datalist(out / "datalist.json", [by_id[i] for i in train_ids], [by_id[i] for i in test_ids])
