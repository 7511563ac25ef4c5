"""scar_seg's heart-ROI cascade: the planned ROI, a briefly trained localizer, the fallback, inference on the
input's grid, and the trained cascade through pack + download.

The cohort: conftest's ring stacks on a 96 x 96 field of view (144 mm) with the heart moved to a
different place in every case, so the localizer has something to find.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import (SCAR_SEG_CONFIGS, TrainingKilled, kill_next_training_at, monai_bundle_cli, run_bundle,
                      serve_folder, synthetic_lge)
from lgesynth.data.datalist import write_datalist
from lgesynth.data.fingerprint import fingerprint
from lgesynth.io import save_nifti
from lgesynth.pack import pack_bundle
from lgesynth.seg.cascade import (CascadeGridd, CascadeInferer, downsample_image, downsample_label, label_box,
                                  plan_cascade_inferer, roi_box)
from lgesynth.seg.cascade_plan import ROI_MARGIN_MM, localizer_plan, roi_plan
from lgesynth.seg.cavity import has_cavity_class
from lgesynth.seg.cost_calibration import refine_plan
from lgesynth.seg.data import slice_last_plan
from lgesynth.seg.engine_utils import plan_inferer
from lgesynth.seg.plan import write_plan

pytestmark = pytest.mark.usefixtures("one_thread")
FOV = (96, 96, 6)
SHIFTS = [(-22, 15), (18, -20), (0, 25), (-25, -10), (20, 20), (10, -25), (-15, 22), (24, 2)]  # voxels; last 2: test


def _write_cohort(folder: Path) -> Path:
    entries = []
    for i, (dx, dy) in enumerate(SHIFTS):
        image, label, affine = synthetic_lge(shape=FOV, scar_degrees=90.0 if i % 2 == 0 else 0.0, seed=i)
        case = f"c{i:02d}"
        save_nifti(folder / "imagesTr" / f"{case}.nii.gz", np.roll(image, (dx, dy), axis=(0, 1)), affine)
        save_nifti(folder / "labelsTr" / f"{case}.nii.gz", np.roll(label, (dx, dy), axis=(0, 1)), affine)
        entries.append({"id": case, "image": f"imagesTr/{case}.nii.gz", "label": f"labelsTr/{case}.nii.gz"})
    return write_datalist(folder / "datalist.json", entries[:-2], entries[-2:])


def _tiny(plan: dict, epochs: int, iterations: int) -> dict:
    plan["network"]["filters"] = [8 * 2 ** i for i in range(len(plan["network"]["filters"]))]
    plan["batch_size"] = 4
    plan["training"].update(epochs=epochs, iterations_per_epoch=iterations)
    plan["budget"]["budget_minutes"] = None  # exactly these epochs (lgesynth.seg.time_budget)
    return plan


@pytest.fixture(scope="module")
def cascade(tmp_path_factory):
    """Both stages trained briefly; the ROI stage into a copy of the bundle (``models_dir``), for packing."""
    root = tmp_path_factory.mktemp("cascade")
    datalist = _write_cohort(root / "data")
    fp = fingerprint(datalist, "training")
    plans = {"localizer": _tiny(localizer_plan(fp, "smoke"), 3, 20), "roi": _tiny(roi_plan(fp, "smoke"), 4, 30)}
    bundle = root / "src" / "scar_seg"
    shutil.copytree(SCAR_SEG_CONFIGS, bundle / "configs")
    shutil.copytree(SCAR_SEG_CONFIGS.parent / "docs", bundle / "docs")
    common = dict(datalist=str(datalist), num_workers=0, log_every=1000, val_fraction=0.0)
    run_bundle(bundle / "configs", "train.yaml", output_dir=str(root / "localizer"),
               plan_path=str(write_plan(root / "localizer_plan.json", plans["localizer"])), **common)
    run_bundle(bundle / "configs", "train.yaml", output_dir=str(root / "roi"), models_dir=str(bundle / "models"),
               plan_path=str(write_plan(root / "roi_plan.json", plans["roi"])),
               localizer_dir=str(root / "localizer" / "models"), **common)
    test = [{k: str(datalist.parent / e[k]) for k in ("image", "label")} for e in json.loads(datalist.read_text())["test"]]
    return {"root": root, "datalist": datalist, "bundle": bundle, "plans": plans, "test": test}


def test_localizer_plan_coarsens_in_plane_only_and_roi_plan_covers_the_median_heart(cascade):
    loc, roi = cascade["plans"]["localizer"], cascade["plans"]["roi"]
    assert loc["cascade"]["downsample"] == [2, 2, 1]  # 96 voxels -> 48 <= 64
    assert loc["target_spacing_mm"] == [3.0, 3.0, 8.0] and loc["cascade"]["input_spacing_mm"] == [1.5, 1.5, 8.0]
    assert roi["target_spacing_mm"] == [1.5, 1.5, 8.0]
    ring_mm = 16 * 1.5  # conftest's ring: outer radius 12 mm, 16 voxels across
    assert roi["cascade"]["roi_mm"][0] == pytest.approx(ring_mm + 2 * ROI_MARGIN_MM, abs=3.0)
    assert all(p * 1.5 >= ring_mm + 2 * ROI_MARGIN_MM for p in roi["patch_size"][:2])  # the patch covers the median ROI
    assert roi["why"][0].startswith("cascade stage 2") and loc["why"][0].startswith("cascade stage 1")
    # the ROI's width ladder starts at 16 (iterations pay more than width there); the localizer's at 32
    assert roi["cascade"]["widths"] == [16, 8] and roi["budget"]["candidates"][0]["base_filters"] == 16
    assert all(c["base_filters"] <= 16 for c in roi["budget"]["candidates"])
    assert loc["budget"]["candidates"][0]["base_filters"] == 32
    # the ROI network learns the LV cavity as a fourth class (seg/cavity.py), also after a calibration re-plan
    assert has_cavity_class(roi) and roi["network"]["out_channels"] == 4 and loc["network"]["out_channels"] == 3
    assert has_cavity_class(refine_plan(roi, measured_seconds=2 * roi["budget"]["seconds_per_iteration"]))


def test_planned_roi_contains_the_label_with_the_planned_margin():
    plan = slice_last_plan({"target_spacing_mm": [1.5, 1.5, 8.0], "slice_axis": 2, "patch_size": [32, 32],
                            "network": {"spatial_dims": 2}, "cascade": {"stage": "roi", "margin_mm": 12.0}})
    margin = 8  # 12 mm at 1.5 mm
    for (dx, dy) in [(0, 0), (-30, 28), (33, -33)]:  # centred, and near two borders (the crop is clipped there)
        _, label, _ = synthetic_lge(shape=FOV)
        label = np.roll(label, (dx, dy), axis=(0, 1))
        lo, hi = label_box(label > 0)
        out = CascadeGridd(["image", "label"], plan)({"image": torch.zeros(1, *FOV), "label": torch.as_tensor(label)[None]})
        assert out["label"].shape[-1] == FOV[2]  # every slice kept
        assert int((out["label"] > 0).sum()) == int((label > 0).sum())  # all of the myocardium inside
        box = roi_box(lo, hi, [margin, margin], [32, 32], FOV[:2])
        for a in (0, 1):
            assert box[a].start <= max(lo[a] - margin, 0) and box[a].stop >= min(hi[a] + margin, FOV[a])
        assert out["image"].shape == out["label"].shape


def test_localizer_grid_keeps_a_one_voxel_wall_and_averages_the_image():
    label = torch.zeros(1, 8, 8, 2, dtype=torch.uint8)
    label[0, 3, :, :] = 1  # a wall one voxel thick
    label[0, 3, 5, 1] = 2
    coarse = downsample_label(label, [4, 4, 1])
    assert coarse.shape == (1, 2, 2, 2) and coarse[0, 0].tolist() == [[1, 1], [1, 2]]
    image = torch.arange(64.0).reshape(1, 8, 8, 1)
    assert downsample_image(image, [8, 8, 1]).item() == pytest.approx(31.5)
    assert downsample_image(image, [1, 1, 1]) is image


def _network_input(path: str) -> torch.Tensor:
    """A conftest stack as evaluate.yaml hands it to the inferer: z-scored, (1, 1, X, Y, Z) (already slice-last,
    at the target spacing)."""
    x = torch.as_tensor(np.asarray(nib.load(path).dataobj, dtype=np.float32))
    return ((x - x.mean()) / x.std())[None, None]


def test_briefly_trained_localizer_puts_every_test_myocardium_inside_its_roi(cascade):
    models = cascade["bundle"] / "models"
    plan = slice_last_plan(json.loads((models / "plan.json").read_text()))
    inferer = plan_cascade_inferer(plan, models)
    assert isinstance(inferer, CascadeInferer)
    margin = [plan["cascade"]["margin_mm"] / s for s in plan["target_spacing_mm"][:2]]
    for case in cascade["test"]:
        x = _network_input(case["image"])
        box = inferer.heart_box(x)
        assert box is not None, case["image"]
        sx, sy = roi_box(*box, margin, plan["patch_size"][:2], FOV[:2])
        label = np.asarray(nib.load(case["label"]).dataobj) > 0
        inside = label[sx, sy].sum()
        assert inside == label.sum(), f"{case['image']}: {label.sum() - inside} myocardium voxels outside the ROI"


class _NoHeart(torch.nn.Module):
    """A localizer that sees background everywhere."""

    def forward(self, x):
        return torch.cat([torch.ones_like(x), torch.zeros_like(x), torch.zeros_like(x)], dim=1)


class _Constant(torch.nn.Module):
    """Myocardium everywhere, with ``classes`` outputs (4: a plan trained with the LV cavity class)."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.classes = classes

    def forward(self, x):
        return torch.cat([torch.zeros_like(x), torch.ones_like(x)] + [torch.zeros_like(x)] * (self.classes - 2), dim=1)


