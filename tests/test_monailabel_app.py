"""The MONAI Label app (``apps/monailabel``) served for real: ``monailabel start_server`` on 127.0.0.1.

A tiny scar_seg run (conftest's 2D plan, one epoch of 4 iterations) and conftest's tiny edm_synth
generator (the session fixture that test_edm_synth_bundle and test_pack share) are served by a copy of
the app (the server writes ``model/``, ``logs/`` into its app folder). Over HTTP:

- nothing is generated at start (MONAI Label runs its scoring methods then; the app keeps the
  generator out);
- ``POST /scoring/edm_synth`` starts the generator as MONAI Label's background job (a subprocess that
  loads the app again); while it runs, ``POST /infer/scar_seg`` with an uploaded NIfTI returns a label
  on the input's own grid (shape, affine) with values in {0, 1, 2}, voxel for voxel the label the
  bundle's own ``inference.yaml`` writes;
- the pairs the job adds to the datastore are the bundle's own samples for that seed, labelled
  ``final``, and pass ``lgesynth.data.validate`` (``lgesynth check-data``).

Skipped when monailabel is not installed: ``pip install --no-deps -r apps/monailabel/requirements.txt``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("monailabel", reason="MONAI Label is not installed: pip install --no-deps -r apps/monailabel/requirements.txt")
import requests  # noqa: E402  (a monailabel dependency)

import lgesynth  # noqa: E402
from conftest import (EDM_CONFIGS, REPO, run_bundle, synthetic_lge, tiny_seg_plan, torch_threads,  # noqa: E402
                      write_tiny_datalist)
from lgesynth.data.datalist import load_datalist, write_datalist  # noqa: E402
from lgesynth.data.validate import check_datalist  # noqa: E402
from lgesynth.io import save_nifti  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
APP = REPO / "apps" / "monailabel"
SCAR_SEG = REPO / "bundles" / "scar_seg"
SEED, SAMPLES = 5, 3
START_TIMEOUT_S, JOB_TIMEOUT_S = 180, 240
HTTP = requests.Session()
HTTP.trust_env = False  # straight to 127.0.0.1, whatever proxy the environment names


@pytest.fixture(scope="module")
def scar_seg_run(tmp_path_factory) -> Path:
    """A scar_seg training output_dir (models/model.pt + models/plan.json): 1 epoch of 4 iterations."""
    root = tmp_path_factory.mktemp("label_scar_seg")
    datalist = write_tiny_datalist(root / "data", n_cases=3)
    plan = tiny_seg_plan(root / "plan.json", epochs=1, iterations_per_epoch=4)
    with torch_threads(1):
        run_bundle(SCAR_SEG / "configs", "train.yaml", datalist=str(datalist), output_dir=str(root / "train"),
                   plan_path=str(plan), num_workers=0, log_every=100)
    return root / "train"


@pytest.fixture(scope="module")
def edm_bundle(tiny_edm_generator, tmp_path_factory) -> Path:
    """An edm_synth bundle folder as shared: the repository's configs and the tiny generator's models."""
    bundle = tmp_path_factory.mktemp("label_edm") / "edm_synth"
    shutil.copytree(EDM_CONFIGS, bundle / "configs")
    shutil.copytree(tiny_edm_generator["models"], bundle / "models")
    return bundle


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(scar_seg_run, edm_bundle, tmp_path_factory):
    """``python -m monailabel.main start_server`` on a copy of the app; yields its URL, datastore and log."""
    root = tmp_path_factory.mktemp("label_server")
    app, studies, log = root / "app", root / "studies", root / "server.log"
    shutil.copytree(APP, app, ignore=shutil.ignore_patterns("model", "logs", "bin", "__pycache__"))
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(lgesynth.__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1",
           "MONAI_LABEL_SESSION_PATH": str(root / "sessions")}
    cmd = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(app), "--studies", str(studies),
           "--host", "127.0.0.1", "--port", str(port), "--conf", "scar_seg", str(SCAR_SEG),
           "--conf", "scar_seg_train_dir", str(scar_seg_run), "--conf", "edm_synth", str(edm_bundle)]
    url = f"http://127.0.0.1:{port}"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert proc.poll() is None, f"server exited with {proc.returncode}:\n{log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"server not up after {START_TIMEOUT_S} s:\n{log.read_text()[-4000:]}"
            try:
                if HTTP.get(f"{url}/info/", timeout=5).ok:
                    break
            except (requests.ConnectionError, requests.Timeout):  # not listening yet, or still starting
                pass
            time.sleep(1)
        at_start = {"scoring": HTTP.get(f"{url}/scoring/", timeout=30).status_code,
                    "objects": HTTP.get(f"{url}/datastore/", params={"output": "all"}, timeout=30).json()["objects"]}
        yield {"url": url, "studies": studies, "log": log, "at_start": at_start}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _tail(server) -> str:
    return server["log"].read_text()[-4000:]


@pytest.fixture(scope="module")
def generator_job(server) -> dict:
    """``POST /scoring/edm_synth``: MONAI Label queues the background job and answers at once."""
    reply = HTTP.post(f"{server['url']}/scoring/edm_synth", json={"num_samples": SAMPLES, "seed": SEED}, timeout=30)
    assert reply.status_code == 200, reply.text + _tail(server)
    return reply.json()


def test_app_offers_both_tasks_and_starts_no_generation(server):
    info = HTTP.get(f"{server['url']}/info/", timeout=30).json()
    assert info["models"]["scar_seg"]["labels"] == {"healthy myocardium": 1, "scar": 2}
    assert info["models"]["scar_seg"]["config"]["model_filename"][0] == "model.pt"
    assert "edm_synth" in info["scoring"]
    # MONAI Label runs every scoring method at start; the app keeps the generator out of that
    assert server["at_start"] == {"scoring": 404, "objects": {}}


def test_segmentation_of_an_uploaded_nifti_while_the_generator_runs(server, generator_job, scar_seg_run, tmp_path):
    assert generator_job["request"]["method"] == "edm_synth"
    # another grid than the training stacks: the label must come back on this one
    image, _, affine = synthetic_lge(shape=(36, 30, 7), spacing_mm=(1.4, 1.6, 7.5), seed=11)
    upload = save_nifti(tmp_path / "in" / "case.nii.gz", image, affine, dtype=np.float32)
    reply = HTTP.post(f"{server['url']}/infer/scar_seg", params={"output": "image"},
                          files={"file": ("case.nii.gz", upload.read_bytes())}, timeout=300)
    assert reply.status_code == 200, reply.text[:2000] + _tail(server)
    (tmp_path / "case_label.nii.gz").write_bytes(reply.content)
    label = nib.load(str(tmp_path / "case_label.nii.gz"))
    assert label.shape == image.shape
    np.testing.assert_allclose(label.affine, affine, atol=1e-3)
    values = np.asarray(label.dataobj)
    assert set(np.unique(values).tolist()) <= {0, 1, 2}

    # the bundle's own inference of the same file, in this process
    with torch_threads(1):
        run_bundle(SCAR_SEG / "configs", "inference.yaml", input=str(upload), train_dir=str(scar_seg_run),
                   output_dir=str(tmp_path / "bundle_pred"))
    expected = np.asarray(nib.load(str(tmp_path / "bundle_pred" / "case_seg.nii.gz")).dataobj)
    np.testing.assert_array_equal(values, expected)


def _synthesis_module():
    """The app's ``lib/synthesis.py``, loaded by path (as MONAI Label loads the app, without its ``lib`` on sys.path)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("lgesynth_label_synthesis", APP / "lib" / "synthesis.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generator_without_seed_adds_new_samples_and_keeps_existing_ones(edm_bundle, tmp_path):
    from monailabel.datastore.local import LocalDatastore

    datastore = LocalDatastore(str(tmp_path / "studies"), auto_reload=False)
    generate = _synthesis_module().SyntheticPairs(edm_bundle, num_samples=1)
    with torch_threads(1):
        first, second = generate({}, datastore), generate({}, datastore)
        again = generate({"seed": 0}, datastore)
    assert (first["seed"], second["seed"]) == (0, 1)  # a fresh seed each time: new samples
    assert first["added"] == ["syn_s0_0001"] and second["added"] == ["syn_s1_0001"]
    assert again["added"] == [] and again["skipped"] == ["syn_s0_0001"]  # the same seed again: left as they are
    assert sorted(datastore.get_labeled_images("final")) == ["syn_s0_0001", "syn_s1_0001"]


