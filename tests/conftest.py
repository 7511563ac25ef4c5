"""Shared test data: a tiny synthetic LGE stack with a ring-shaped myocardium and a scar sector.

Plain functions (importable as ``from conftest import synthetic_lge, write_lge_pair, write_tiny_datalist``)
and fixtures built on them:

- ``synthetic_lge(...) -> (image, label, affine)``: arrays in memory, fully determined by the
  arguments (seeded noise), with known region intensities so tests can assert exact numbers.
- ``write_lge_pair(folder, case_id, ...) -> (image_path, label_path)``: writes
  ``folder/imagesTr/<id>.nii.gz`` and ``folder/labelsTr/<id>.nii.gz``.
- ``write_tiny_datalist(folder, n_cases=4, ...) -> datalist path``: ``n_cases`` pairs, every other
  one without scar, last case in ``"test"``, the rest in ``"training"``.
- fixtures ``lge_pair`` (one pair under ``tmp_path``) and ``tiny_datalist`` (4 cases under
  ``tmp_path / "tiny"``).
- ``tiny_seg_plan(path, ...)``: the 2D width-8 scar_seg plan for these stacks (scar_seg, experiment, zoo tests).
- ``serve_folder(folder)`` (a localhost HTTP server) and ``monai_bundle_cli(*args, cwd=...)`` (``python -m
  monai.bundle``, in a fresh process or this one) for the model-zoo tests.

Geometry (defaults): 32 x 32 x 6 voxels at 1.5 x 1.5 x 8 mm, the slice axis last. Slices 1..4 hold
an LV ring (myocardium between radii ``RING_INNER_MM`` and ``RING_OUTER_MM`` around the in-plane
centre); slices 0 and 5 are above the base / below the apex and have no myocardium. Scar is the
sector of the ring between 0 and ``scar_degrees`` (angle from axis 0 towards axis 1) on slices
2..3. In general: ring on all slices but the first and last, scar on all but two at each end.
With the defaults: 512 myocardium voxels of which 64 scar (burden 12.5 %).
Intensities before noise (``INTENSITY``): background 100, LV blood pool (inside the ring) 600,
healthy (nulled) myocardium 150, scar 900.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from lgesynth.data.datalist import write_datalist
from lgesynth.data.labels import MYOCARDIUM, SCAR
from lgesynth.io import save_nifti

SHAPE = (32, 32, 6)
SPACING_MM = (1.5, 1.5, 8.0)
RING_INNER_MM = 7.5
RING_OUTER_MM = 12.0
INTENSITY = {"background": 100.0, "blood": 600.0, "myocardium": 150.0, "scar": 900.0}


def synthetic_lge(shape: tuple[int, int, int] = SHAPE, spacing_mm: tuple[float, float, float] = SPACING_MM,
                  scar_degrees: float = 90.0, noise: float = 20.0, seed: int = 0,
                  origin_mm: tuple[float, float, float] = (-24.0, -24.0, -20.0)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A short-axis LGE stack with its label.

    Args:
        shape: (x, y, z) voxels; z is the slice axis. The ring is on every slice but the first and last,
            the scar on every slice but the first two and last two (at least 5 slices for some scar).
        spacing_mm: voxel size.
        scar_degrees: angular width of the scar sector; 0 gives a case without scar.
        noise: standard deviation of the added Gaussian noise (0 for exact region intensities).
        seed: noise seed.
    Returns:
        ``image`` (x, y, z) float32, ``label`` (x, y, z) uint8 in {0, 1, 2}, ``affine`` (4, 4), diagonal.
    """
    nx, ny, nz = shape
    sx, sy, sz = spacing_mm
    x = (np.arange(nx) - (nx - 1) / 2) * sx
    y = (np.arange(ny) - (ny - 1) / 2) * sy
    r = np.hypot(x[:, None], y[None, :])  # (x, y) mm from the LV centre
    angle = np.degrees(np.arctan2(y[None, :], x[:, None])) % 360.0
    ring_2d = (r >= RING_INNER_MM) & (r <= RING_OUTER_MM)
    ring_slices, scar_slices = range(1, nz - 1), range(2, nz - 2)

    label = np.zeros(shape, dtype=np.uint8)
    image = np.full(shape, INTENSITY["background"], dtype=np.float32)
    for k in ring_slices:
        label[..., k][ring_2d] = MYOCARDIUM
        image[..., k][r < RING_INNER_MM] = INTENSITY["blood"]
        image[..., k][ring_2d] = INTENSITY["myocardium"]
    if scar_degrees > 0:
        sector = ring_2d & (angle < scar_degrees)
        for k in scar_slices:
            label[..., k][sector] = SCAR
            image[..., k][sector] = INTENSITY["scar"]
    if noise:
        image += np.random.default_rng(seed).normal(0.0, noise, size=shape).astype(np.float32)
    affine = np.diag([sx, sy, sz, 1.0])
    affine[:3, 3] = origin_mm
    return image, label, affine


