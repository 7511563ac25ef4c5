"""The scar_seg bundle end to end on a tiny cohort: train (loss falls, a stopped run resumes where it
stopped, MLflow records it), evaluate (metrics.csv columns, summary, PNG), infer (the label lands on
the input's own grid, whatever its orientation), and bad input fails early naming the file.

The runs go through ``monai.bundle.run`` in this process (``logging_file=False``: MONAI's
``fileConfig`` would replace pytest's logging handlers). The tiny plan: 2D DynUNet of width 8 on
32 x 32 slices, a few iterations. The torchrun (gloo) run must give the weights of one process with
the double batch (about a minute; in the default run because it is issue 9's acceptance).
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

from conftest import SCAR_SEG_CONFIGS, tiny_seg_plan, write_tiny_datalist
from lgesynth.dice import dice
from lgesynth.errors import DataError
from lgesynth.io import save_nifti
from lgesynth.seg import make_plan, regional_metrics, write_plan
from lgesynth.seg.data import MixedSampler, SeededSamples, ensure_plan, slice_last_plan, split_training, synthetic_fraction

CONFIGS = SCAR_SEG_CONFIGS
EPOCH_ITERATIONS = 6


def _run(config: str | list[str], **override):
    from monai.bundle import run

    files = [str(CONFIGS / c) for c in ([config] if isinstance(config, str) else config)]
    run(config_file=files if len(files) > 1 else files[0], logging_file=False, **override)


def tiny_plan(path: Path) -> Path:
    """conftest's 2D width-8 plan, 2 epochs of ``EPOCH_ITERATIONS``."""
    return tiny_seg_plan(path, epochs=2, iterations_per_epoch=EPOCH_ITERATIONS)


def _log(output_dir: Path) -> list[dict]:
    return json.loads((output_dir / "train_log.json").read_text())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Train 2 of 3 planned epochs (as if killed), then start the same run again for all 3."""
    root = tmp_path_factory.mktemp("scar_seg")
    datalist = write_tiny_datalist(root / "data", n_cases=5)  # 4 training (1 held out to validate), 1 test
    plan_path = tiny_plan(root / "plan.json")
    out = root / "train"
    common = dict(datalist=str(datalist), output_dir=str(out), plan_path=str(plan_path), num_workers=0, log_every=100)
    # the schedule of a 3-epoch run stopped after epoch 2
    _run("train.yaml", max_epochs=2, tracking="mlflow", **{"lr_scheduler#total_iters": 3 * EPOCH_ITERATIONS}, **common)
    first = _log(out)
    _run("train.yaml", max_epochs=3, **common)
    return {"root": root, "datalist": datalist, "plan": plan_path, "out": out, "first": first, "log": _log(out)}


def test_training_lowers_the_loss_and_resumes(trained):
    first, log, out = trained["first"], trained["log"], trained["out"]
    assert [e["epoch"] for e in first] == [1, 2]
    assert first[-1]["loss"] < first[0]["loss"], first
    # the second run continued at epoch 3, iteration 13, rather than starting again
    assert [e["epoch"] for e in log] == [1, 2, 3]
    assert [e["iteration"] for e in log] == [EPOCH_ITERATIONS, 2 * EPOCH_ITERATIONS, 3 * EPOCH_ITERATIONS]
    assert log[2]["lr"] < log[1]["lr"] and log[1]["lr"] > 0  # the poly schedule went on too
    assert log[2]["loss"] < first[0]["loss"]
    assert {"val_mean_dice", "val_dice_myo", "val_dice_scar"} <= set(log[0])
    ckpt = torch.load(out / "models" / "checkpoint_epoch=3.pt", weights_only=True)
    assert ckpt["trainer"]["iteration"] == 3 * EPOCH_ITERATIONS
    assert not (out / "models" / "checkpoint_epoch=2.pt").exists()  # only the latest is kept
    assert {"model_final.pt", "model_best.pt"} <= {p.name for p in (out / "models").iterdir()}
    # the best validation of the whole run, the epochs before the resume included, travels in the checkpoint
    scores = [e["val_mean_dice"] for e in log]
    best = torch.load(out / "models" / "model_best.pt", weights_only=True)
    assert ckpt["best_metric"] == {"best_metric": pytest.approx(max(scores)), "best_metric_epoch": 1 + int(np.argmax(scores))}
    assert (best["epoch"], best["best_metric"]) == (1 + int(np.argmax(scores)), pytest.approx(max(scores)))


def test_a_time_budget_ends_training_early_and_the_checkpoint_keeps_it(trained, tmp_path):
    """A plan whose budget one epoch already spends: the run stops after epoch 1 of the plan's 2, says so in the log,
    exports the model, and its checkpoint carries the seconds spent for a resumed run; ``replan_epochs false``
    trains the plan's epochs."""
    plan = json.loads(trained["plan"].read_text())
    plan["budget"]["budget_minutes"] = 1e-4
    plan_path = write_plan(tmp_path / "plan.json", plan)
    common = dict(datalist=str(trained["datalist"]), plan_path=str(plan_path), num_workers=0, log_every=100)
    _run("train.yaml", output_dir=str(tmp_path / "budget"), **common)
    assert [(e["epoch"], e["last_epoch"]) for e in _log(tmp_path / "budget")] == [(1, 1)]
    assert (tmp_path / "budget" / "models" / "model.pt").exists()
    ckpt = torch.load(tmp_path / "budget" / "models" / "checkpoint_epoch=1.pt", weights_only=True)
    assert ckpt["trainer"]["max_epochs"] == 1 and ckpt["time_budget"]["spent_seconds"] > 0
    _run("train.yaml", output_dir=str(tmp_path / "fixed"), replan_epochs=False, **common)
    assert [(e["epoch"], e["last_epoch"]) for e in _log(tmp_path / "fixed")] == [(1, 2), (2, 2)]


