"""lgesynth installs like a package: a wheel carries every bundle's configs and docs (never models/).

The wheel is built offline (``pip wheel --no-build-isolation --no-index``) from a copy of the
checkout's sources (so no ``build/`` or ``*.egg-info`` lands in the shared tree and no stale build
output leaks into the wheel), installed with ``pip install --no-deps --no-index`` into a fresh virtual
environment (``python -m venv --system-site-packages --without-pip``: pip, torch, MONAI and the rest come
from this interpreter, lgesynth only from the wheel), and the environment's interpreter, working outside the
checkout, imports lgesynth from there and finds each bundle through :func:`lgesynth.bundles.bundle_dir`,
as ``lgesynth pipeline`` does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import lgesynth
from lgesynth.bundles import BUNDLES, bundle_dir, bundles_root
from lgesynth.errors import DataError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = ("train.yaml", "inference.yaml", "evaluate.yaml", "multi_gpu_train.yaml", "metadata.json", "logging.conf")
PIP_ENV = {"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INDEX": "1", "PIP_NO_INPUT": "1"}


def _pip(*args, cwd: Path, python: str | Path = sys.executable) -> None:
    done = subprocess.run([str(python), "-m", "pip", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **PIP_ENV}, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _sources(dest: Path) -> Path:
    """What ``pip install .`` reads from the checkout, copied (symlinks kept: lgesynth/bundle_files)."""
    junk = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist", "runs", "*.pyc")
    dest.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, dest / name)
    shutil.copytree(REPO / "common", dest / "common", symlinks=True, ignore=junk)
    for bundle in BUNDLES:  # configs + docs; models/ may hold a developer's weights: the wheel never takes them
        for sub in ("configs", "docs"):
            shutil.copytree(REPO / "bundles" / bundle / sub, dest / "bundles" / bundle / sub, ignore=junk)
        (dest / "bundles" / bundle / "models").mkdir()
        (dest / "bundles" / bundle / "models" / "model.pt").write_bytes(b"weights the wheel must not carry")
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wheel")
    src = _sources(root / "src")
    _pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", root / "dist", ".", cwd=src)
    (found,) = (root / "dist").glob("lgesynth-*.whl")
    return found


def test_wheel_carries_every_bundles_configs_and_docs_but_no_models(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for bundle in BUNDLES:
        for config in CONFIGS:
            assert f"lgesynth/bundle_files/{bundle}/configs/{config}" in names
        assert f"lgesynth/bundle_files/{bundle}/docs/README.md" in names
    assert "lgesynth/bundle_files/edm_synth/docs/phantom120_montage.png" in names  # the figures its README shows
    assert not [n for n in names if "/models/" in n or n.startswith("bundles/")]
    assert "lgesynth/presets/smoke.yaml" in names and "lgesynth/pipeline.py" in names


def test_installed_wheel_finds_every_bundle_outside_the_checkout(wheel, tmp_path):
    venv, work = tmp_path / "venv", tmp_path / "work"
    work.mkdir()
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True,
                   timeout=300)
    python = venv / "bin" / "python"
    _pip("install", "--no-deps", "--no-index", wheel, cwd=work, python=python)
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    script = """
import json, sys
from pathlib import Path
import lgesynth, lgesynth.pipeline
from lgesynth.bundles import BUNDLES, bundle_dir, bundles_root
site = Path(sys.argv[1]).resolve()
assert sys.prefix != sys.base_prefix, "not a virtual environment"
assert Path(lgesynth.__file__).resolve().is_relative_to(site), lgesynth.__file__
assert bundles_root().is_relative_to(site), bundles_root()
found = {}
for name in BUNDLES:
    folder = bundle_dir(name)
    meta = json.loads((folder / "configs" / "metadata.json").read_text())
    found[name] = {"dir": str(folder), "version": meta["version"],
                   "configs": sorted(p.name for p in (folder / "configs").iterdir()),
                   "models": (folder / "models").exists()}
print(json.dumps(found))
"""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    done = subprocess.run([str(python), "-c", script, str(site)], cwd=work, capture_output=True, text=True,
                          env={**env, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    for name in BUNDLES:
        assert Path(found[name]["dir"]) == (site / "lgesynth" / "bundle_files" / name).resolve()
        assert set(CONFIGS) <= set(found[name]["configs"])
        assert found[name]["version"] == json.loads((REPO / "bundles" / name / "configs" / "metadata.json").read_text())["version"]
        assert not found[name]["models"]


def test_editable_install_reads_the_repositorys_bundles():
    if not Path(lgesynth.__file__).resolve().is_relative_to(REPO):
        pytest.skip("lgesynth is not the editable install of this checkout")
    assert bundles_root() == (REPO / "bundles").resolve()
    for name in BUNDLES:
        assert bundle_dir(name) == (REPO / "bundles" / name).resolve()


def test_a_missing_bundle_is_named(tmp_path):
    (tmp_path / "edm_synth" / "configs").mkdir(parents=True)
    with pytest.raises(DataError, match=r"no bundle 'scar_seg' here \(bundles found: \['edm_synth'\]\)") as err:
        bundle_dir("scar_seg", tmp_path)
    assert str(tmp_path / "scar_seg" / "configs" / "metadata.json") in str(err.value)
