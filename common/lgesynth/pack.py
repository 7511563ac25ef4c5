"""``lgesynth pack``: a bundle folder -> a MONAI model-zoo zip ``<name>_v<version>.zip``.

A bundle folder is any folder with ``configs/`` (``docs/``) and the trained ``models/``: the main job's
``OUT/edm_synth`` is one (``lgesynth pipeline`` copies the bundle's configs and docs beside the generator
it trains, :func:`lgesynth.bundles.make_bundle_folder`), so ``lgesynth pack OUT/edm_synth`` zips what the
run trained, as it is; so is a repository bundle trained in place (``bundles/scar_seg`` trained with
``--models_dir bundles/scar_seg/models``).

As the zoo's release zips, the archive has one top folder, the bundle name (the folder's name; the
``name`` of ``metadata.json`` is a display name), holding:

    configs/          every config, metadata.json, logging.conf
    docs/             the bundle's README and any other docs
    LICENSE           when the bundle has one
    models/           only what the bundle runs on (:func:`model_files`): no checkpoints, runs or caches
    large_files.yml   when a model file exceeds ``large_mb``: the zoo keeps files over 25 MB out of git
                      and lists them as ``path``, ``url``, ``hash_val``, ``hash_type``

A planned network (scar_seg: ``models/plan.json`` beside ``models/model.pt``) is 2D or 3D with the patch
its training data gave it, so the zip's ``configs/metadata.json`` records that patch as the
``spatial_shape`` of the network's ``image`` input and ``pred`` output (:func:`shipped_metadata`):
``python -m monai.bundle verify_net_in_out`` and ``ckpt_export --use_trace True`` then check and trace
the network that is shipped, not the example patch of the repository's metadata.

``python -m monai.bundle download --name <name> --url <where the zip is served> --bundle_dir D`` unpacks
it into ``D/<name>``, and ``python -m monai.bundle run --config_file D/<name>/configs/inference.yaml``
runs it from there.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

from lgesynth.errors import DataError
from lgesynth.io import atomic_path, file_sha256, read_json

LOCALIZER_WEIGHTS, LOCALIZER_PLAN = "localizer.pt", "localizer_plan.json"  # a cascade's stage 1, beside its ROI network
PLAN_JSON = "plan.json"  # a planned network's topology (lgesynth.seg.plan), shipped beside its model.pt
LARGE_FILE_MB = 25.0  # the model zoo asks for Git LFS / large_files.yml above this size
ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed entry times: the same bundle packs to the same bytes


def bundle_version(bundle_dir: str | Path) -> str:
    """``version`` of ``configs/metadata.json``, which must also have a ``changelog`` entry for it."""
    meta = Path(bundle_dir) / "configs" / "metadata.json"
    if not meta.is_file():
        raise DataError(meta, "not found: a bundle needs configs/metadata.json (MONAI schema, with version and changelog)")
    doc = read_json(meta)
    version = doc.get("version")
    if not version:
        raise DataError(meta, "has no \"version\": add one (e.g. \"0.1.0\") and a changelog entry for it")
    if str(version) not in (doc.get("changelog") or {}):
        raise DataError(meta, f"\"changelog\" has no entry for version {version}: say what changed in this version "
                        "before packing it")
    return str(version)


def model_files(bundle_dir: str | Path) -> list[Path]:
    """The files under ``models/`` that the bundle needs to run; ``DataError`` naming what is missing.

    A generator bundle (edm_synth, ``models/generator.json``): the record, the weights it lists and
    the training-cohort statistics that the quality report compares with (the decoded training cohort,
    and the source cohort's own volumes when the export could read them). A planned network
    (scar_seg, ``models/plan.json``): ``model.pt`` and the plan that builds it, and for the ROI stage of a
    cascade (the plan's ``"cascade"``) its localizer, ``localizer.pt`` + ``localizer_plan.json``. Any other bundle:
    MONAI's ``models/model.pt``. Each with ``models/model.ts`` when exported to TorchScript.
    """
    from lgesynth.seg.cascade_plan import plan_stage
    from lgesynth.synth.generate import GENERATOR_JSON, load_generator_record

    root = Path(bundle_dir)
    models = root / "models"
    if (models / GENERATOR_JSON).is_file() or root.name == "edm_synth":
        record = load_generator_record(models)  # names generator.json or the missing weights
        files = [GENERATOR_JSON, *record["files"].values(), "reference.json", "reference.safetensors"]
        for name in files[-2:]:
            if not (models / name).is_file():
                raise DataError(models / name, "missing: the edm_synth train run writes it beside generator.json; "
                                "copy the whole models folder of a finished run")
        if "count" in record.get("source", {}):  # the source cohort's stats, when the export could read its files
            for name in ("source.json", "source.safetensors"):
                if not (models / name).is_file():
                    raise DataError(models / name, "missing: generator.json lists the source-cohort stats; copy the "
                                    "whole models folder of a finished run")
                files.append(name)
    else:
        planned = (models / PLAN_JSON).is_file() or root.name == "scar_seg"
        files = ["model.pt", PLAN_JSON] if planned else ["model.pt"]
        if (models / PLAN_JSON).is_file() and plan_stage(read_json(models / PLAN_JSON)) == "roi":
            files += [LOCALIZER_WEIGHTS, LOCALIZER_PLAN]  # the cascade's stage 1 (lgesynth.seg.cascade)
        for name in files:
            if not (models / name).is_file():
                raise DataError(models / name, "not found: train the bundle with --models_dir "
                                f"{models} (the end of training writes {' and '.join(files)}), or copy a "
                                "trained run's models/ there, before packing it")
    files += ["model.ts"] if (models / "model.ts").is_file() else []
    return [models / name for name in dict.fromkeys(files)]


def shipped_metadata(meta_path: Path, plan_path: Path) -> bytes:
    """``metadata.json`` with the ``spatial_shape`` of ``network_data_format`` ``inputs.image`` and
    ``outputs.pred`` set to the patch of the plan in ``plan_path`` (slice-last frame, as the network sees it),
    and ``outputs.pred`` given a fourth channel when the plan trains the LV cavity class."""
    from lgesynth.seg.cavity import has_cavity_class, training_classes
    from lgesynth.seg.data import slice_last_plan
    from lgesynth.seg.plan import load_plan

    doc = read_json(meta_path)
    plan = slice_last_plan(load_plan(plan_path))
    patch = list(plan["patch_size"])
    fmt = doc.get("network_data_format", {})
    for side, key in (("inputs", "image"), ("outputs", "pred")):
        if key not in fmt.get(side, {}):
            raise DataError(meta_path, f"network_data_format has no {side}.{key}: a planned network takes "
                            "one image and predicts pred (add them, as in bundles/scar_seg)")
        fmt[side][key]["spatial_shape"] = patch
    fmt["inputs"]["image"]["layout"] = f"spatial_shape: the patch of models/{PLAN_JSON}, which built this network"
    if has_cavity_class(plan):  # the network's fourth output
        pred = fmt["outputs"]["pred"]
        pred["num_channels"] = training_classes(plan)
        pred["channel_def"] = {**pred.get("channel_def", {}), "3": "LV cavity (trained on; the bundle's inferer folds it "
                               "into background, so post-processed outputs keep 0/1/2)"}
    return (json.dumps(doc, indent=4, ensure_ascii=False) + "\n").encode()


def large_files_yml(files: list[tuple[Path, str]], large_mb: float, url_base: str = "") -> str | None:
    """``large_files.yml`` text for the ``(path, archive name)`` pairs over ``large_mb``; None when none is.

    ``url`` is ``url_base`` + the archive name (empty without ``url_base``: fill it in where you host the file).
    """
    big = [(path, arc) for path, arc in files if path.stat().st_size > large_mb * 1e6]
    if not big:
        return None
    lines = ["large_files:"]
    for path, arc in big:
        url = f"{url_base.rstrip('/')}/{arc}" if url_base else ""
        lines += [f"  - path: \"{arc}\"", f"    url: \"{url}\"", f"    hash_val: \"{file_sha256(path)}\"",
                  "    hash_type: \"sha256\""]
    return "\n".join(lines) + "\n"


def pack_bundle(bundle_dir: str | Path, out: str | Path = ".", large_mb: float = LARGE_FILE_MB, url_base: str = "") -> Path:
    """Write ``out/<name>_v<version>.zip`` (see module doc) atomically; returns its path."""
    root = Path(bundle_dir).resolve()
    if not (root / "configs").is_dir():
        raise DataError(root, "not a bundle folder: it has no configs/ (give the folder above configs/)")
    name, version = root.name, bundle_version(root)
    files = [p for sub in ("configs", "docs") for p in sorted((root / sub).rglob("*"))
             if p.is_file() and "__pycache__" not in p.parts and not p.name.startswith(".")]
    files += [root / "LICENSE"] if (root / "LICENSE").is_file() else []
    files += model_files(root)
    entries = [(p, p.relative_to(root).as_posix()) for p in files]
    large = large_files_yml([e for e in entries if e[1].startswith("models/")], large_mb, url_base)
    plan = root / "models" / PLAN_JSON
    rewritten = {"configs/metadata.json": shipped_metadata(root / "configs" / "metadata.json", plan)} if plan in files else {}
    target = Path(out) / f"{name}_v{version}.zip"
    with atomic_path(target) as tmp, zipfile.ZipFile(tmp, "w") as zf:
        for path, arc in entries:
            if arc in rewritten:
                zf.writestr(_entry(f"{name}/{arc}"), rewritten[arc])
                continue
            with open(path, "rb") as src, zf.open(_entry(f"{name}/{arc}"), "w", force_zip64=True) as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        if large is not None:
            zf.writestr(_entry(f"{name}/large_files.yml"), large)
    return target


def _entry(arcname: str) -> zipfile.ZipInfo:
    """A deflated, world-readable zip entry with the fixed date."""
    info = zipfile.ZipInfo(arcname, ZIP_DATE)
    info.compress_type, info.external_attr = zipfile.ZIP_DEFLATED, 0o644 << 16
    return info