def test_no_heart_found_falls_back_to_the_whole_field_of_view_and_warns(caplog):
    from monai.data import MetaTensor

    plan = slice_last_plan({"target_spacing_mm": [1.5, 1.5, 8.0], "slice_axis": 2, "patch_size": [32, 32],
                            "network": {"spatial_dims": 2}, "cascade": {"stage": "roi", "margin_mm": 12.0}})
    localizer_plan_ = {"patch_size": [48, 48], "network": {"spatial_dims": 2}, "cascade": {"downsample": [2, 2, 1]}}
    inferer = CascadeInferer(_NoHeart(), localizer_plan_, plan, plan_inferer(plan), plan_inferer(localizer_plan_))
    x = MetaTensor(torch.randn(1, 1, *FOV), meta={"filename_or_obj": "/data/case_without_heart.nii.gz"})
    with caplog.at_level(logging.WARNING, logger="lgesynth.seg.cascade"):
        out = inferer(x, _Constant())
    assert "case_without_heart.nii.gz" in caplog.text and "whole field of view" in caplog.text
    assert out.shape == (1, 3, *FOV) and bool((out.argmax(1) == 1).all())  # the ROI network saw every voxel


def test_outside_the_roi_is_certain_background(cascade):
    models = cascade["bundle"] / "models"
    plan = slice_last_plan(json.loads((models / "plan.json").read_text()))
    inferer = plan_cascade_inferer(plan, models)
    x = _network_input(cascade["test"][0]["image"])
    assert plan["network"]["out_channels"] == 4  # the ROI network learns the LV cavity too (seg/cavity.py) ...
    out = inferer(x, _Constant(4))
    assert out.shape[1] == 3  # ... and predicts the data contract's three classes
    sx, sy = roi_box(*inferer.heart_box(x), [8, 8], plan["patch_size"][:2], FOV[:2])
    fg = out.argmax(1)[0] > 0
    assert bool(fg[sx, sy].all()) and int(fg.sum()) == fg[sx, sy].numel()


