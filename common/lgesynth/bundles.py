"""Where the four MONAI bundles' configs live, in a checkout and in an installed wheel alike.

The package carries the bundles as data under ``lgesynth/bundle_files/<name>/``: ``configs/`` (every
config, ``metadata.json``, ``logging.conf``) and ``docs/``, never ``models/`` (weights are what a run
trains, not what the package ships). In the repository ``common/lgesynth/bundle_files`` is a symlink
to the repository's ``bundles/``, so an editable install (``pip install -e .``) reads and runs the
very files you edit, and ``pip install .`` / a wheel copies them into the package (``pyproject.toml``:
``[tool.setuptools.package-data]``). Every caller finds a bundle through :func:`bundle_dir`.

:func:`make_bundle_folder` turns a stage's output folder holding the trained ``models/`` into a
complete bundle folder (``configs/`` and ``docs/`` beside it), which ``lgesynth pack`` zips as it is
and ``python -m monai.bundle run --config_file DIR/configs/inference.yaml`` runs on its own models.
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

from lgesynth.errors import DataError

BUNDLES = ("inr_fit", "inr2vec", "edm_synth", "scar_seg")  # pipeline order
DATA_DIR = "bundle_files"  # lgesynth/<DATA_DIR>/<name>/{configs,docs}
SHIPPED = ("configs", "docs")  # what the package carries of a bundle (and make_bundle_folder copies)


def bundles_root() -> Path:
    """The folder holding the bundles: the repository's ``bundles/`` (editable install, via the
    ``bundle_files`` symlink) or ``site-packages/lgesynth/bundle_files`` (wheel)."""
    root = resources.files("lgesynth") / DATA_DIR
    if not isinstance(root, Path):  # e.g. a zipped package: monai.bundle.run needs real files
        raise DataError(str(root), "lgesynth is not installed as files on disk; the bundles' configs must be "
                        "real files (install it with pip, not as a zip)")
    return root.resolve()


def bundle_dir(name: str, root: str | Path | None = None) -> Path:
    """The bundle folder ``name`` (above ``configs/``), from ``root`` (default :func:`bundles_root`).

    ``DataError`` naming the missing ``configs/metadata.json`` when it is not there (e.g. an
    installation built without the package data).
    """
    folder = (Path(root) if root is not None else bundles_root()) / name
    meta = folder / "configs" / "metadata.json"
    if not meta.is_file():
        known = [b for b in BUNDLES if (folder.parent / b / "configs").is_dir()]
        raise DataError(meta, f"not found: no bundle {name!r} here (bundles found: {known}); reinstall lgesynth "
                        "(pip install .) so that its bundle configs come with it")
    return folder


def make_bundle_folder(name: str, dest: str | Path, root: str | Path | None = None) -> Path:
    """Make ``dest`` (a stage's output, which holds or will hold ``models/``) a complete bundle folder.

    Copies the bundle's ``configs/`` and ``docs/`` into ``dest``, replacing earlier copies, so that
    ``dest`` has the configs the run used beside the models it trained: their ``bundle_root``
    (:func:`lgesynth.synth.bundle_root`, the folder above ``--config_file``'s ``configs/``) is ``dest``,
    hence their default ``models_dir`` is ``dest/models``. Returns ``dest``.
    """
    src, dest = bundle_dir(name, root), Path(dest)
    if src.resolve() == dest.resolve():
        return dest
    ignore = shutil.ignore_patterns("__pycache__", ".*")
    for sub in SHIPPED:
        if not (src / sub).is_dir():
            continue
        target = dest / sub
        tmp = dest / f".{sub}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src / sub, tmp, ignore=ignore)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    return dest