def write_lge_pair(folder: str | Path, case_id: str = "p001", **kwargs) -> tuple[Path, Path]:
    """Write ``folder/imagesTr/<case_id>.nii.gz`` (float32) and ``folder/labelsTr/<case_id>.nii.gz`` (uint8).

    ``kwargs`` go to :func:`synthetic_lge`.
    """
    image, label, affine = synthetic_lge(**kwargs)
    folder = Path(folder)
    image_path = save_nifti(folder / "imagesTr" / f"{case_id}.nii.gz", image, affine, dtype=np.float32)
    label_path = save_nifti(folder / "labelsTr" / f"{case_id}.nii.gz", label, affine, dtype=np.uint8)
    return image_path, label_path


def write_tiny_datalist(folder: str | Path, n_cases: int = 4, **kwargs) -> Path:
    """``n_cases`` pairs (ids ``p001``...; even indices with a scar, odd ones without) and ``folder/datalist.json``.

    The last case goes to ``"test"``, the others to ``"training"``; entries carry ``"scar": bool``.
    ``kwargs`` go to :func:`synthetic_lge` (``scar_degrees`` is set per case).
    """
    folder = Path(folder)
    entries = []
    for i in range(n_cases):
        has_scar = i % 2 == 0
        scar_degrees = kwargs.get("scar_degrees", 90.0) if has_scar else 0.0
        image_path, label_path = write_lge_pair(folder, f"p{i + 1:03d}", **{"seed": i, **kwargs, "scar_degrees": scar_degrees})
        entries.append({"id": f"p{i + 1:03d}", "image": str(image_path), "label": str(label_path), "scar": has_scar})
    return write_datalist(folder / "datalist.json", entries[:-1], entries[-1:])


@pytest.fixture
def lge_pair(tmp_path) -> tuple[Path, Path]:
    """One synthetic image/label pair (defaults of :func:`synthetic_lge`) under ``tmp_path``."""
    return write_lge_pair(tmp_path)


@pytest.fixture
def tiny_datalist(tmp_path) -> Path:
    """A 4-case datalist (3 training, 1 test; p001 and p003 with scar) under ``tmp_path / "tiny"``."""
    return write_tiny_datalist(tmp_path / "tiny")


def grid_coords(shape, z_extent: float = 0.5):
    """Voxel-centre coordinates of a small grid, (X*Y*Z, 3), z in (-z_extent, z_extent) (as canonical_coords)."""
    import torch

    axes = [(torch.arange(n) * 2 + 1) / n - 1.0 for n in shape]
    axes[2] = axes[2] * z_extent
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)


def ring_targets(n: int, shape, seed: int = 0, radius=(0.35, 0.1), wedge: float = 1.2):
    """INR fitting targets ``(n, X*Y*Z, 3)`` of tiny ring phantoms: intensity in [-1, 1], myocardium,
    scar (a wedge of ``wedge`` radians on odd subjects); radius ``radius[0] + radius[1] * U(0, 1)``."""
    import torch

    g = torch.Generator().manual_seed(seed)
    c = grid_coords(shape, 1.0)
    x, y = c[:, 0], c[:, 1]
    r, th = torch.sqrt(x**2 + y**2), torch.atan2(y, x)
    out = []
    for i in range(n):
        r0 = radius[0] + radius[1] * torch.rand(1, generator=g)
        myo = (r > r0) & (r < r0 + 0.25)
        scar = myo & (th.sub(i).remainder(6.283) < wedge) & torch.tensor(i % 2 == 1)
        img = 0.3 * torch.sin(2 * x + i) * torch.cos(3 * y) - 0.2
        img = torch.where(r < r0, 0.6, img)
        img = torch.where(myo, -0.6, img)
        img = torch.where(scar, 0.8, img)
        out.append(torch.stack([img, myo.float(), scar.float()], -1))
    return torch.stack(out)


