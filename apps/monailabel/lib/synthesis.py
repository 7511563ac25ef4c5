"""The edm_synth generator as a MONAI Label scoring method: new synthetic image + label pairs in the datastore.

``POST /scoring/edm_synth`` with a JSON body such as ``{"num_samples": 20, "scar_burden": [0.1, 0.3]}``
runs the bundle's own ``configs/inference.yaml`` (the code path of ``python -m monai.bundle run``) into
a scratch folder, checks the kept pairs with ``lgesynth.data.validate`` (as ``lgesynth check-data``),
then adds each one to the datastore: the image as ``syn_s<seed>_<n>`` and its label under the tag
``final`` (a generated label is exact for its image by construction), both with
``{"synthetic": {...}}`` in their info. Samples the bundle rejects (no myocardium) are not added.

Why a scoring method: it is MONAI Label's task that is given the whole datastore and runs as a
background job (``AsyncTask``: a subprocess, status at ``GET /scoring/``, stop with
``DELETE /scoring/``), which is what generating a cohort needs. An infer task needs an input image,
blocks the request and would be offered by the clients as a segmentation model; a train task would
be offered as a model to train. The app keeps this method out of MONAI Label's automatic scoring runs
(server start, after training, after next-sample): it runs only when asked for by name.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.scoring import ScoringMethod

from lgesynth.io import read_json

logger = logging.getLogger(__name__)

# request keys passed on to edm_synth's inference.yaml (see its comments for their meaning)
BUNDLE_KEYS = ("num_samples", "seed", "num_steps", "guidance", "scar_burden", "pattern", "spacing_mm",
               "reject_implausible", "batch_size", "num_threads", "device")
ID_PREFIX = "syn_s"


def synthetic_seeds(datastore: Datastore) -> set[int]:
    """Seeds of the synthetic images already in the datastore (their info ``synthetic.seed``)."""
    seeds = set()
    for image_id in datastore.list_images():
        info = datastore.get_image_info(image_id).get("synthetic")
        if isinstance(info, dict) and "seed" in info:
            seeds.add(int(info["seed"]))
    return seeds


class SyntheticPairs(ScoringMethod):
    """edm_synth's ``inference.yaml`` into the datastore (see module doc).

    Args:
        bundle_dir: an edm_synth bundle folder: ``configs/`` and the trained generator in ``models/``
            (``generator.json`` + weights), as a training run or ``lgesynth pack`` leaves it.
        num_samples: samples per request unless the request says otherwise.
    """

    def __init__(self, bundle_dir: str | Path, num_samples: int = 8):
        self.bundle_dir = Path(bundle_dir).resolve()
        meta = read_json(self.bundle_dir / "configs" / "metadata.json")
        self.version = meta["version"]
        self.num_samples = int(num_samples)
        super().__init__(f"edm_synth {self.version}: adds num_samples synthetic LGE image + label pairs "
                         f"(tag '{DefaultLabelTag.FINAL.value}') to the datastore; request keys: {', '.join(BUNDLE_KEYS)}")

    def info(self) -> dict:
        return {**super().info(), "bundle": str(self.bundle_dir), "version": self.version,
                "config": {"num_samples": self.num_samples}}

    def __call__(self, request: dict, datastore: Datastore) -> dict:
        from monai.bundle import run

        from lgesynth.data.validate import validate_datalist

        overrides = {k: request[k] for k in BUNDLE_KEYS if request.get(k) is not None}
        overrides.setdefault("num_samples", self.num_samples)
        if "seed" not in overrides:  # a fresh seed: new samples, never the ones already added
            overrides["seed"] = max(synthetic_seeds(datastore), default=-1) + 1
        seed = int(overrides["seed"])
        configs = self.bundle_dir / "configs"
        with tempfile.TemporaryDirectory(prefix="edm_synth_") as scratch:
            run(config_file=str(configs / "inference.yaml"), meta_file=str(configs / "metadata.json"),
                logging_file=False, bundle_root=str(self.bundle_dir), output_dir=scratch, **overrides)
            cohort = Path(scratch) / "datalist.json"
            doc = read_json(cohort)
            entries = validate_datalist(cohort, "training") if doc["training"] else []
            existing = set(datastore.list_images())
            added, skipped = [], []
            for entry in entries:
                image_id = f"{ID_PREFIX}{seed}_{entry['id'].rsplit('_', 1)[-1]}"  # syn_0001 -> syn_s<seed>_0001
                if image_id in existing:  # the same seed again: same samples, keep the ones there (and their edits)
                    skipped.append(image_id)
                    continue
                info = {"synthetic": {"generator": "edm_synth", "version": self.version, "seed": seed,
                                      "sample": entry["id"], "scar_burden": entry.get("scar_burden")}}
                datastore.add_image(image_id, entry["image"], dict(info))
                datastore.save_label(image_id, entry["label"], DefaultLabelTag.FINAL.value, dict(info))
                added.append(image_id)
        result = {"seed": seed, "added": added, "skipped": skipped,
                  "rejected": {e["id"]: e["reason"] for e in doc.get("rejected", [])}}
        logger.info("edm_synth: %s", result)
        return result
