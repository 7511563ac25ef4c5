"""The inr2vec bundle end to end on a tiny bank: train (loss falls, a second run resumes at the saved
iteration, MLflow records it), encode (latents and their records), decode (NIfTI pairs that
``check_datalist`` accepts), evaluate (CSV / JSON keys, montage), refusal of a bank of another
architecture or init, and a torn latents pair.

The bank: 7 conftest cases (6 training, 1 test) on a 24 x 24 x 6 canonical grid, SIRENs of 32 x 2
fitted 60 steps by the inr_fit engine (quality does not matter). The runs go through
``monai.bundle.run`` in this process (``logging_file=False``). The torchrun (gloo) run is ``slow``.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import fit_tiny_bank, write_tiny_datalist
from lgesynth.data.validate import check_datalist
from lgesynth.errors import DataError
from lgesynth.inr.bank import InrBank, load_bank, save_bank, seed_init
from lgesynth.inr.siren import SirenSpec, init_params
from lgesynth.inr2vec.latents import load_latents, state_sha256

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "inr2vec" / "configs"
GRID = (24, 24, 6)
EPOCH = 5  # iterations per epoch
TINY = dict(latent_dim=512, encoder_args={"width": 32, "depth": 2, "pool": "maxmean"},
            decoder_args={"hidden": 64, "layers": 3, "num_freqs": 5}, epoch_length=EPOCH, subjects_per_batch=4,
            points=2048, lr=0.01, warmup_steps=2, val_interval=1, num_threads=1, log_every=100)


def _run(config: str, run_id: str | None = None, **override):
    from monai.bundle import run

    run(run_id, config_file=str(CONFIGS / config), logging_file=False, **override)


def _log(out: Path) -> list[dict]:
    return json.loads((out / "train_log.json").read_text())


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    root = tmp_path_factory.mktemp("inr2vec")
    datalist = write_tiny_datalist(root / "data", n_cases=7)
    fit_tiny_bank(datalist, root / "bank", GRID)
    return {"root": root, "datalist": datalist, "bank": root / "bank"}


@pytest.fixture(scope="module")
def trained(bank):
    """30 of 60 planned iterations (as if killed, tracked in MLflow), then the same run again for all 60."""
    out = bank["root"] / "train"
    common = dict(bank_dir=str(bank["bank"]), output_dir=str(out), **TINY)
    _run("train.yaml", steps=30, tracking="mlflow", **{"lr_scheduler#t_total": 60}, **common)
    first = _log(out)
    _run("train.yaml", steps=60, **common)
    return {**bank, "out": out, "first": first, "log": _log(out)}


def test_training_lowers_the_loss_and_resumes(trained):
    first, log, out = trained["first"], trained["log"], trained["out"]
    assert [e["iteration"] for e in first] == [EPOCH * k for k in range(1, 7)]
    assert first[-1]["loss"] < 0.7 * first[0]["loss"], first
    # the second run continued at epoch 7, iteration 31, rather than starting again
    assert [e["iteration"] for e in log] == [EPOCH * k for k in range(1, 13)]
    assert log[-1]["loss"] < first[-1]["loss"] and log[6]["lr"] < log[5]["lr"]
    assert {"val_psnr", "val_dice_myo", "val_dice_scar"} <= set(log[0])
    ckpt = torch.load(out / "checkpoint_epoch=12.pt", weights_only=True)
    assert ckpt["trainer"]["iteration"] == 60 and {"encoder", "decoder", "optimizer", "lr_scheduler"} <= set(ckpt)
    assert not (out / "checkpoint_epoch=6.pt").exists()  # only the latest is kept
    assert {"model_final.pt", "model_best.pt"} <= {p.name for p in out.iterdir()}
    record = json.loads((out / "inr2vec_model.json").read_text())
    # by subject, stratified: one scar (odd id) and one scar-free subject of the 6 training ones
    assert record["split"]["test"] == ["p007"] and sorted(int(i[-1]) % 2 for i in record["split"]["val"]) == [0, 1]
    assert "p007" not in record["split"]["train"] + record["split"]["val"]


def test_training_is_tracked_in_mlflow(trained):
    import mlflow

    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{trained['out'] / 'mlruns.db'}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert len(runs) == 1
    run = runs[0]
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 30
    assert {"val_psnr", "val_dice_myo"} <= set(run.data.metrics)
    assert run.data.params["targets"] == "volume" and run.data.params["seed"] == "0"
    assert run.data.tags["bundle"] == "inr2vec"
    assert [a.path for a in client.list_artifacts(run.info.run_id, "config")]


def test_encode_writes_latents_with_scar_records(trained):
    out = trained["root"] / "enc"
    _run("inference.yaml", "encode", model_dir=str(trained["out"]), bank_dir=str(trained["bank"]),
         datalist=str(trained["datalist"]), output_dir=str(out), num_threads=1)
    lat = load_latents(out)
    assert lat.latents.shape == (7, 512) and lat.latents.dtype == torch.float32
    assert lat.ids == [f"p{i:03d}" for i in range(1, 8)]
    assert [s["section"] for s in lat.subjects] == ["training"] * 6 + ["test"]
    assert [s["has_scar"] for s in lat.subjects] == [i % 2 == 0 for i in range(7)]  # conftest: even indices
    burdens = [s["scar_burden"] for s in lat.subjects]
    assert all(0.05 < b < 0.25 for b in burdens[::2]) and burdens[1] == 0.0  # ~12.5 % before resampling
    from lgesynth.engines.inr2vec_eval import load_trained

    assert lat.encoder_sha256 == state_sha256(load_trained(trained["out"]).encoder)
    trained["latents"] = out


def test_decode_writes_pairs_that_validate(trained):
    if "latents" not in trained:
        test_encode_writes_latents_with_scar_records(trained)
    out = trained["root"] / "dec"
    _run("inference.yaml", "decode", model_dir=str(trained["out"]), latents=str(trained["latents"] / "latents.json"),
         decode_dir=str(out), num_threads=1)
    doc = json.loads((out / "datalist.json").read_text())
    assert len(doc["training"]) + len(doc["rejected"]) == 7 and len(doc["training"]) >= 4, doc.get("rejected")
    assert check_datalist(out / "datalist.json") == []
    img = nib.load(str(out / doc["training"][0]["image"]))
    assert img.shape == GRID and all(e["synthetic"] for e in doc["training"])


def test_evaluate_writes_metrics_and_montage(trained):
    out = trained["root"] / "eval"
    _run("evaluate.yaml", model_dir=str(trained["out"]), bank_dir=str(trained["bank"]), output_dir=str(out), num_threads=1)
    with open(out / "inr2vec_metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:7] == ["id", "section", "role", "psnr", "ssim", "dice_myo", "dice_scar"] and len(rows) == 7
    for r in rows:  # the decoded / true ratios are those of the voxel counts beside them
        assert float(r["myo_ratio"]) == pytest.approx(int(r["myo_voxels_decoded"]) / int(r["myo_voxels_true"]), abs=1e-4)
    split = json.loads((trained["out"] / "inr2vec_model.json").read_text())["split"]
    assert {r["id"]: r["role"] for r in rows} == {i: role for role, ids in split.items() for i in ids}  # val apart
    summary = json.loads((out / "inr2vec_metrics.json").read_text())
    assert summary["n_train"] == len(split["train"]) and summary.get("n_val", 0) == len(split["val"])
    for key in ("psnr", "dice_myo", "dice_scar", "probe_accuracy"):
        assert f"{key}_test" in summary or key == "probe_accuracy", key
        assert f"{key}_train" in summary, key
    assert "probe_accuracy" in summary and summary["dice_myo_train"] > 0.5  # the decoder learnt the myocardium
    assert (out / "inr2vec_montage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "inr2vec_fidelity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    train_ratios = sorted(float(r["myo_ratio"]) for r in rows if r["role"] == "train")
    assert summary["myo_ratio_median_train"] == pytest.approx(float(np.median(train_ratios)), abs=1e-4)
    assert summary["myo_ratio_p10_train"] <= summary["myo_ratio_median_train"] <= summary["myo_ratio_p90_train"]
    true_train = np.asarray([int(r["myo_voxels_true"]) for r in rows if r["role"] == "train"], dtype=float)
    assert summary["myo_voxels_cv_true_train"] == pytest.approx(true_train.std(ddof=1) / true_train.mean(), abs=1e-6)
    assert "wall_ratio_median_test" in summary


def test_refined_latents_fit_the_subjects_inr_better_and_repeat(trained):
    """Test-time refinement: lower loss against the subject's own INR than the encoder's latent, the
    same latents for the same seed, the decoder untouched, 0 steps = the encoder alone."""
    from lgesynth.data.canonical_coords import canonical_coords
    from lgesynth.engines.inr2vec_eval import load_trained
    from lgesynth.inr.loss import joint_loss
    from lgesynth.inr2vec.refine import refine_latents
    from lgesynth.inr2vec.train import encode_bank, targets_from_inr

    model = load_trained(trained["out"])
    b = load_bank(trained["bank"])
    params, coords = b.stacked(), canonical_coords(GRID, float(b.fit.get("z_extent", 1.0)))
    z0 = encode_bank(model.encoder, params)
    before = {k: v.clone() for k, v in model.decoder.state_dict().items()}
    z = refine_latents(model, params, z0, coords, steps=15, lr=0.01, points=512, batch_size=4)
    assert z.shape == z0.shape and not torch.equal(z, z0)
    targets = targets_from_inr(params, coords, model.spec)
    with torch.no_grad():
        loss = lambda latents: joint_loss(model.decoder(coords.expand(7, -1, -1), latents), targets, model.loss_weights)  # noqa: E731
        assert (loss(z) < loss(z0)).all(), (loss(z), loss(z0))  # every subject, on the whole grid
    assert torch.equal(refine_latents(model, params, z0, coords, steps=15, lr=0.01, points=512, batch_size=4), z)
    assert all(torch.equal(v, before[k]) for k, v in model.decoder.state_dict().items())
    assert all(p.requires_grad for p in model.decoder.parameters()) and not model.decoder.training
    assert refine_latents(model, params, z0, coords, steps=0) is z0
    # the pull toward the encoder's latent keeps every refined latent nearer its start, still better than it
    pulled = refine_latents(model, params, z0, coords, steps=15, lr=0.01, points=512, batch_size=4, pull=1.0)
    assert ((pulled - z0).norm(dim=1) < (z - z0).norm(dim=1)).all()
    with torch.no_grad():
        assert (loss(pulled) < loss(z0)).all()


def test_evaluate_refines_only_the_held_out_latents(trained):
    """evaluate --latents reads the encode run's latents (the same figures as encoding in place); with
    ``refine`` the held-out subjects' latents are refined and the training subjects keep the generator's."""
    enc, out = trained["root"] / "enc_plain", trained["root"] / "eval_from_latents"
    _run("inference.yaml", "encode", model_dir=str(trained["out"]), bank_dir=str(trained["bank"]), output_dir=str(enc),
         num_threads=1)
    common = dict(model_dir=str(trained["out"]), bank_dir=str(trained["bank"]), num_threads=1)
    _run("evaluate.yaml", output_dir=str(out), latents=str(enc / "latents.json"), **common)
    _run("evaluate.yaml", output_dir=str(out / "here"), **common)
    refine = {"steps": 10, "lr": 0.05, "points": 512, "pull": 0.0}
    _run("evaluate.yaml", output_dir=str(out / "refined"), latents=str(enc / "latents.json"), refine=refine, **common)
    a, here, r = (json.loads((d / "inr2vec_metrics.json").read_text()) for d in (out, out / "here", out / "refined"))
    assert a["latents"]["latents"] == str(enc / "latents.json") and here["latents"]["latents"] == "encoded"
    assert a["psnr_test"] == pytest.approx(here["psnr_test"], abs=1e-4)
    assert r["latents"]["refined"] == "held-out subjects" and a["latents"]["refined"] == "none"
    assert r["psnr_train"] == a["psnr_train"] and r["dice_myo_train"] == a["dice_myo_train"]
    assert r["psnr_test"] != pytest.approx(a["psnr_test"], abs=1e-4)


def test_siren_decoder_starts_from_the_bank_init_and_decodes(bank, tmp_path):
    from monai.bundle import ConfigParser

    from lgesynth.engines.inr2vec_eval import load_trained
    from lgesynth.inr.bank import load_init
    from lgesynth.inr2vec import SirenDecoder

    siren = {**TINY, "decoder_args": {"kind": "siren", "modulation": "scale_shift"}}
    common = dict(bank_dir=str(bank["bank"]), output_dir=str(tmp_path / "train"), **siren)
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.yaml"))
    parser.update(common)
    decoder = parser.get_parsed_content("decoder")
    src = load_bank(bank["bank"])
    assert isinstance(decoder, SirenDecoder) and decoder.spec == src.spec
    assert all(torch.equal(a, b) for a, b in zip(decoder.base, load_init(bank["bank"], src.init, src.spec)))
    _run("train.yaml", steps=10, **common)
    record = json.loads((tmp_path / "train" / "inr2vec_model.json").read_text())["decoder"]
    assert record["kind"] == "siren" and record["modulation"] == "scale_shift" and record["spec"] == src.spec.to_dict()
    model = load_trained(tmp_path / "train")  # rebuilt from the record; the base comes from the checkpoint
    assert isinstance(model.decoder, SirenDecoder) and not torch.equal(model.decoder.base[2], decoder.base[2])
    _run("inference.yaml", "encode", model_dir=str(tmp_path / "train"), bank_dir=str(bank["bank"]),
         output_dir=str(tmp_path / "enc"), num_threads=1)
    _run("inference.yaml", "decode", model_dir=str(tmp_path / "train"), latents=str(tmp_path / "enc" / "latents.json"),
         decode_dir=str(tmp_path / "dec"), num_threads=1)  # no bank needed to decode
    doc = json.loads((tmp_path / "dec" / "datalist.json").read_text())
    assert len(doc["training"]) + len(doc.get("rejected", [])) == 7
    assert nib.load(str(tmp_path / "dec" / "imagesTr" / "p001.nii.gz")).shape == GRID


@pytest.mark.parametrize("spec, init, message", [
    (SirenSpec(hidden_features=16, hidden_layers=2), seed_init(0), r"hidden_features 16 \(encoder: 32\)"),
    (SirenSpec(hidden_features=32, hidden_layers=2), seed_init(1), "another init"),
])
def test_bank_of_another_architecture_or_init_is_refused(trained, tmp_path, spec, init, message):
    from lgesynth.engines.inr2vec_eval import encode_to_file, load_trained

    src = load_bank(trained["bank"])
    params = [p.unsqueeze(0).repeat(len(src), *[1] * p.dim()) for p in init_params(spec, init["seed"])]
    save_bank(InrBank.from_fit(spec, init, params, src.subjects, src.fit), tmp_path / "other")
    with pytest.raises(DataError, match=message) as err:
        encode_to_file(load_trained(trained["out"]), str(tmp_path / "other"), str(tmp_path / "lat"))
    assert str(tmp_path / "other" / "inr_bank.json") in str(err.value)


def test_torn_latents_are_refused(trained, tmp_path):
    from lgesynth.inr2vec.latents import Latents, save_latents

    save_latents(tmp_path / "a", Latents(torch.zeros(2, 4), [{"id": "a"}, {"id": "b"}]))
    save_latents(tmp_path / "b", Latents(torch.ones(2, 4), [{"id": "a"}, {"id": "b"}]))
    (tmp_path / "a" / "latents.safetensors").write_bytes((tmp_path / "b" / "latents.safetensors").read_bytes())
    with pytest.raises(DataError, match="latents.safetensors: does not match latents.json"):
        load_latents(tmp_path / "a")


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(bank, tmp_path):
    out = tmp_path / "ddp"
    files = "['" + str(CONFIGS / "train.yaml") + "','" + str(CONFIGS / "multi_gpu_train.yaml") + "']"
    args = {**TINY, "steps": 10, "bank_dir": str(bank["bank"]), "output_dir": str(out)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "monai.bundle", "run",
           "--config_file", files] + [x for k, v in args.items() for x in (f"--{k}", json.dumps(v) if isinstance(v, dict) else str(v))]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    log = _log(out)
    assert [e["iteration"] for e in log] == [5, 10] and log[-1]["loss"] < log[0]["loss"]
    assert (out / "model_final.pt").is_file()