def _reoriented_copy(src: str, dst: Path) -> Path:
    """The stack with its axes permuted and flipped and its voxels 1.2 x 1.7 x 8 mm: another grid, same anatomy."""
    img = nib.load(src)
    data = np.asarray(img.dataobj, dtype=np.float32)
    affine = img.affine.copy()
    affine[:3, :3] = affine[:3, :3] @ np.diag([1.2 / 1.5, 1.7 / 1.5, 1.0])
    out = nib.Nifti1Image(data, affine).as_reoriented(np.array([[2, 1], [0, -1], [1, 1]]))
    dst.parent.mkdir(parents=True, exist_ok=True)
    nib.save(out, dst)
    return dst


def test_cascade_inference_writes_labels_on_each_inputs_grid(cascade, tmp_path):
    inputs = tmp_path / "in"
    shutil.copy(cascade["test"][0]["image"], inputs / "plain.nii.gz") if inputs.mkdir() is None else None
    _reoriented_copy(cascade["test"][1]["image"], inputs / "reoriented.nii.gz")
    out = tmp_path / "out"
    run_bundle(cascade["bundle"] / "configs", "inference.yaml", input=str(inputs), output_dir=str(out),
               train_dir=str(cascade["bundle"]), num_workers=0)
    for name in ("plain", "reoriented"):
        src, seg = nib.load(inputs / f"{name}.nii.gz"), nib.load(out / f"{name}_seg.nii.gz")
        assert seg.shape == src.shape and np.allclose(seg.affine, src.affine, atol=1e-4), name
        assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= {0, 1, 2}
    truth = np.asarray(nib.load(cascade["test"][0]["label"]).dataobj) > 0
    pred = np.asarray(nib.load(out / "plain_seg.nii.gz").dataobj) > 0
    # briefly trained (120 iterations), the ROI network finds most of the ring (the cavity it learns as its own
    # class keeps it from over-segmenting), where the localizer put it: around the moved heart
    assert (truth & pred).sum() >= 0.7 * truth.sum()
    centre = [np.argwhere(m).mean(0)[:2] for m in (truth, pred)]
    assert np.abs(centre[0] - centre[1]).max() < 6, centre