def test_training_is_tracked_in_mlflow(trained):
    import mlflow

    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{trained['out'] / 'mlruns.db'}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert len(runs) == 1
    history = client.get_metric_history(runs[0].info.run_id, "train_loss")
    assert len(history) == 2 * EPOCH_ITERATIONS
    assert "val_mean_dice" in runs[0].data.metrics


def test_evaluate_writes_regional_metrics_and_png(trained):
    out = trained["root"] / "eval"
    _run("evaluate.yaml", datalist=str(trained["datalist"]), train_dir=str(trained["out"]), output_dir=str(out))
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == ["p005"]
    keys = list(regional_metrics(np.zeros((4, 4, 3)), np.zeros((4, 4, 3)), (1, 1, 1)))
    assert list(rows[0]) == ["id", *keys]
    summary = json.loads((out / "metrics_summary.json").read_text())
    assert summary["n_cases"] == 1 and set(summary["mean"]) == set(keys)
    assert summary["mean"]["burden_true_pct"] == pytest.approx(12.5)  # conftest: 64 of 512 voxels
    png = (out / "predictions.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def _reoriented_copy(src: Path, dst: Path) -> None:
    """The same volume stored slice axis first, one in-plane axis reversed, rotated 10 degrees in world."""
    img = nib.load(str(src))
    data, affine = np.asarray(img.dataobj), img.affine
    stored = np.ascontiguousarray(np.transpose(data, (2, 0, 1))[:, ::-1, :])  # new (i, j, k) = old (31 - j, k, i)
    new_to_old = np.zeros((4, 4))
    new_to_old[0, 1], new_to_old[0, 3] = -1, data.shape[0] - 1
    new_to_old[1, 2] = new_to_old[2, 0] = new_to_old[3, 3] = 1
    t = np.deg2rad(10.0)
    rotation = np.eye(4)
    rotation[:2, :2] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
    save_nifti(dst, stored, rotation @ affine @ new_to_old, dtype=np.float32)


def test_inference_output_is_on_the_input_grid(trained, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    test_image = Path(json.loads(trained["datalist"].read_text())["test"][0]["image"])
    original = inputs / "plain.nii.gz"
    original.write_bytes((trained["datalist"].parent / test_image).read_bytes())
    _reoriented_copy(original, inputs / "turned.nii.gz")
    out = tmp_path / "pred"
    _run("inference.yaml", input=str(inputs), train_dir=str(trained["out"]), output_dir=str(out))
    for name in ("plain", "turned"):
        image, pred = nib.load(str(inputs / f"{name}.nii.gz")), nib.load(str(out / f"{name}_seg.nii.gz"))
        assert pred.shape == image.shape, name
        np.testing.assert_allclose(pred.affine, image.affine, atol=1e-4, err_msg=name)
        assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2}
    # both are the same voxels to the network, so the labels agree voxel for voxel once turned back
    plain = np.asarray(nib.load(str(out / "plain_seg.nii.gz")).dataobj)
    turned = np.asarray(nib.load(str(out / "turned_seg.nii.gz")).dataobj)
    np.testing.assert_array_equal(np.transpose(turned[:, ::-1, :], (1, 2, 0)), plain)
    assert (plain > 0).any()


def _data_error(exc: BaseException) -> DataError:
    """The DataError that a bundle run raised (MONAI wraps errors of config expressions in RuntimeError)."""
    chain = []
    while exc is not None:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    data_errors = [e for e in chain if isinstance(e, DataError)]
    assert data_errors, chain
    return data_errors[0]


def test_bad_label_fails_before_training_naming_the_file(tmp_path):
    datalist = write_tiny_datalist(tmp_path / "data", n_cases=3)
    bad = tmp_path / "data" / "labelsTr" / "p002.nii.gz"
    img = nib.load(str(bad))
    label = np.asarray(img.dataobj).copy()
    label[0, 0, 0] = 5
    save_nifti(bad, label, img.affine, dtype=np.uint8)
    with pytest.raises(Exception) as info:
        _run("train.yaml", datalist=str(datalist), output_dir=str(tmp_path / "out"), plan_path=str(tiny_plan(tmp_path / "plan.json")),
             num_workers=0)
    error = _data_error(info.value)
    assert str(bad) in str(error) and "label values 5" in str(error)
    assert not (tmp_path / "out" / "models").exists()


# ---- the plan and the sampler, without training


def test_plan_is_made_from_the_data_once(tmp_path):
    datalist = write_tiny_datalist(tmp_path / "data", n_cases=3)
    plan = ensure_plan(None, datalist, tmp_path / "out", preset="smoke")
    assert (tmp_path / "out" / "plan.json").is_file()
    assert plan["inputs"]["median_shape"] == [32, 32, 6]
    edited = dict(plan, batch_size=3)
    write_plan(tmp_path / "out" / "plan.json", edited)
    assert ensure_plan(None, datalist, tmp_path / "out", preset="cpu")["batch_size"] == 3  # the user's edit wins
    with pytest.raises(DataError, match="missing.json"):
        ensure_plan(tmp_path / "missing.json", datalist, tmp_path / "out")


def test_slice_last_plan_moves_the_slice_axis():
    plan = make_plan(((8.0, 1.4, 1.4), (10, 160, 160)), preset="paper", dims=3)
    assert plan["slice_axis"] == 0
    moved = slice_last_plan(plan)
    assert moved["target_spacing_mm"] == [plan["target_spacing_mm"][a] for a in (1, 2, 0)]
    assert moved["patch_size"] == [plan["patch_size"][a] for a in (1, 2, 0)]
    assert moved["network"]["strides"][1] == [plan["network"]["strides"][1][a] for a in (1, 2, 0)]
    assert moved["network"]["strides"][1][2] == 1  # thick slices are not pooled first
    assert slice_last_plan(moved) == moved


@pytest.mark.parametrize("ratio, expected", [(0.5, 0.5), (0.25, 0.25), (1.0, 1.0), (0.0, 0.0)])
def test_sampler_draws_the_synthetic_ratio(ratio, expected):
    n_real, n_synthetic = 8, 40
    dataset = list(range(n_real + n_synthetic))
    sampler = MixedSampler(dataset, n_real, ratio=ratio, num_samples=400, seed=1)
    drawn = list(sampler)
    assert len(drawn) == 400
    assert np.mean([i >= n_real for i in drawn]) == pytest.approx(expected, abs=0.003)
    if 0 < ratio < 1:
        assert set(range(n_real)) <= set(drawn)
    sampler.set_epoch(1)
    assert list(sampler) != drawn  # a new order every epoch


def test_sampler_shards_one_order_over_ranks():
    dataset = list(range(10))
    whole = MixedSampler(dataset, 4, ratio=0.5, num_samples=20, seed=3)
    shards = [list(MixedSampler(dataset, 4, ratio=0.5, num_samples=20, num_replicas=2, rank=r, seed=3)) for r in (0, 1)]
    assert sorted(shards[0] + shards[1]) == sorted(whole.epoch_indices())
    assert synthetic_fraction(4, 6, "all") == 0.6 and synthetic_fraction(4, 0, 0.5) == 0.0
    assert len(MixedSampler(dataset, 4, ratio="all")) == 10 and len(MixedSampler(dataset, 4, ratio=0.5)) == 8


def test_validation_split_never_uses_test(tmp_path):
    datalist = write_tiny_datalist(tmp_path / "data", n_cases=6)
    split = split_training(datalist, val_fraction=0.2, seed=0)
    assert len(split["val"]) == 1 and len(split["train"]) == 4
    assert "p006" not in {d["id"] for d in split["train"] + split["val"]}


def test_seeded_samples_depend_on_their_seed_only():
    """A sample's random crop is a function of its seed, not of what the dataset made before (or where)."""
    from monai.data import CacheDataset
    from monai.transforms import Compose, RandSpatialCropd

    data = [{"image": torch.arange(64.0).reshape(1, 8, 8) + 100 * i} for i in range(3)]
    dataset = CacheDataset(data, Compose([RandSpatialCropd("image", (3, 3), random_size=False)]), progress=False)
    samples = SeededSamples(dataset)
    first = samples[(1, 7)]["image"]
    _ = [samples[(i, 100 + i)] for i in range(3)]
    assert torch.equal(samples[(1, 7)]["image"], first)
    assert any(not torch.equal(samples[(1, s)]["image"], first) for s in (8, 9, 10))
    whole = MixedSampler(list(range(6)), 4, ratio=0.5, num_samples=12, seed=3, sample_seeds=True)
    shards = [list(MixedSampler(list(range(6)), 4, ratio=0.5, num_samples=12, num_replicas=2, rank=r, seed=3,
                                sample_seeds=True)) for r in (0, 1)]
    assert [pair for both in zip(*shards) for pair in both] == list(whole)  # rank r: positions r::2 of one sequence
    assert [i for i, _ in whole] == whole.epoch_indices()


def test_global_batch_dice_ce_is_monai_dice_ce_in_one_process():
    """multi_gpu_train.yaml's loss = train.yaml's DiceCELoss (value and gradient) when nothing is distributed."""
    from monai.losses import DiceCELoss

    from lgesynth.seg.engine_utils import GlobalBatchDiceCELoss

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 3, 16, 12, generator=g, requires_grad=True)
    label = torch.randint(0, 3, (4, 1, 16, 12), generator=g)
    label[1] = 0  # a sample without foreground
    monai_loss = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)
    ours = GlobalBatchDiceCELoss(include_background=False, smooth_nr=1e-5, smooth_dr=1e-5)
    (want,), (got,) = (torch.autograd.grad(f(logits, label), logits) for f in (monai_loss, ours))
    assert float(ours(logits, label)) == pytest.approx(float(monai_loss(logits, label)), rel=1e-6)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-9)