@contextlib.contextmanager
def torch_threads(n: int = 1):
    """Run a block with ``n`` intra-op torch threads, then restore the previous count. Tiny nets are
    faster on one thread, and far faster on a busy shared CPU (2 threads measured 35 s vs 2 s)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def one_thread():
    """One torch thread for a test (use with ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    with torch_threads(1):
        yield


TINY_BANK_SPEC = {"hidden_features": 32, "hidden_layers": 2}


def fit_tiny_bank(datalist: str | Path, out: str | Path, grid_shape) -> Path:
    """A quick INR bank of a tiny datalist (SIREN 32 x 2, 60 full-grid steps, seed init) in ``out``."""
    from lgesynth.engines.inr_fit import InrFitTrainer

    with torch_threads(1):
        InrFitTrainer(datalist, out, grid={"shape": list(grid_shape)}, spec=TINY_BANK_SPEC,
                      fit={"max_steps": 60, "points": None, "early_stop": False, "lr": 1e-3},
                      init={"kind": "seed", "seed": 0}, chunk_subjects=8, progress=False).run_all()
    return Path(out)


# ---- a tiny trained edm_synth generator, shared by test_edm_synth_bundle and test_pack (one per session)
REPO = Path(__file__).resolve().parents[1]
EDM_CONFIGS = REPO / "bundles" / "edm_synth" / "configs"
INR2VEC_CONFIGS = REPO / "bundles" / "inr2vec" / "configs"
SCAR_SEG_CONFIGS = REPO / "bundles" / "scar_seg" / "configs"
GRID = (24, 24, 6)
TINY_EDM = dict(denoiser_args={"hidden": 64, "blocks": 2, "emb_dim": 32, "noise_channels": 16,
                               "noise_embedding": "positional", "dropout": 0.0},
                batch_size=8, epoch_length=10, lr=0.002, warmup_steps=5, val_interval=1, log_every=100,
                num_threads=1, ema_halflife_kimg=0.05, sampler={"num_steps": 8, "sigma_min": 0.002, "sigma_max": 80.0, "rho": 7.0})


def run_bundle(configs: Path, config: str, run_id: str | None = None, **override):
    """``monai.bundle.run`` of ``configs/config`` in this process (no logging.conf), overriding keys."""
    from monai.bundle import run

    run(run_id, config_file=str(configs / config), logging_file=False, **override)


@pytest.fixture(scope="session")
def tiny_inr2vec(tmp_path_factory):
    """7 conftest cases (6 training, 1 test) -> tiny bank on ``GRID`` -> tiny inr2vec (30 steps) -> latents.

    The Fourier decoder, not the default siren one: test_pack's size thresholds are set for its ~0.8 MB
    (the tiny siren decoder is ~0.2 MB); the siren decoder's decode path is tested in test_inr2vec_bundle."""
    root = tmp_path_factory.mktemp("edm_synth")
    datalist = write_tiny_datalist(root / "data", n_cases=7)
    fit_tiny_bank(datalist, root / "bank", GRID)
    with torch_threads(1):
        inr2vec = root / "inr2vec"
        run_bundle(INR2VEC_CONFIGS, "train.yaml", bank_dir=str(root / "bank"), output_dir=str(inr2vec),
                   epoch_length=10, val_fraction=0.0, latent_dim=512, encoder_args={"width": 32, "depth": 2, "pool": "maxmean"},
                   decoder_args={"hidden": 64, "layers": 3, "num_freqs": 5}, subjects_per_batch=4, points=2048, lr=0.01,
                   warmup_steps=2, num_threads=1, log_every=100, steps=30,
                   focus="myocardium", importance_weights=False)  # plumbing: the biased draw decodes myocardium within 30 steps
        run_bundle(INR2VEC_CONFIGS, "inference.yaml", "encode", model_dir=str(inr2vec), bank_dir=str(root / "bank"),
                   datalist=str(datalist), output_dir=str(inr2vec), num_threads=1)
    return {"root": root, "datalist": datalist, "inr2vec": inr2vec}


@pytest.fixture(scope="session")
def tiny_edm_generator(tiny_inr2vec):
    """A tiny EDM on those latents: 20 of 40 planned iterations (as if killed, tracked in MLflow), then the
    same run again for all 40 (it resumes). ``models``: the exported generator (generator.json + weights)."""
    import json

    root = tiny_inr2vec["root"]
    out, models = root / "edm", root / "bundle" / "models"
    common = dict(inr2vec_dir=str(tiny_inr2vec["inr2vec"]), output_dir=str(out), models_dir=str(models), **TINY_EDM)
    with torch_threads(1):
        run_bundle(EDM_CONFIGS, "train.yaml", steps=20, tracking="mlflow", **common)
        first = json.loads((out / "train_log.json").read_text())
        run_bundle(EDM_CONFIGS, "train.yaml", steps=40, **common)
    return {**tiny_inr2vec, "out": out, "models": models, "first": first,
            "log": json.loads((out / "train_log.json").read_text())}


def tiny_seg_plan(path: Path, epochs: int = 2, iterations_per_epoch: int = 6) -> Path:
    """A scar_seg plan for the 32 x 32 x 6 conftest stacks: 2D, shrunk to width 8 and batch 4, exactly ``epochs``
    (no time budget to re-plan them: lgesynth.seg.time_budget)."""
    from lgesynth.seg import make_plan, write_plan

    plan = make_plan(((1.5, 1.5, 8.0), (32, 32, 6)), preset="smoke")
    assert plan["configuration"] == "2d"
    plan["network"]["filters"] = [8 * 2 ** i for i in range(len(plan["network"]["filters"]))]
    plan["batch_size"] = 4
    plan["training"].update(epochs=epochs, iterations_per_epoch=iterations_per_epoch)
    plan["budget"]["budget_minutes"] = None
    return write_plan(path, plan)


# ---- MONAI's bundle command line against a zip served from localhost (test_pack, test_zoo)
class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serve_folder(folder: Path):
    """``http://127.0.0.1:PORT`` serving ``folder`` from a thread, for ``monai.bundle download --url``."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def monai_bundle_cli(*args, cwd: Path, fresh_process: bool = True, timeout: float = 300) -> None:
    """``python -m monai.bundle ARGS`` run from ``cwd``, failing the test if the command fails.

    ``fresh_process``: a new interpreter whose path holds the installed lgesynth package only (not the
    repository), one thread. Otherwise MONAI's own ``__main__`` in this process with this ``sys.argv``:
    the same fire parsing and code, without the 15-30 s of imports a new process costs on a loaded machine.
    """
    import runpy

    if fresh_process:
        import lgesynth

        package_dir = str(Path(lgesynth.__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": package_dir, "OMP_NUM_THREADS": "1", "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
        done = subprocess.run([sys.executable, "-m", "monai.bundle", *map(str, args)], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return
    argv, here = sys.argv, os.getcwd()
    sys.argv = ["monai.bundle", *map(str, args)]
    os.chdir(cwd)
    try:
        runpy.run_module("monai.bundle", run_name="__main__")
    finally:
        sys.argv = argv
        os.chdir(here)


# A pipeline preset that runs every bundle stage in seconds on conftest stacks (tests/test_pipeline.py,
# tests/test_mlflow_tags.py); the scar_seg experiment is added by the test that needs it.
TINY_PRESET = {
    "name": "tiny",
    "threads": 1,
    "inr_fit": {"train": {"grid": {"shape": [24, 24, 6]}, "spec": {"hidden_features": 32, "hidden_layers": 2},
                          "fit#max_steps": 30, "fit#points": 1024, "fit#batch_size": 4, "fit#check_every": 10,
                          "init#outer_steps": 2, "init#inner_steps": 2, "chunk_subjects": 4}},
    "inr2vec": {"train": {"steps": 8, "epoch_length": 4, "subjects_per_batch": 4, "points": 512, "bf16": False,
                          "encoder_args": {"width": 32, "depth": 1, "pool": "maxmean"},
                          "decoder_args": {"hidden": 32, "layers": 2, "num_freqs": 3}, "latent_dim": 16}},
    "edm_synth": {"train": {"steps": 10, "epoch_length": 5, "batch_size": 4,
                            "denoiser_args": {"hidden": 32, "blocks": 1, "emb_dim": 16, "noise_channels": 8,
                                              "noise_embedding": "positional", "dropout": 0.0}},
                  "inference": {"num_samples": 3, "num_steps": 4}},
}


# ---- one tiny pipeline run, shared by test_mlflow_tags (its MLflow runs) and test_pack (its edm_synth bundle)
# TINY_PRESET with a wider inr2vec decoder (64 x 3, ~72 kB): test_pack's large_files.yml check needs the packed
# decoder to outweigh the denoiser (~21 kB), which TINY_PRESET's own decoder (~17 kB) does not, and the
# downloaded bundle must generate cases that are kept (TINY_PRESET's 32 x 2 decoder, after its 8 steps, decodes
# labels with scar but no healthy myocardium, which inference rejects; this one's decodes were all kept).
TINY_PIPELINE_PRESET = {**TINY_PRESET, "inr2vec": {"train": {
    **TINY_PRESET["inr2vec"]["train"], "decoder_args": {"hidden": 64, "layers": 3, "num_freqs": 3}}}}


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory) -> dict:
    """``TINY_PIPELINE_PRESET`` through the stages data, inr_fit, inr2vec and edm_synth (``lgesynth.pipeline.Pipeline``,
    the code of ``lgesynth pipeline``), once per session, on 7 conftest cases (5 training, 2 test) in a
    folder called ``data`` (the runs' ``dataset`` tag). About 10 s on one core.

    Returns ``root``, ``datalist``, ``preset`` (the YAML the run used), ``out`` (the pipeline's ``--out``),
    ``edm_synth`` (``out/edm_synth``: the complete bundle folder the run leaves, configs/ docs/ models/, for
    ``lgesynth pack``) and ``uri`` (its MLflow store). Consumers treat ``out`` as read-only, except that
    test_mlflow_tags adds the scar_seg stage to it (replacing ``out/synthetic`` by conftest stacks first).
    """
    import yaml

    from lgesynth.data.datalist import load_datalist
    from lgesynth.pipeline import Pipeline

    root = tmp_path_factory.mktemp("pipeline")
    real = write_tiny_datalist(root / "data", n_cases=7)
    entries = load_datalist(real)
    real = write_datalist(real, entries[:5], entries[5:])  # 2 test cases (test_mlflow_tags' experiment compares on them)
    preset = root / "tiny.yaml"
    preset.write_text(yaml.safe_dump(TINY_PIPELINE_PRESET))
    out = root / "run"
    with torch_threads(1):
        Pipeline(out, preset, data=real, stages=("data", "inr_fit", "inr2vec", "edm_synth")).run()
    return {"root": root, "datalist": real, "preset": preset, "out": out, "edm_synth": out / "edm_synth",
            "uri": f"sqlite:///{out / 'mlruns.db'}"}


# ---- killing a bundle's training mid-run (test_seg_experiment, test_seg_cascade)
class TrainingKilled(KeyboardInterrupt):
    """Ctrl-C (or a kill) in the middle of an arm's training."""


def kill_next_training_at(monkeypatch, iteration: int, skip: int = 0) -> None:
    """The next MONAI ``SupervisedTrainer`` to run after ``skip`` others (train.yaml's ``train#trainer``, as
    ``monai.bundle.run`` builds it) raises :class:`TrainingKilled` once its global ``iteration`` is done; the
    others are left alone."""
    from ignite.engine import Events
    from monai.engines import SupervisedTrainer

    real_run, armed = SupervisedTrainer.run, [True] * (skip + 1)  # armed: until the chosen trainer got the handler

    def kill(engine):
        raise TrainingKilled(f"killed after iteration {engine.state.iteration}")

    def run(self, *args, **kwargs):
        if armed:
            armed.pop()
            if armed:
                return real_run(self, *args, **kwargs)
            self.add_event_handler(Events.ITERATION_COMPLETED(once=iteration), kill)  # after the config's handlers
        return real_run(self, *args, **kwargs)

    monkeypatch.setattr(SupervisedTrainer, "run", run)