def _wait_for_job(server) -> dict:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while True:
        job = HTTP.get(f"{server['url']}/scoring/", timeout=30).json()
        if job["status"] not in ("SUBMITTED", "RUNNING"):
            return job
        assert time.monotonic() < deadline, f"generator still {job['status']} after {JOB_TIMEOUT_S} s:\n{_tail(server)}"
        time.sleep(1)


def _datastore_pairs(server, ids: list[str], timeout_s: float = 30) -> dict:
    """The datastore's objects once every id has a ``final`` label (the server reloads what the job wrote)."""
    deadline = time.monotonic() + timeout_s
    while True:
        objects = HTTP.get(f"{server['url']}/datastore/", params={"output": "all"}, timeout=30).json()["objects"]
        if all("final" in objects.get(i, {}).get("labels", {}) for i in ids) or time.monotonic() > deadline:
            return objects
        time.sleep(0.5)


def test_generator_adds_valid_pairs_to_the_datastore(server, generator_job, edm_bundle, tmp_path):
    # the same request to the bundle itself, in this process
    with torch_threads(1):
        run_bundle(edm_bundle / "configs", "inference.yaml", bundle_root=str(edm_bundle), output_dir=str(tmp_path / "cohort"),
                   num_samples=SAMPLES, seed=SEED)
    assert check_datalist(tmp_path / "cohort" / "datalist.json") == []
    kept = [e["id"] for e in load_datalist(tmp_path / "cohort" / "datalist.json", "training")]
    assert kept, "the tiny generator kept no sample: nothing to compare"
    job = _wait_for_job(server)
    assert job["status"] == "DONE", "\n".join(job.get("details", [])) + _tail(server)

    ids = [f"syn_s{SEED}_{k.rsplit('_', 1)[-1]}" for k in kept]
    objects = _datastore_pairs(server, ids)
    assert sorted(objects) == sorted(ids)
    studies = server["studies"]
    pairs = []
    for image_id, sample in zip(ids, kept):
        assert objects[image_id]["image"]["info"]["synthetic"]["seed"] == SEED
        assert objects[image_id]["labels"]["final"]["info"]["synthetic"]["sample"] == sample
        image, label = studies / f"{image_id}.nii.gz", studies / "labels" / "final" / f"{image_id}.nii.gz"
        np.testing.assert_array_equal(nib.load(str(label)).get_fdata(),
                                      nib.load(str(tmp_path / "cohort" / "labelsTr" / f"{sample}.nii.gz")).get_fdata())
        np.testing.assert_allclose(nib.load(str(image)).get_fdata(),
                                   nib.load(str(tmp_path / "cohort" / "imagesTr" / f"{sample}.nii.gz")).get_fdata(), atol=1e-5)
        pairs.append({"id": image_id, "image": str(image), "label": str(label)})
    # what `lgesynth check-data` says of the datastore's pairs (a datalist beside the datastore folder)
    assert check_datalist(write_datalist(studies.parent / "datastore_pairs.json", pairs)) == []