@pytest.mark.parametrize("dims", [2, 3])
def test_mirrored_inference_averages_the_flipped_back_passes(dims):
    """plan_inferer(mirror_axes=(0, 1)): the mean of 4 passes, each on an in-plane flip, flipped back;
    a flip-equivariant network is unchanged by it, a network that is not gets a flip-invariant answer."""
    from lgesynth.seg.engine_utils import MirroredInferer, plan_inferer

    plan = {"patch_size": [8, 8] if dims == 2 else [8, 8, 4], "network": {"spatial_dims": dims}}
    torch.manual_seed(0)
    conv = (torch.nn.Conv2d if dims == 2 else torch.nn.Conv3d)(1, 3, 3, padding=1)  # not flip-equivariant
    x = torch.randn(1, 1, 12, 10, 4)
    mirrored = plan_inferer(plan, mirror_axes=(0, 1))
    assert isinstance(mirrored, MirroredInferer) and not isinstance(plan_inferer(plan), MirroredInferer)
    single = plan_inferer(plan)
    with torch.no_grad():
        got = mirrored(x, conv)
        want = sum(torch.flip(single(torch.flip(x, d), conv), d) for d in ([], [2], [3], [2, 3])) / 4
        assert got.shape == (1, 3, 12, 10, 4)
        torch.testing.assert_close(got, want)
        assert not torch.allclose(got, single(x, conv), atol=1e-3)               # the passes differ...
        torch.testing.assert_close(mirrored(torch.flip(x, [2]), conv), torch.flip(got, [2]))  # ...the mean is symmetric
        identity = torch.nn.Identity()
        torch.testing.assert_close(mirrored(x, identity), single(x, identity))


