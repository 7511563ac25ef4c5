"""The edm_synth bundle end to end on a tiny pipeline, and the quality report's checks on hand-made data.

Pipeline (conftest's session fixtures ``tiny_inr2vec``, ``tiny_edm_generator``, shared with test_pack): 7 conftest cases (6 training, 1 test) on a 24 x 24 x 6 canonical grid ->
SIRENs of 32 x 2 (60 steps) -> a tiny inr2vec (30 steps) -> ``encode`` -> a tiny EDM trained 20 of
40 iterations (tracked in MLflow), then the same run again for all 40 (it resumes). Quality does not
matter here; the files, their keys, determinism and self-containment do. Inference runs from a copy of
the bundle folder alone, as a user would run it. The conditioning test uses a toy latent set where
the burden is written into one latent coordinate, in latent space (no decoder). The scale tests use a
toy generator (``scaled``): 48 subjects of 8-d latents in two clusters, one cluster at each of two voxel
sizes, decoded by a tiny 8-d inr2vec decoder whose myocardium logit is set to +10 everywhere, so every
decoded volume is all myocardium and its myocardial volume is its physical box volume. The torchrun
(gloo) run is ``slow``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
import pytest
import torch

from conftest import EDM_CONFIGS, GRID, INR2VEC_CONFIGS, TINY_EDM, run_bundle as _run, torch_threads
from lgesynth.data.validate import check_datalist
from lgesynth.errors import DataError
from lgesynth.synth.features import plausibility_problems
from lgesynth.synth.report import CohortStats, quality_report

CONFIGS = EDM_CONFIGS
REPORT_KEYS = {"plausible_fraction", "copies_flagged", "features", "diversity", "memorisation", "num_samples", "rejected"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def upstream(tiny_inr2vec):
    return tiny_inr2vec


@pytest.fixture(scope="module")
def trained(tiny_edm_generator):
    return tiny_edm_generator


# ------------------------------------------------------------------------------------------ training
def test_training_resumes_and_exports_a_self_contained_generator(trained):
    first, log, out, models = trained["first"], trained["log"], trained["out"], trained["models"]
    assert [e["iteration"] for e in first] == [10, 20]
    assert [e["iteration"] for e in log] == [10, 20, 30, 40]  # continued at iteration 21, not from scratch
    assert log[-1]["val_loss"] < log[0]["val_loss"]  # EMA loss at fixed sigmas and noise
    assert all(0 <= e["val_copy_fraction"] <= 1 and e["val_nn_ratio"] > 0 for e in log)  # memorisation, every validation
    ckpt = torch.load(out / "checkpoint_epoch=4.pt", weights_only=True)
    assert ckpt["trainer"]["iteration"] == 40 and {"denoiser", "ema", "optimizer", "lr_scheduler"} <= set(ckpt)
    record = json.loads((models / "generator.json").read_text())
    assert record["grid"]["shape"] == list(GRID) and record["condition"] == "burden" and record["sigma_data"] > 0
    assert np.asarray(record["reference_affine"]).shape == (4, 4)
    assert record["scale_dims"] == 3 and record["denoiser"]["dim"] == 512 + 3  # latents.json records the spacings
    assert record["modelled_dims"] == "per dimension" and record["memorisation_stop"]["max_copy_fraction"] == 0.05
    assert record["source_slice_spacing_mm"] == 8.0 and record["latents"]["dim"] == 512  # conftest stacks: 8 mm slices
    assert record["latents"]["ids"] == [f"p{i:03d}" for i in range(1, 7)]  # the training section only: p007 is test
    from safetensors.torch import load_file

    decoder = load_file(str(models / "decoder.safetensors"))
    assert decoder and not any("encoder" in k for k in decoder)  # only the decoder travels with the bundle
    ema = load_file(str(models / "edm_ema.safetensors"))
    assert torch.equal(ema["output.weight"], ckpt["ema"]["module.model.output.weight"])  # exported the EMA weights
    ref = CohortStats.load(models)
    assert ref.ids == record["latents"]["ids"] and ref.latents.shape == (6, 512)


def test_export_measures_the_training_subjects_own_volumes(trained):
    """source.json: the training subjects re-made from their source files on the canonical grid, each at its own
    voxel size, with their mid slices; the same numbers as measuring the files directly."""
    from lgesynth.data.canonical_case import to_canonical
    from lgesynth.data.datalist import load_datalist
    from lgesynth.io import spacing_from_affine
    from lgesynth.synth.features import volume_features
    from lgesynth.viz import mid_slice

    models = trained["models"]
    record = json.loads((models / "generator.json").read_text())
    source = CohortStats.load(models, "source")
    assert source.ids == record["latents"]["ids"] and record["source"] == {"count": 6, "plausible_fraction": 1.0}
    assert set(source.slices) == set(source.ids) and all(lab.shape == GRID[:2] for _, lab in source.slices.values())
    entry = next(e for e in load_datalist(trained["datalist"], "training") if e["id"] == "p002")
    case = to_canonical(entry["image"], entry["label"], record["grid"])
    want = volume_features(case.image, case.label, spacing_from_affine(case.affine))
    got = source.features[source.ids.index("p002")]
    assert got == pytest.approx(want, nan_ok=True) and got["myocardial_volume_ml"] == pytest.approx(512 * 1.5 * 1.5 * 8 / 1000, rel=0.1)
    np.testing.assert_array_equal(source.slices["p002"][1], case.label[..., mid_slice(case.label)])


def test_training_is_tracked_in_mlflow(trained):
    import mlflow

    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{trained['out'] / 'mlruns.db'}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert len(runs) == 1
    run = runs[0]
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 20
    assert run.data.tags["bundle"] == "edm_synth" and run.data.params["condition"] == "burden"
    assert float(run.data.params["sigma_data"]) > 0 and "val_loss" in run.data.metrics


def test_latents_of_another_encoder_are_refused(trained, tmp_path):
    from lgesynth.edm import EMA, EDMPrecond, LatentDenoiser
    from lgesynth.engines.edm import EdmData
    from lgesynth.engines.edm_export import GeneratorExporter
    from lgesynth.inr2vec.latents import load_latents, save_latents

    lat = load_latents(trained["inr2vec"])
    lat.encoder_sha256 = "0" * 64
    save_latents(tmp_path / "lat", lat)
    data = EdmData(str(tmp_path / "lat"))
    ema = EMA(EDMPrecond(LatentDenoiser(dim=512, hidden=16, blocks=1)), decay=0.9)
    with pytest.raises(DataError, match="another encoder") as err:
        GeneratorExporter(str(tmp_path / "m"), data, ema, str(trained["inr2vec"]))
    assert str(tmp_path / "lat" / "latents.json") in str(err.value)


# ------------------------------------------------------------------------------------------ inference
@pytest.fixture(scope="module")
def cohort(trained):
    """Inference from a copy of the bundle folder alone, run as a user would (a separate process)."""
    where = trained["root"] / "elsewhere"
    bundle = where / "bundles" / "edm_synth"
    shutil.copytree(CONFIGS, bundle / "configs")
    shutil.copytree(trained["models"], bundle / "models")
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "bundles/edm_synth/configs/inference.yaml",
           "--num_samples", "6", "--output_dir", "out", "--num_threads", "1", "--batch_size", "4"]
    done = subprocess.run(cmd, cwd=where, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return where / "out"


def test_inference_writes_a_cohort_from_the_bundle_alone(cohort):
    doc = json.loads((cohort / "datalist.json").read_text())
    assert len(doc["training"]) + len(doc["rejected"]) == 6 and doc["training"], doc["rejected"]
    assert all(e["synthetic"] for e in doc["training"]) and all("reason" in e for e in doc["rejected"])
    assert sorted(e["id"] for e in doc["training"] + doc["rejected"]) == [f"syn_{i:04d}" for i in range(1, 7)]
    assert check_datalist(cohort / "datalist.json") == []
    import nibabel as nib

    entry = doc["training"][0]
    img = nib.load(str(cohort / entry["image"]))
    extent_z = entry["canonical_spacing_mm"][2] * GRID[2]  # slices at the source's 8 mm over the sample's z extent
    assert img.shape == (*GRID[:2], round(extent_z / 8.0)) and np.allclose(img.header.get_zooms(), entry["spacing_mm"])
    assert (cohort / "montage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (cohort / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((cohort / "report.json").read_text())
    assert REPORT_KEYS <= set(report) and report["num_samples"] == 6 and report["rejected"] == len(doc["rejected"])
    assert {"myocardial_volume_ml", "wall_thickness_mm", "scar_burden"} <= set(report["features"])
    assert {"ks_statistic", "ks_pvalue"} <= set(report["features"]["myocardial_volume_ml"])
    assert {"latent_distance", "dice_distance"} <= set(report["diversity"])
    assert report["source"]["available"] and report["num_source"] == 6
    assert report["features"]["myocardial_volume_ml"]["sd_ratio"] is None  # the conftest rings all have one size
    row = report["features"]["scar_burden"]                                 # half of them a scar
    assert row["sd_ratio"] == pytest.approx(row["sample_std"] / row["source_std"])
    assert row["mean_shift_sd"] == pytest.approx((row["sample_mean"] - row["source_mean"]) / row["source_std"])
    assert 0 <= row["ks_source_statistic"] <= 1 and row["ks_source_pvalue"] is not None
    assert (cohort / "nearest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and report["nearest"]["file"] == "nearest.png"
    named = {r["id"]: r["nn_image"] for r in report["memorisation"]["per_sample"]}
    assert len(report["nearest"]["pairs"]) == 6 and all(p["training"] == named[p["sample"]] for p in report["nearest"]["pairs"])


def test_same_seed_same_samples(trained, tmp_path):
    for name in ("a", "b"):
        _run(CONFIGS, "inference.yaml", models_dir=str(trained["models"]), output_dir=str(tmp_path / name),
             num_samples=2, seed=3, num_threads=1)
    for sub in ("imagesTr", "labelsTr"):
        a, b = (tmp_path / n / sub / "syn_0001.nii.gz" for n in "ab")
        assert a.read_bytes() == b.read_bytes()
    _run(CONFIGS, "inference.yaml", models_dir=str(trained["models"]), output_dir=str(tmp_path / "c"),
         num_samples=2, seed=4, num_threads=1)
    assert (tmp_path / "c/imagesTr/syn_0001.nii.gz").read_bytes() != (tmp_path / "a/imagesTr/syn_0001.nii.gz").read_bytes()


def test_default_generator_draws_each_samples_burden_from_the_training_subjects(trained):
    from lgesynth.synth import Generator

    gen = Generator(trained["models"])
    latents = json.loads((trained["inr2vec"] / "latents.json").read_text())
    burdens = sorted(s["scar_burden"] for s in latents["subjects"] if s["section"] == "training")
    assert len(set(burdens)) > 1  # the conftest cohort has scarred and scar-free cases
    cond, asked = gen.conditions(60, seed=0)
    assert cond.shape == (60, 1) and [a["requested_scar_burden"] for a in asked] == pytest.approx(cond[:, 0].tolist())
    drawn = sorted(set(np.round(cond[:, 0].numpy(), 6)))
    assert set(drawn) <= set(np.round(np.float32(burdens), 6)) and len(drawn) > 1  # resampled, not one value
    ranged, _ = gen.conditions(40, scar_burden=[0.1, 0.3], seed=0)
    assert float(ranged.min()) >= 0.1 and float(ranged.max()) <= 0.3
    with pytest.raises(DataError, match="generator.json: trained with condition: burden; it cannot take a pattern"):
        gen.conditions(2, pattern="ischemic")


def test_unconditional_generator_refuses_a_condition(upstream, tmp_path):
    from lgesynth.synth import Generator

    models = tmp_path / "models"
    with torch_threads(1):
        _run(CONFIGS, "train.yaml", inr2vec_dir=str(upstream["inr2vec"]), output_dir=str(tmp_path), models_dir=str(models),
             condition="none", **{**TINY_EDM, "steps": 10})
    gen = Generator(models)
    assert gen.record["condition"] == "none" and gen.cond_dim == 0 and gen.conditions(3)[0] is None
    with pytest.raises(DataError, match="generator.json: this generator is unconditional"):
        gen.conditions(2, scar_burden=[0.1, 0.3])


def test_evaluate_reports_a_cohort_and_logs_the_figures(trained, cohort, tmp_path):
    import mlflow

    _run(CONFIGS, "evaluate.yaml", models_dir=str(trained["models"]), cohort=str(cohort / "datalist.json"),
         output_dir=str(tmp_path), reference_datalist=str(trained["datalist"]), num_threads=1, tracking="mlflow")
    report = json.loads((tmp_path / "report.json").read_text())
    assert REPORT_KEYS - {"rejected"} <= set(report) and report["num_reference"] == 6
    assert report["reference_plausible_fraction"] == 1.0  # the conftest rings are plausible
    assert report["features"]["contrast_blood_remote"]["reference_mean"] > 0.3  # blood 600 vs myocardium 150
    for name in ("scar_burden", "contrast_blood_remote"):  # the datalist's training pairs are the source
        row = report["features"][name]
        assert row["reference_mean"] == pytest.approx(row["source_mean"]) and row["reference_shift_sd"] == pytest.approx(0.0, abs=1e-9)
    assert report["reference"]["count"] == 6 and "real pairs" in report["reference"]["description"]
    assert report["nearest"]["file"] == "nearest.png" and (tmp_path / "nearest.png").is_file()
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert len(runs) == 1 and {"plausible_fraction", "shift_sd_scar_burden", "sd_ratio_contrast_blood_remote",
                               "ks_source_scar_burden"} <= set(runs[0].data.metrics)
    assert {"report.png", "report.json", "nearest.png"} <= {a.path for a in client.list_artifacts(runs[0].info.run_id)}


def test_export_without_readable_source_files_still_works_and_the_report_says_so(trained, tmp_path, caplog):
    from lgesynth.edm import EMA, EDMPrecond, LatentDenoiser
    from lgesynth.engines.edm import EdmData
    from lgesynth.engines.edm_export import GeneratorExporter
    from lgesynth.synth.report import CohortEvaluator

    inr2vec = tmp_path / "inr2vec"
    shutil.copytree(trained["inr2vec"], inr2vec)
    model = json.loads((inr2vec / "inr2vec_model.json").read_text())
    (inr2vec / "inr2vec_model.json").write_text(json.dumps({**model, "bank": {**model["bank"], "dir": str(tmp_path / "gone")}}))
    models = tmp_path / "models"
    shutil.copytree(trained["models"], models)  # holds a source.json of the earlier export: it must not survive
    data = EdmData(str(inr2vec))
    torch.manual_seed(0)
    ema = EMA(EDMPrecond(LatentDenoiser(dim=data.dim, hidden=16, blocks=1), data.sigma_data), decay=0.9)
    with caplog.at_level("WARNING", logger="lgesynth.edm"):
        GeneratorExporter(str(models), data, ema, str(inr2vec), sampler={"num_steps": 4}).export(0)
    assert "source cohort not measured" in caplog.text and str(tmp_path / "gone") in caplog.text
    record = json.loads((models / "generator.json").read_text())
    assert str(tmp_path / "gone") in record["source"]["missing"] and not (models / "source.json").exists()
    entries, report = _synthesize(models, tmp_path / "c", num_samples=3)
    assert report["source"]["available"] is False and str(tmp_path / "gone") in report["source"]["reason"]
    assert report["features"]["myocardial_volume_ml"]["source_mean"] is None and report["num_samples"] == 3
    assert report["nearest"]["file"] is None and not (tmp_path / "c" / "nearest.png").exists()
    evaluator = CohortEvaluator(str(tmp_path / "c" / "datalist.json"), str(models), str(tmp_path / "e"), progress=False)
    evaluator.run_all()
    assert json.loads((tmp_path / "e" / "report.json").read_text())["source"]["available"] is False


# ------------------------------------------------------------------------------------------ scale: each sample its own size
SIZE_A, SIZE_B = np.array([1.5, 1.5, 6.0]), np.array([2.4, 2.4, 9.0])
SOURCE_SLICE_MM = 10.0


@pytest.fixture(scope="module")
def scaled(upstream):
    """The toy generator of the module doc: ``models`` (exported), ``spacing`` (48, 3) of its subjects."""
    from lgesynth.edm import EMA, EDMLoss, EDMPrecond, LatentDenoiser
    from lgesynth.engines.edm import EdmData, EdmTrainer
    from lgesynth.engines.edm_export import GeneratorExporter
    from lgesynth.inr2vec.latents import Latents, save_latents

    root = upstream["root"] / "scaled"
    threads = torch_threads(1)
    threads.__enter__()
    _run(INR2VEC_CONFIGS, "train.yaml", bank_dir=str(upstream["root"] / "bank"), output_dir=str(root / "inr2vec"),
         steps=4, epoch_length=2, val_fraction=0.0, latent_dim=8, encoder_args={"width": 16, "depth": 1, "pool": "maxmean"},
         decoder_args={"kind": "fourier", "hidden": 16, "layers": 2, "num_freqs": 2}, subjects_per_batch=4, points=256,
         lr=0.01, warmup_steps=1, num_threads=1, log_every=100)
    rng = np.random.default_rng(0)
    centres = rng.normal(0.0, 1.0, (2, 8))
    n = 48
    w = np.stack([centres[i % 2] + rng.normal(0.0, 0.1, 8) for i in range(n)])
    spacing = np.stack([(SIZE_B if i % 2 else SIZE_A) * (1 + rng.normal(0.0, 0.02, 3)) for i in range(n)])
    subjects = [{"id": f"t{i:02d}", "section": "training", "canonical_spacing_mm": spacing[i].tolist(),
                 "source_spacing_mm": [1.2, 1.2, SOURCE_SLICE_MM + (i % 3 - 1)]} for i in range(n)]
    save_latents(root / "latents", Latents(torch.tensor(w, dtype=torch.float32), subjects))
    data = EdmData(str(root / "latents"))
    torch.manual_seed(0)
    net = EDMPrecond(LatentDenoiser(dim=data.dim, hidden=64, blocks=2, emb_dim=32, noise_channels=16), data.sigma_data)
    ema = EMA(net, halflife_kimg=0.5, batch_size=32)
    EdmTrainer(data, net, ema, torch.optim.Adam(net.parameters(), lr=3e-3), EDMLoss(sigma_data=data.sigma_data),
               steps=400, epoch_length=100, batch_size=32).run_all()
    exporter = GeneratorExporter(str(root / "models"), data, ema, str(root / "inr2vec"), sampler={"num_steps": 16})
    head = exporter.inr2vec.decoder.head
    with torch.no_grad():  # myocardium everywhere, no scar
        head.weight[1:] = 0.0
        head.bias[1], head.bias[2] = 10.0, -10.0
    exporter.export(0)
    threads.__exit__(None, None, None)
    return {"root": root, "models": root / "models", "spacing": spacing, "data": data}


def _near_a_training_size(spacing_mm: np.ndarray, tol: float = 0.2) -> np.ndarray:
    """Which voxel sizes (n, 3) lie within ``tol`` (relative, every axis) of SIZE_A (1), SIZE_B (2) or neither (0)."""
    near_a = np.abs(spacing_mm / SIZE_A - 1).max(1) < tol
    near_b = np.abs(spacing_mm / SIZE_B - 1).max(1) < tol
    return np.where(near_a, 1, np.where(near_b, 2, 0))


def _synthesize(models: Path, out: Path, **kwargs) -> tuple[list[dict], dict]:
    from lgesynth.synth import CohortSynthesizer

    CohortSynthesizer(str(models), str(out), num_samples=kwargs.pop("num_samples", 16), progress=False, **kwargs).run_all()
    doc = json.loads((out / "datalist.json").read_text())
    return doc["training"] + doc["rejected"], json.loads((out / "report.json").read_text())


def test_generator_models_the_scale_and_records_it(scaled):
    record = json.loads((scaled["models"] / "generator.json").read_text())
    assert record["scale_dims"] == 3 and record["denoiser"]["dim"] == 8 + 3 and record["latents"]["dim"] == 8
    assert record["source_slice_spacing_mm"] == SOURCE_SLICE_MM  # median of 9, 10, 11 mm
    assert np.allclose(record["canonical_spacing_mm"]["min"], scaled["spacing"].min(0))
    data = scaled["data"]
    assert torch.allclose(data.x[:, 8:], torch.from_numpy(np.log(scaled["spacing"])).float())
    assert data.standardizer.dim == 11 and float(data.z[:, 8:].std(0).min()) > 0.9  # per-dimension, scale included


def test_reference_stats_measure_each_subject_at_its_own_voxel_size(scaled):
    ref = CohortStats.load(scaled["models"])
    volume = np.asarray([f["myocardial_volume_ml"] for f in ref.features])
    box = np.prod(GRID) * np.prod(scaled["spacing"], axis=1) / 1000.0  # all myocardium: the box volume
    assert np.allclose(volume, box, rtol=1e-6)
    assert volume[1::2].mean() / volume[0::2].mean() > 3.5  # SIZE_B's voxel is 3.84 x SIZE_A's


def test_samples_get_their_own_size_and_are_written_with_their_own_affine(scaled, tmp_path):
    import nibabel as nib

    from lgesynth.inr2vec.latents import load_latents

    entries, report = _synthesize(scaled["models"], tmp_path / "c", num_samples=24, slices="canonical")
    canonical = np.asarray([e["canonical_spacing_mm"] for e in entries])
    group = _near_a_training_size(canonical)
    assert group.all(), canonical[group == 0]                        # near the training sizes, not in between
    assert (group == 1).sum() >= 3 and (group == 2).sum() >= 3, group  # and both of them
    affines = []
    for e, c in zip(entries, canonical):
        img = nib.load(str(tmp_path / "c" / e["image"]))
        assert img.shape == GRID and np.allclose(e["spacing_mm"], c, atol=1e-3)
        assert np.allclose(img.affine[:3, :3], np.diag(c), atol=1e-3)
        assert np.allclose(img.affine[:3, 3], -c * (np.asarray(GRID) - 1) / 2, atol=1e-3)  # centred at the origin
        affines.append(img.affine)
    assert len({np.round(a, 2).tobytes() for a in affines}) == len(entries)
    sizes = {s["id"]: s["canonical_spacing_mm"] for s in load_latents(tmp_path / "c").subjects}
    assert all(np.allclose(sizes[e["id"]], e["canonical_spacing_mm"]) for e in entries)
    volume = report["features"]["myocardial_volume_ml"]  # measured at each sample's own spacing
    box = np.prod(GRID) * np.prod(canonical, axis=1) / 1000.0
    assert volume["sample_mean"] == pytest.approx(box.mean(), rel=1e-3) and volume["sample_std"] > 0.3 * box.mean()
    summary = report["canonical_spacing_mm"]
    assert np.allclose(summary["samples"]["min"], canonical.min(0), atol=1e-3) and summary["training"]["max"][2] > 9.0


def test_a_generator_whose_scale_dims_do_not_fit_is_refused(scaled, tmp_path):
    from lgesynth.synth import Generator

    models = tmp_path / "models"
    shutil.copytree(scaled["models"], models)
    record = json.loads((models / "generator.json").read_text())
    (models / "generator.json").write_text(json.dumps({**record, "scale_dims": 0}))
    with pytest.raises(DataError, match="generator.json: scale_dims 0 and denoiser dim 11 do not fit"):
        Generator(models)


def test_samples_default_to_the_source_slice_spacing(scaled, tmp_path):
    import nibabel as nib

    entries, report = _synthesize(scaled["models"], tmp_path / "s", num_samples=8)
    for e in entries:
        c, s = np.asarray(e["canonical_spacing_mm"]), np.asarray(e["spacing_mm"])
        img = nib.load(str(tmp_path / "s" / e["image"]))
        extent = c * np.asarray(GRID)
        assert img.shape == (*GRID[:2], round(extent[2] / SOURCE_SLICE_MM)) and np.allclose(s[:2], c[:2], atol=1e-3)
        assert np.isclose(s[2] * img.shape[2], extent[2], rtol=1e-3) and abs(s[2] - SOURCE_SLICE_MM) < SOURCE_SLICE_MM / 2
    box = np.prod(GRID) * np.prod([e["canonical_spacing_mm"] for e in entries], axis=1) / 1000.0
    assert report["features"]["myocardial_volume_ml"]["sample_mean"] == pytest.approx(box.mean(), rel=1e-3)
    # each slice is the same sample's canonical plane nearest its depth; unsnapped slices are decoded between planes
    canonical, _ = _synthesize(scaled["models"], tmp_path / "c", num_samples=8, slices="canonical")
    between, _ = _synthesize(scaled["models"], tmp_path / "b", num_samples=8, snap_slices=False)
    differs = []
    by_id = lambda cohort: sorted(cohort, key=lambda e: e["id"])  # noqa: E731  (training + rejected -> sample order)
    for e, c, b in zip(by_id(entries), by_id(canonical), by_id(between)):
        img = np.asarray(nib.load(str(tmp_path / "s" / e["image"])).dataobj)
        planes = np.asarray(nib.load(str(tmp_path / "c" / c["image"])).dataobj)
        nearest = np.floor((np.arange(img.shape[2]) + 0.5) * GRID[2] / img.shape[2]).astype(int)
        np.testing.assert_allclose(img, planes[..., nearest], atol=1e-4)
        differs.append(np.abs(np.asarray(nib.load(str(tmp_path / "b" / b["image"])).dataobj) - img).max() > 1e-2)
    assert any(differs)


def test_spacing_mm_decodes_each_sample_box_at_that_spacing(scaled, tmp_path):
    import nibabel as nib

    entries, _ = _synthesize(scaled["models"], tmp_path / "m", num_samples=6, spacing_mm=[2.0, 2.0, 5.0])
    shapes = set()
    for e in entries:
        extent = np.asarray(e["canonical_spacing_mm"]) * np.asarray(GRID)
        img = nib.load(str(tmp_path / "m" / e["image"]))
        assert np.all(np.abs(np.asarray(img.shape) - extent / (2.0, 2.0, 5.0)) <= 0.5 + 1e-3)  # round(extent / spacing)
        assert np.allclose(np.asarray(e["spacing_mm"]) * np.asarray(img.shape), extent, rtol=1e-3)
        shapes.add(img.shape)
    assert len(shapes) > 1  # two sizes, two grids


def test_sample_grid_keeps_the_box_and_the_coordinate_frame():
    from lgesynth.synth.generator import sample_grid

    record = {"grid": {"shape": [24, 24, 6]}, "z_extent": 0.5}
    size = np.array([2.0, 2.0, 6.0])
    for kwargs, want in (({}, (24, 24, 6)), ({"slice_spacing_mm": 10.0}, (24, 24, 4)),
                         ({"spacing_mm": 1.0}, (48, 48, 36))):
        shape, affine, coords = sample_grid(record, size, **kwargs)
        assert shape == want and coords.shape == (np.prod(want), 3)
        assert np.allclose(np.diag(affine)[:3] * np.asarray(shape), size * np.asarray([24, 24, 6]))  # same box
        assert np.allclose(affine[:3, 3] + np.diag(affine)[:3] * (np.asarray(shape) - 1) / 2, 0.0)  # centred
        z = coords[:, 2].reshape(shape)[0, 0]
        assert float(z[0]) == pytest.approx(-0.5 * (1 - 1 / shape[2])) and float(z[-1]) == pytest.approx(0.5 * (1 - 1 / shape[2]))
    with pytest.raises(ValueError, match="slice_spacing_mm"):
        sample_grid(record, size, slice_spacing_mm=0.0)
    # snapped: every slice at the canonical plane nearest its own depth; x, y and the affine unchanged
    planes = 0.5 * ((2 * np.arange(6) + 1) / 6 - 1)
    for kwargs in ({"slice_spacing_mm": 10.0}, {"slice_spacing_mm": 3.0}, {"spacing_mm": 1.0}, {}):
        shape, affine, exact = sample_grid(record, size, **kwargs)
        shape_s, affine_s, snapped = sample_grid(record, size, snap_slices=True, **kwargs)
        assert shape_s == shape and np.allclose(affine_s, affine) and torch.equal(snapped[:, :2], exact[:, :2])
        z, zs = exact[:, 2].numpy(), snapped[:, 2].numpy()
        nearest = planes[np.abs(z[:, None] - planes[None]).argmin(1)]
        assert np.allclose(zs, nearest, atol=1e-6)
    _, _, snapped = sample_grid(record, size, slice_spacing_mm=12.0, snap_slices=True)  # 3 slices over 6 planes: ties
    assert np.allclose(np.unique(snapped[:, 2].numpy()), planes[[1, 3, 5]], atol=1e-6)  # the deeper plane of each tie
    assert torch.allclose(sample_grid(record, size, snap_slices=True)[2], sample_grid(record, size)[2], atol=1e-6)  # canonical: as is
    from lgesynth.synth.generate import slice_spacing_of

    assert slice_spacing_of({"source_slice_spacing_mm": 8.0}, "source") == 8.0 and slice_spacing_of({}, "source") is None
    assert slice_spacing_of({}, "canonical") is None and slice_spacing_of({}, 6) == 6.0
    with pytest.raises(ValueError, match="slices must be 'source', 'canonical'"):
        slice_spacing_of({}, "thick")


# ------------------------------------------------------------------------------------------ checks on hand-made masks
def _rings(shape=(40, 40, 6), radii=((14, 9), (13, 8), (12, 7), (10, 5))) -> np.ndarray:
    """Rings on slices 1..4 tapering towards slice 4 (the apex at the high index; the base is slice 1)."""
    x, y = np.meshgrid(np.arange(shape[0]) - shape[0] / 2 + 0.5, np.arange(shape[1]) - shape[1] / 2 + 0.5, indexing="ij")
    r = np.hypot(x, y)
    myo = np.zeros(shape, dtype=bool)
    for k, (outer, inner) in zip(range(1, 5), radii):
        myo[..., k] = (r <= outer) & (r >= inner)
    return myo


def _open(myo: np.ndarray, k: int) -> np.ndarray:
    """Cut a gap through the ring of slice ``k`` (a C shape)."""
    myo = myo.copy()
    myo[myo.shape[0] // 2:, myo.shape[1] // 2 - 1: myo.shape[1] // 2 + 2, k] = False
    return myo


def test_plausibility_passes_rings_and_fails_broken_anatomy():
    myo = _rings()
    assert plausibility_problems(myo) == []
    assert plausibility_problems(_open(myo, 1)) == []                        # open ring at the basal slice: allowed
    assert any("slice 2: myocardium encloses no cavity" in p for p in plausibility_problems(_open(myo, 2)))
    two = myo.copy()
    two[1:6, 1:6, 3] = True                                                  # a detached blob (10 % of the ring)
    assert any("slice 3: myocardium in 2 pieces" in p for p in plausibility_problems(two))
    speck = myo.copy()
    speck[1, 1, 3] = True                                                    # one stray voxel: decoding noise
    assert plausibility_problems(speck) == []
    scar = np.zeros_like(myo)
    scar[1:3, 1:3, 2] = True                                                 # scar outside the myocardium
    assert any("scar voxels outside the myocardium" in p for p in plausibility_problems(myo, scar))
    assert plausibility_problems(myo, myo & (np.arange(40)[:, None, None] > 30)) == []
    # a flipped stack (base at the high index) moves the allowance with the anatomy
    flipped = myo[..., ::-1]
    assert plausibility_problems(_open(flipped, 4)) == [] and plausibility_problems(_open(flipped, 3)) != []


def test_plausibility_skips_partial_volume_tips_and_allows_a_cap_one_wall_thick():
    """A slice grazing the apex (a few voxels, here in 2 pieces) is not checked; the apex may be closed on
    every slice within one wall thickness (5 mm here) of the most apical one, and no further."""
    myo = _rings(shape=(40, 40, 7))
    tip = myo.copy()
    tip[19:21, 10:12, 5] = tip[19:21, 28:30, 5] = True                      # 8 voxels in 2 pieces beyond the apex
    assert plausibility_problems(tip) == [] and plausibility_problems(tip, tip_fraction=0.0) != []
    middle = tip.copy()
    middle[..., 3] = False
    middle[19:21, 10:12, 3] = True                                          # the same few voxels mid-stack: checked
    assert any("slice 3" in p for p in plausibility_problems(middle))
    capped = myo.copy()
    capped[..., 3] = ndi.binary_fill_holes(myo[..., 3])                     # a closed cap on the 2nd apical slice
    capped[..., 4] = ndi.binary_fill_holes(myo[..., 4])
    assert plausibility_problems(capped, spacing_mm=(1.0, 1.0, 4.0)) == []  # 4 mm from the apex, wall 5 mm
    assert any("slice 3: myocardium encloses no cavity" in p for p in plausibility_problems(capped, spacing_mm=(1.0, 1.0, 8.0)))
    assert any("slice 3" in p for p in plausibility_problems(capped))       # no spacing: the apical slice alone


def _stats(masks: list[np.ndarray], latents: torch.Tensor, prefix: str) -> CohortStats:
    stats = CohortStats(masks[0].shape, latents=latents)
    for i, m in enumerate(masks):
        label = m.astype(np.uint8)
        stats.add(f"{prefix}{i}", np.where(m, 0.0, 1.0).astype(np.float32), label, (1.5, 1.5, 8.0))
    return stats


def test_memorisation_flags_a_copy_and_not_a_distinct_or_central_sample():
    """A copy sits on one training subject; a sample in the middle of the cohort (the training latents'
    mean) is near all of them, which the earlier absolute rule (NN distance below the 5th percentile of
    train-to-train) took for a copy in latent space and the relative rule does not."""
    radii = [((14 - d, 9 - d), (13 - d, 8 - d), (12 - d, 7 - d), (10 - d, 5 - d)) for d in range(0, 5)]
    train_masks = [np.roll(_rings(radii=r), 2 * i, axis=0) for i, r in enumerate(radii)]
    g = torch.Generator().manual_seed(0)
    train_lat = torch.randn(len(train_masks), 16, generator=g) * 3
    reference = _stats(train_masks, train_lat, "t")
    distinct = np.roll(_rings(radii=((15, 8), (14, 7), (13, 6), (11, 4))), -3, axis=1)
    central = _rings(radii=radii[2])  # the middle radii, not shifted like any training subject
    samples = _stats([train_masks[2], distinct, central],
                     torch.stack([train_lat[2], torch.randn(16, generator=g) * 3, train_lat.mean(0)]), "s")
    report = quality_report(samples, reference)
    mem = report["memorisation"]
    assert report["copies_flagged"] == 1 and mem["copies"] == ["s0"], mem
    row = mem["per_sample"][0]
    assert row["nn_latent"] == "t2" and row["nn_image_distance"] == 0.0 and row["nn_latent_ratio"] == 0.0
    assert mem["per_sample"][2]["nn_latent_ratio"] > 0.5 and mem["latent"]["flagged_absolute"] >= 2  # s0 and central
    assert report["plausible_fraction"] == 1.0 and report["diversity"]["dice_distance"]["min"] > 0


# ------------------------------------------------------------------------------------------ conditioning (toy)
def test_conditional_model_follows_the_requested_burden(tmp_path):
    """Toy latents: coordinate 0 = 4 * burden + noise, the rest noise; a burden-conditioned EDM asked for
    high burden must put coordinate 0 higher than when asked for low burden."""
    from lgesynth.edm import EMA, EDMLoss, EDMPrecond, LatentDenoiser, edm_sampler
    from lgesynth.engines.edm import EdmData, EdmTrainer
    from lgesynth.inr2vec.latents import Latents, save_latents

    rng = np.random.default_rng(0)
    n, dim = 96, 8
    burden = rng.uniform(0.0, 0.4, n)
    w = rng.normal(0.0, 0.3, (n, dim))
    w[:, 0] = 4 * burden + rng.normal(0.0, 0.05, n)
    subjects = [{"id": f"t{i:03d}", "section": "training", "scar_burden": float(b), "has_scar": bool(b > 0)} for i, b in enumerate(burden)]
    save_latents(tmp_path, Latents(torch.tensor(w, dtype=torch.float32), subjects))
    data = EdmData(str(tmp_path), condition="burden")
    assert data.cond_dim == 1
    torch.manual_seed(0)
    net = EDMPrecond(LatentDenoiser(dim=dim, hidden=64, blocks=2, cond_dim=1, emb_dim=32, noise_channels=16), data.sigma_data)
    ema = EMA(net, halflife_kimg=0.5, batch_size=32)
    loss = EDMLoss(sigma_data=data.sigma_data, p_uncond=0.1)
    EdmTrainer(data, net, ema, torch.optim.Adam(net.parameters(), lr=3e-3), loss, steps=400, epoch_length=100,
               batch_size=32).run_all()
    coord0 = {}
    for level in (0.05, 0.35):
        cond = torch.full((64, 1), level)
        z = edm_sampler(ema.module.eval(), (64, dim), num_steps=16, cond=cond, guidance=1.5,
                        generator=torch.Generator().manual_seed(1))
        coord0[level] = float(data.standardizer.destandardize(z)[:, 0].mean())
    assert coord0[0.35] - coord0[0.05] > 0.5, coord0  # 4 * 0.3 = 1.2 apart in the data


# ------------------------------------------------------------------------------------------ DDP
@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(upstream, tmp_path):
    out = tmp_path / "ddp"
    files = "['" + str(CONFIGS / "train.yaml") + "','" + str(CONFIGS / "multi_gpu_train.yaml") + "']"
    args = {**TINY_EDM, "steps": 20, "inr2vec_dir": str(upstream["inr2vec"]), "output_dir": str(out), "models_dir": str(out)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "monai.bundle", "run",
           "--config_file", files] + [x for k, v in args.items() for x in (f"--{k}", json.dumps(v) if isinstance(v, dict) else str(v))]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    log = json.loads((out / "train_log.json").read_text())
    assert [e["iteration"] for e in log] == [10, 20]
    assert (out / "model_final.pt").is_file() and (out / "generator.json").is_file()