def test_packed_cascade_runs_from_the_downloaded_zip(cascade, tmp_path):
    import zipfile

    archive = pack_bundle(cascade["bundle"], tmp_path / "dist")
    names = zipfile.ZipFile(archive).namelist()
    assert {"scar_seg/models/localizer.pt", "scar_seg/models/localizer_plan.json"} <= set(names)
    shipped = json.loads(zipfile.ZipFile(archive).read("scar_seg/configs/metadata.json"))
    pred = shipped["network_data_format"]["outputs"]["pred"]
    assert pred["num_channels"] == 4 and "cavity" in pred["channel_def"]["3"]  # the ROI network's raw outputs
    downloaded = tmp_path / "downloaded"
    with serve_folder(archive.parent) as base:
        monai_bundle_cli("download", "--name", "scar_seg", "--url", f"{base}/{archive.name}", "--bundle_dir", downloaded,
                         cwd=tmp_path, fresh_process=False)
    image = cascade["test"][0]["image"]
    for source, out in ((cascade["bundle"], tmp_path / "here"), (downloaded / "scar_seg", tmp_path / "there")):
        run_bundle(source / "configs", "inference.yaml", input=image, output_dir=str(out), train_dir=str(source),
                   num_workers=0)
    here = np.asarray(nib.load(tmp_path / "here" / "c06_seg.nii.gz").dataobj)
    there = np.asarray(nib.load(tmp_path / "there" / "c06_seg.nii.gz").dataobj)
    assert np.array_equal(here, there) and (here > 0).any()