def _member(folder: Path, plan_path: Path, seed: int) -> torch.nn.Module:
    """A freshly initialised network of the plan, saved as a training's ``models/`` (model.pt, plan.json)."""
    from lgesynth.seg.network import build_dynunet
    from lgesynth.seg.plan import load_plan

    torch.manual_seed(seed)
    net = build_dynunet(slice_last_plan(load_plan(plan_path))).eval()
    (folder / "models").mkdir(parents=True)
    torch.save(net.state_dict(), folder / "models" / "model.pt")
    write_plan(folder / "models" / "plan.json", load_plan(plan_path))
    return net


def test_ensemble_is_the_mean_of_its_members_logits(tmp_path):
    from lgesynth.seg.engine_utils import LogitMeanEnsemble, ensemble_network
    from lgesynth.seg.plan import load_plan

    plan_path = tiny_plan(tmp_path / "plan.json")
    plan = slice_last_plan(load_plan(plan_path))
    first, second, third = (_member(tmp_path / f"m{i}", plan_path, seed=i) for i in range(3))
    assert ensemble_network(first, plan, []) is first
    ensemble = ensemble_network(first, plan, [tmp_path / "m1", tmp_path / "m2"]).eval()
    assert isinstance(ensemble, LogitMeanEnsemble) and len(ensemble.members) == 3
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        outputs = [net(x) for net in (first, second, third)]
        assert not torch.allclose(outputs[0], outputs[1], atol=1e-3)
        torch.testing.assert_close(ensemble(x), sum(outputs) / 3)
    # a member of another plan, or with unreadable weights, is refused naming its file
    other = json.loads(plan_path.read_text())
    other["network"]["filters"] = [16 * 2 ** i for i in range(len(other["network"]["filters"]))]
    write_plan(tmp_path / "m2" / "models" / "plan.json", other)
    with pytest.raises(DataError, match=r"m2/models/plan\.json: describes another network"):
        ensemble_network(first, plan, [tmp_path / "m2"])
    (tmp_path / "m1" / "models" / "model.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match=r"m1/models/model\.pt: cannot read the weights"):
        ensemble_network(first, plan, [tmp_path / "m1"])


def test_inference_with_ensemble_dirs_uses_every_member(trained, tmp_path):
    """A member whose background logit is +1000 outvotes the trained model everywhere: all background."""
    member = tmp_path / "member" / "models"
    member.mkdir(parents=True)
    (member / "plan.json").write_bytes((trained["out"] / "models" / "plan.json").read_bytes())
    state = torch.load(trained["out"] / "models" / "model.pt", weights_only=True)
    bias = [k for k in state if k.startswith("output_block.") and k.endswith("bias")]
    assert len(bias) == 1
    state[bias[0]][0] += 1000.0
    torch.save(state, member / "model.pt")
    out = tmp_path / "pred"
    _run("inference.yaml", input=str(trained["datalist"]), train_dir=str(trained["out"]), output_dir=str(out),
         ensemble_dirs=[str(tmp_path / "member")])
    (pred,) = out.glob("*_seg.nii.gz")
    assert not np.asarray(nib.load(str(pred)).dataobj).any()


def test_training_starts_from_pretrained_weights(trained, tmp_path):
    """With the learning rate at 0 the exported model is exactly the weights training started from:
    the `pretrained` model.pt, not a fresh initialisation; a file that is not one is refused by name."""
    plan = json.loads(tiny_seg_plan(tmp_path / "plan.json", epochs=1, iterations_per_epoch=2).read_text())
    plan["training"]["optimizer"]["lr"] = 0.0
    frozen = write_plan(tmp_path / "frozen_plan.json", plan)
    pretrained = trained["out"] / "models" / "model.pt"
    common = dict(datalist=str(trained["datalist"]), plan_path=str(frozen), num_workers=0, val_fraction=0)
    _run("train.yaml", output_dir=str(tmp_path / "ft"), pretrained=str(pretrained), **common)
    _run("train.yaml", output_dir=str(tmp_path / "scratch"), **common)
    start = torch.load(pretrained, weights_only=True)
    tuned, scratch = (torch.load(tmp_path / run / "models" / "model.pt", weights_only=True) for run in ("ft", "scratch"))
    assert set(tuned) == set(start)
    for key in start:
        torch.testing.assert_close(tuned[key], start[key], rtol=0, atol=0)
    assert any(not torch.equal(scratch[key], start[key]) for key in start)
    (tmp_path / "junk.pt").write_bytes(b"not weights")
    with pytest.raises(Exception) as info:
        _run("train.yaml", output_dir=str(tmp_path / "bad"), pretrained=str(tmp_path / "junk.pt"), **common)
    assert f"{tmp_path / 'junk.pt'}: cannot read the weights" in str(_data_error(info.value))


# Two ranks with batch B train the weights of one process with batch 2B (multi_gpu_train.yaml says how, by
# design). What may differ is float summation order (the batch's sums split over two ranks, DDP's gradient
# all-reduce): ~1e-7 relative in the first gradients (measured 7e-8 absolute, largest gradient 2e-2).
# SGD with momentum 0.9 is linear in the gradient and calm on this tiny cohort, so the weights stay at float
# noise: measured max |dw| 3e-8 after 2 epochs of 3 iterations (weights of order 1); tolerance 1e-6.
# The plan's own optimisers amplify that noise, not the sharding: AdamW's first steps are ~lr * sign(g), so a
# gradient component within float noise of 0 may go either way (measured max |dw| 1.8e-3, i.e. ~lr, after 3
# iterations), and nnU-Net's SGD (momentum 0.99, Nesterov) grew it to 8e-6 in 6 iterations.
DDP_WEIGHT_ATOL = 1e-6


# not marked slow: issue 9's acceptance (two ranks equal one), so CI runs it (~1 min)
def test_two_rank_torchrun_training_equals_one_process_with_the_double_batch(tmp_path):
    datalist = write_tiny_datalist(tmp_path / "data", n_cases=5)
    plan = json.loads(tiny_plan(tmp_path / "plan.json").read_text())
    plan["training"]["optimizer"] = {"name": "SGD", "lr": 0.01, "momentum": 0.9}
    plan["training"]["precision"] = "fp32"  # bf16 rounding differs with the batch split; the sharding is what is tested
    plan_path = write_plan(tmp_path / "plan.json", plan)
    common = dict(datalist=str(datalist), plan_path=str(plan_path), num_workers=0, max_epochs=2, log_every=100)
    # one process: 3 iterations per epoch of 2 volumes (x 4 slices)
    _run("train.yaml", output_dir=str(tmp_path / "one"), batch_size=2, iterations_per_epoch=3, **common)
    # two ranks: the same 6 volumes per epoch, 1 per rank and iteration, so 3 iterations per rank
    files = str([str(CONFIGS / "train.yaml"), str(CONFIGS / "multi_gpu_train.yaml")])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "monai.bundle", "run",
           "--config_file", files, "--output_dir", str(tmp_path / "two"), "--batch_size", "1", "--iterations_per_epoch", "6"]
    for key, value in common.items():
        cmd += [f"--{key}", str(value)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert [e["iteration"] for e in _log(tmp_path / "two")] == [3, 6]  # each rank takes half of each epoch

    one, two = (torch.load(tmp_path / run / "models" / "model_final.pt", weights_only=True)["model"] for run in ("one", "two"))
    assert list(two) == list(one)
    for name, w in one.items():
        torch.testing.assert_close(two[name], w, rtol=0, atol=DDP_WEIGHT_ATOL, msg=name)
    shipped = torch.load(tmp_path / "two" / "models" / "model.pt", weights_only=True)  # rank 0's export, no "module."
    assert list(shipped) == list(two) and all(torch.equal(shipped[k], two[k]) for k in two)


def _ring_batch(n: int = 48, batch: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(image (batch, 1, n, n) z-scored, label (batch, 1, n, n) 0/1/2): a thin myocardial ring (~2 % of
    the slice, as myocardium in a whole LGE slice) with bright scar on one side, darker blood inside."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    labels, insides = [], []
    for k in range(batch):
        cy, cx = n // 2 + 2 * k - 3, n // 2 - k
        r = ((yy - cy) ** 2 + (xx - cx) ** 2).float().sqrt()
        myo = (r > 5) & (r < 7.5)
        labels.append(myo.long() + (myo & (xx > cx + 2)).long())
        insides.append(r < 5)
    label, inside = torch.stack(labels)[:, None], torch.stack(insides)[:, None]
    image = torch.where(label == 2, 1.5, torch.where(label == 1, 0.3, torch.where(inside, 1.0, 0.6)))
    image = image + 0.15 * torch.randn(image.shape, generator=g)
    return (image - image.mean()) / image.std(), label


def test_planned_network_learns_a_thin_ring_with_the_configs_loss_and_optimiser():
    """The train config's loss (deep supervision over DiceCE) and the plan's optimiser must get the
    network off the all-background solution within a CPU budget's worth of steps: the first EMIDEC
    run with nnU-Net's SGD (momentum 0.99) stayed at myocardium Dice 0 for 810 iterations."""
    from monai.bundle import ConfigParser

    plan = make_plan(((1.5, 1.5, 8.0), (48, 48, 6)), preset="smoke")
    plan["network"]["filters"] = [8 * 2 ** i for i in range(len(plan["network"]["filters"]))]
    assert plan["training"]["optimizer"]["name"] == "AdamW"
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.yaml"))
    parser["plan"] = plan
    parser["device"] = "$torch.device('cpu')"
    torch.manual_seed(0)
    network, loss, optimiser = (parser.get_parsed_content(k) for k in ("network", "loss", "optimizer"))
    image, label = _ring_batch()
    network.train()
    for _ in range(48):  # measured: AdamW reaches Dice 0.79 here, nnU-Net's SGD 0.02 (0.81 only after 80)
        optimiser.zero_grad()
        value = loss(network(image), label)
        value.backward()
        optimiser.step()
    network.eval()
    with torch.no_grad():
        pred = network(image).argmax(1, keepdim=True)
    myo = float(dice(pred > 0, label > 0))
    assert myo > 0.6, f"myocardium Dice {myo:.2f} after 48 steps on one batch: the network is not learning"
