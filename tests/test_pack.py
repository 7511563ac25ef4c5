"""``lgesynth pack``: the edm_synth bundle as a model-zoo zip, fetched and run with MONAI's own CLI.

What is packed is the pipeline's output as it is: ``OUT/edm_synth``, the bundle folder (configs/, docs/,
models/ beside the run's checkpoints and logs) that conftest's ``tiny_pipeline`` leaves (one tiny
``lgesynth pipeline`` run per session, shared with test_mlflow_tags), zipped by the ``lgesynth pack``
command. The zip is served from a localhost HTTP server, ``python -m monai.bundle download --url``
unpacks it into an empty folder, and ``python -m monai.bundle run`` generates a cohort from there in a
process whose working directory is elsewhere and whose path holds the lgesynth package only (not the
repository).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import zipfile

import pytest

from conftest import EDM_CONFIGS, REPO, monai_bundle_cli, serve_folder
from lgesynth.cli import main
from lgesynth.data.validate import check_datalist
from lgesynth.errors import DataError
from lgesynth.pack import pack_bundle

pytestmark = pytest.mark.usefixtures("one_thread")
VERSION = json.loads((EDM_CONFIGS / "metadata.json").read_text())["version"]


# files pack must leave out, put into the pipeline's bundle folder for this module (and removed after it),
# beside the run's own leftovers at its top (checkpoint_epoch=N.pt, model_final.pt, train_log.json, config_*.json)
LEFTOVERS = {"models/checkpoint_epoch=4.pt": b"resume state", "models/train_log.json": b"[]", "runs/cache.bin": b"x",
             "configs/__pycache__/x.pyc": b"x"}


@pytest.fixture(scope="module")
def packed(tiny_pipeline, tmp_path_factory):
    """``lgesynth pack OUT/edm_synth --out DIST --large_mb M`` of the tiny pipeline's bundle folder, with ``M``
    between the sizes of the denoiser and of the (larger) decoder, so that only the decoder counts as large."""
    bundle = tiny_pipeline["edm_synth"]
    planted = [bundle / rel for rel in LEFTOVERS]
    assert not any(p.exists() for p in planted)
    for path, content in zip(planted, LEFTOVERS.values()):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    sizes_mb = {n: (bundle / "models" / f"{n}.safetensors").stat().st_size / 1e6 for n in ("decoder", "edm_ema")}
    assert sizes_mb["decoder"] > sizes_mb["edm_ema"], sizes_mb  # conftest's TINY_PIPELINE_PRESET sees to it
    large_mb = (sizes_mb["decoder"] + sizes_mb["edm_ema"]) / 2
    root = tmp_path_factory.mktemp("pack")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        main(["pack", str(bundle), "--out", str(root / "dist"), "--large_mb", str(large_mb)])
    [zip_path] = (root / "dist").iterdir()
    assert f"wrote {zip_path}" in printed.getvalue()
    yield {"bundle": bundle, "zip": zip_path, "root": root, "large_mb": large_mb}
    for path in planted:
        path.unlink()
    for folder in (bundle / "runs", bundle / "configs" / "__pycache__"):
        folder.rmdir()


def test_zip_holds_configs_docs_and_the_generator_only(packed):
    zip_path = packed["zip"]
    assert zip_path.name == f"edm_synth_v{VERSION}.zip"
    names = set(zipfile.ZipFile(zip_path).namelist())
    configs = {f"edm_synth/configs/{p.name}" for p in EDM_CONFIGS.iterdir() if p.is_file()}
    models = {f"edm_synth/models/{n}" for n in ("generator.json", "edm_ema.safetensors", "standardizer.safetensors",
                                                 "decoder.safetensors", "reference.json", "reference.safetensors",
                                                 "source.json", "source.safetensors")}  # the report compares with both
    docs = {f"edm_synth/docs/{p.name}" for p in (EDM_CONFIGS.parent / "docs").iterdir() if p.is_file()}
    assert "edm_synth/docs/README.md" in docs  # and the figures the README shows
    assert names == configs | models | docs | {"edm_synth/large_files.yml"}
    large = zipfile.ZipFile(zip_path).read("edm_synth/large_files.yml").decode()
    digest = hashlib.sha256((packed["bundle"] / "models" / "decoder.safetensors").read_bytes()).hexdigest()
    assert 'path: "models/decoder.safetensors"' in large and f'hash_val: "{digest}"' in large
    assert "edm_ema" not in large  # the denoiser: under the threshold
    again = pack_bundle(packed["bundle"], packed["root"] / "again", large_mb=packed["large_mb"])
    assert again.read_bytes() == zip_path.read_bytes()  # same bundle, same bytes
    assert "large_files.yml" not in zipfile.ZipFile(pack_bundle(packed["bundle"], packed["root"] / "default")).namelist()
    # what was zipped is the pipeline run's own folder, its checkpoints and log left out
    assert (packed["bundle"] / "train_log.json").is_file() and list(packed["bundle"].glob("checkpoint_epoch=*.pt"))


def test_pack_refuses_a_version_without_changelog_and_missing_models(packed, tmp_path):
    bundle = tmp_path / "edm_synth"
    shutil.copytree(packed["bundle"], bundle)
    meta = bundle / "configs" / "metadata.json"
    doc = json.loads(meta.read_text())
    meta.write_text(json.dumps({**doc, "version": "9.9.9"}))
    with pytest.raises(DataError, match="changelog.*9.9.9") as err:
        pack_bundle(bundle, tmp_path / "dist")
    assert str(meta) in str(err.value)
    meta.write_text(json.dumps(doc))
    (bundle / "models" / "decoder.safetensors").unlink()
    with pytest.raises(DataError, match="decoder weights listed in generator.json are missing") as err:
        pack_bundle(bundle, tmp_path / "dist")
    assert str(bundle / "models" / "decoder.safetensors") in str(err.value)
    shutil.rmtree(bundle / "models")
    with pytest.raises(DataError, match="generator.json: not found"):
        pack_bundle(bundle, tmp_path / "dist")
    assert not (tmp_path / "dist").exists() or not any((tmp_path / "dist").iterdir())  # nothing half-written


@pytest.fixture
def served(packed):
    """The zip's URL on a localhost HTTP server."""
    with serve_folder(packed["zip"].parent) as base:
        yield f"{base}/{packed['zip'].name}"


def test_downloaded_bundle_generates_a_valid_cohort_on_its_own(served, tmp_path):
    downloaded, work = tmp_path / "bundles", tmp_path / "work"
    downloaded.mkdir()
    work.mkdir()
    monai_bundle_cli("download", "--name", "edm_synth", "--url", served, "--bundle_dir", downloaded, cwd=work)
    bundle = downloaded / "edm_synth"
    assert (bundle / "models" / "generator.json").is_file() and not (bundle / "models" / "checkpoint_epoch=4.pt").exists()

    out = tmp_path / "cohort"
    monai_bundle_cli("run", "--config_file", bundle / "configs" / "inference.yaml", "--num_samples", "3",
                     "--output_dir", out, "--num_threads", "1", cwd=work)
    assert check_datalist(out / "datalist.json") == []
    doc = json.loads((out / "datalist.json").read_text())
    assert len(doc["training"]) + len(doc["rejected"]) == 3 and doc["training"]
    assert doc["source"]["generator"] == str(bundle / "models")  # the downloaded copy, not the repository's
    assert str(REPO) not in (out / "datalist.json").read_text() + (out / "report.json").read_text()