def test_an_roi_stage_without_its_localizer_is_refused_naming_what_is_missing(cascade, tmp_path):
    from lgesynth.errors import DataError

    with pytest.raises(Exception) as info:  # MONAI wraps a config expression's error in a RuntimeError
        run_bundle(cascade["bundle"] / "configs", "train.yaml", datalist=str(cascade["datalist"]),
                   output_dir=str(tmp_path / "roi"), plan_path=str(cascade["root"] / "roi_plan.json"), num_workers=0)
    chain, exc = [], info.value
    while exc is not None:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    assert any(isinstance(e, DataError) and "--localizer_dir" in str(e) for e in chain), chain
    assert not (tmp_path / "roi" / "models").exists()
    models = tmp_path / "models"
    shutil.copytree(cascade["bundle"] / "models", models)
    (models / "localizer.pt").unlink()
    with pytest.raises(DataError, match="localizer.pt"):
        plan_cascade_inferer(slice_last_plan(json.loads((models / "plan.json").read_text())), models)


def _log(folder: Path) -> list[tuple[int, int]]:
    return [(e["epoch"], e["iteration"]) for e in json.loads((folder / "train_log.json").read_text())]


def test_experiment_trains_the_localizer_once_ships_it_with_every_arm_and_resumes_either_stage(cascade, tmp_path,
                                                                                              monkeypatch):
    """Killed in the localizer's last epoch, then in the first arm's (the ROI stage's) last epoch: each run again
    resumes the stage from its epoch checkpoint; the localizer is trained once and every arm ships it."""
    from lgesynth.data.datalist import load_datalist
    from lgesynth.seg.experiment import run_experiment

    real = cascade["datalist"]
    synthetic = write_datalist(real.parent / "synthetic.json", [{**e, "synthetic": True} for e in load_datalist(real, "training")])
    out = tmp_path / "experiment"
    plans = {"localizer": _tiny(localizer_plan(fingerprint(real, "training"), "smoke"), 2, 3), "roi": cascade["plans"]["roi"]}
    write_plan(out / "localizer" / "plan.json", plans["localizer"])  # the experiment keeps a plan it finds
    plan = write_plan(tmp_path / "roi_plan.json", {**plans["roi"], "training": {**plans["roi"]["training"], "epochs": 2,
                                                                                 "iterations_per_epoch": 3}})
    kwargs = dict(seeds=[0], plan=plan, min_scar_ml=0, n_boot=20, num_workers=0, evaluate_overrides={"mirror_axes": []})
    for stage, folder, skip in (("localizer", out / "localizer", 0), ("roi", out / "baseline_seed0", 1)):
        with monkeypatch.context() as m:  # (the roi run resumes the localizer first: that trainer is skipped)
            kill_next_training_at(m, iteration=4, skip=skip)  # in epoch 2 of 2, after checkpoint_epoch=1.pt
            with pytest.raises(TrainingKilled):
                run_experiment(real, synthetic, out, **kwargs)
        assert _log(folder) == [(1, 3)], stage
        assert not (folder / "models" / "model.pt").exists()
    comparison = run_experiment(real, synthetic, out, **kwargs)
    assert _log(out / "localizer") == [(1, 3), (2, 6)]  # resumed in epoch 2, not started again
    assert _log(out / "baseline_seed0") == [(1, 3), (2, 6)]
    localizer = (out / "localizer" / "models" / "model.pt").read_bytes()
    plan = json.loads((out / "plan.json").read_text())
    assert plan["cascade"]["stage"] == "roi"
    for arm in ("baseline_seed0", "augmented_seed0"):
        assert (out / arm / "models" / "localizer.pt").read_bytes() == localizer
        assert json.loads((out / arm / "config_train.json").read_text())["localizer_dir"] == str(out / "localizer" / "models")
    assert set(comparison["baseline"]) >= {"dice_myo", "dice_scar"}
