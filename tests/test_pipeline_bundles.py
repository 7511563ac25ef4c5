"""The main job leaves ``OUT/edm_synth`` as a complete bundle folder: ``lgesynth pack OUT/edm_synth``
zips the generator the run trained, as it is, and the folder's own configs run on its own models.

The edm_synth stage runs with its bundle calls stubbed: training "writes" conftest's tiny generator
(``tiny_edm_generator``, shared with test_pack) into the ``models_dir`` the stage hands it, plus the
checkpoints and logs a real run leaves beside it; the rest (bundle folder, pack, inference from the
folder's own configs) is real.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
import yaml

from conftest import monai_bundle_cli
from lgesynth.bundles import bundle_dir, make_bundle_folder
from lgesynth.data.validate import check_datalist
from lgesynth.pipeline import Pipeline

pytestmark = pytest.mark.usefixtures("one_thread")
EDM = bundle_dir("edm_synth")
VERSION = json.loads((EDM / "configs" / "metadata.json").read_text())["version"]


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run(tiny_edm_generator, tmp_path_factory):
    """OUT after the pipeline's edm_synth stage, with the bundle calls it made."""
    root = tmp_path_factory.mktemp("pipeline_bundles")
    preset = root / "tiny.yaml"
    preset.write_text(yaml.safe_dump({"name": "tiny", "threads": 1}))
    out = root / "run"
    pipe = Pipeline(out, preset, data=tiny_edm_generator["datalist"], stages=("edm_synth",))
    calls = []

    def fake_run_bundle(bundle, config, *args, **overrides):
        calls.append((bundle, config, overrides))
        if config == "train.yaml":  # what a train run leaves: the generator in models_dir, resume state beside it
            shutil.copytree(tiny_edm_generator["models"], overrides["models_dir"], dirs_exist_ok=True)
            (Path(overrides["output_dir"]) / "model_final.pt").write_bytes(b"resume state")
            (Path(overrides["output_dir"]) / "train_log.json").write_text("[]")
            (Path(overrides["models_dir"]) / "checkpoint_epoch=4.pt").write_bytes(b"resume state")

    pipe.run_bundle = fake_run_bundle
    pipe._edm_synth()
    return {"out": out, "calls": calls, "root": root, "pipe": pipe}


def test_edm_synth_output_is_a_bundle_folder_with_the_configs_the_run_used(run):
    bundle = run["out"] / "edm_synth"
    train = next(o for b, c, o in run["calls"] if (b, c) == ("edm_synth", "train.yaml"))
    assert Path(train["models_dir"]) == bundle / "models" and Path(train["output_dir"]) == bundle
    assert _files(bundle / "configs") == _files(EDM / "configs")
    assert _files(bundle / "docs") == _files(EDM / "docs")
    assert (bundle / "models" / "generator.json").is_file()


def test_pack_zips_the_runs_generator_as_it_is(run, tiny_edm_generator):
    from lgesynth.commands import pack

    bundle, dist = run["out"] / "edm_synth", run["root"] / "dist"
    pack(str(bundle), out=str(dist))  # `lgesynth pack OUT/edm_synth --out dist`
    zip_path = dist / f"edm_synth_v{VERSION}.zip"
    archive = zipfile.ZipFile(zip_path)
    names = set(archive.namelist())
    assert {f"edm_synth/configs/{n}" for n in _files(EDM / "configs")} <= names
    assert {f"edm_synth/docs/{n}" for n in _files(EDM / "docs")} <= names
    assert not [n for n in names if not n.startswith(("edm_synth/configs/", "edm_synth/docs/", "edm_synth/models/"))]
    trained = _files(tiny_edm_generator["models"])
    shipped = {n.removeprefix("edm_synth/models/"): archive.read(n) for n in names if n.startswith("edm_synth/models/")}
    assert shipped and all(shipped[n] == trained[n] for n in shipped)  # the run's own files, byte for byte
    assert "generator.json" in shipped and "checkpoint_epoch=4.pt" not in shipped and "model_final.pt" not in shipped


def test_the_folders_own_configs_generate_from_the_runs_models(run, tmp_path):
    """``python -m monai.bundle run --config_file OUT/edm_synth/configs/inference.yaml``: no --models_dir."""
    bundle = run["out"] / "edm_synth"
    monai_bundle_cli("run", "--config_file", bundle / "configs" / "inference.yaml", "--num_samples", "2",
                     "--num_threads", "1", cwd=tmp_path, fresh_process=False)
    cohort = bundle / "synthetic" / "datalist.json"  # inference.yaml's default output_dir: bundle_root/synthetic
    assert check_datalist(cohort) == []
    assert json.loads(cohort.read_text())["source"]["generator"] == str(bundle / "models")


def test_bundle_folder_is_refreshed_and_leaves_models_alone(tmp_path):
    dest = tmp_path / "edm_synth"
    (dest / "models").mkdir(parents=True)
    (dest / "models" / "generator.json").write_text("{}")
    (dest / "configs").mkdir()
    (dest / "configs" / "stale.yaml").write_text("old: 1")
    make_bundle_folder("edm_synth", dest)
    assert _files(dest / "configs") == _files(EDM / "configs")  # the stale copy is gone
    assert (dest / "models" / "generator.json").read_text() == "{}"
    assert not [p for p in dest.iterdir() if p.name.startswith(".")]  # no temporary copies left
