"""inr2vec's soft mask targets (``mask_softness_mm``): the decoded masks are unchanged, the targets are a
sigmoid of the signed distance, blended distances morph a shape (hard steps do not), and the bundle trains with
them and a tissue-rendering decoder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import INR2VEC_CONFIGS, run_bundle, torch_threads

from lgesynth.inr2vec.soft_targets import signed_distance_mm, soft_mask_targets

SPACING = (1.0, 1.0, 6.0)


def _disc(shape, centre, radius):
    x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    disc = (x - centre[0]) ** 2 + (y - centre[1]) ** 2 <= radius ** 2
    return np.repeat(disc[:, :, None], shape[2], axis=2)


def test_soft_targets_keep_the_mask_and_follow_the_signed_distance():
    shape = (32, 32, 3)
    myo = _disc(shape, (15, 15), 8) & ~_disc(shape, (15, 15), 4)
    scar = myo & (np.arange(32)[:, None, None] < 15)
    targets = torch.zeros(1, int(np.prod(shape)), 3)
    targets[0, :, 0] = torch.randn(targets.shape[1])
    targets[0, :, 1] = torch.from_numpy(myo.reshape(-1).astype(np.float32))
    targets[0, :, 2] = torch.from_numpy(scar.reshape(-1).astype(np.float32))
    soft = soft_mask_targets(targets, shape, SPACING, softness_mm=1.5)
    assert torch.equal(soft[..., 0], targets[..., 0])  # intensity untouched
    assert torch.equal(soft[..., 1:] > 0.5, targets[..., 1:] > 0.5)  # the decoded masks are the same
    edge = soft[0, :, 1].reshape(shape)[15, 15 + 8, 1]  # the ring's outermost voxel: half a voxel inside
    assert float(edge) == pytest.approx(1 / (1 + np.exp(-0.5 / 1.5)), abs=1e-5)
    s = signed_distance_mm(myo, SPACING)
    assert np.allclose(soft[0, :, 1].numpy(), 1 / (1 + np.exp(s.reshape(-1) / 1.5)), atol=1e-6)
    assert soft_mask_targets(targets, shape, SPACING, 0.0) is targets
    with pytest.raises(ValueError, match="grid"):
        soft_mask_targets(targets, (16, 16, 3), SPACING, 1.5)


def test_blended_signed_distances_morph_a_disc_where_blended_steps_do_not():
    """Two discs 6 voxels apart: the mean of their distance logits is near a disc half way between them (an ellipse
    with foci at the two centres, of about the same area); the mean of saturated step logits is their intersection."""
    shape, radius = (40, 40, 1), 8
    a, b, mid = _disc(shape, (14, 20), radius), _disc(shape, (20, 20), radius), _disc(shape, (17, 20), radius)
    logit_a, logit_b = -signed_distance_mm(a, SPACING), -signed_distance_mm(b, SPACING)
    morph = (logit_a + logit_b) / 2 > 0
    iou = (morph & mid).sum() / (morph | mid).sum()
    assert iou > 0.85 and abs(int(morph.sum()) - int(mid.sum())) <= 0.15 * mid.sum()  # an ellipse with foci at the centres
    step = (np.where(a, 10.0, -10.0) + np.where(b, 10.0, -10.0)) / 2 > 0
    assert (step & mid).sum() / (step | mid).sum() < iou - 0.1


def test_empty_and_full_masks_have_no_edge():
    assert np.isposinf(signed_distance_mm(np.zeros((4, 4, 2), bool), SPACING)).all()
    assert np.isneginf(signed_distance_mm(np.ones((4, 4, 2), bool), SPACING)).all()


def test_the_bundle_trains_with_soft_targets_and_a_tissue_decoder(tiny_inr2vec, tmp_path):
    out = tmp_path / "inr2vec"
    with torch_threads(1):
        run_bundle(INR2VEC_CONFIGS, "train.yaml", bank_dir=str(tiny_inr2vec["root"] / "bank"), output_dir=str(out),
                   epoch_length=2, val_fraction=0.0, latent_dim=32, encoder_args={"width": 16, "depth": 1, "pool": "maxmean"},
                   decoder_args={"kind": "siren", "modulation": "scale_shift", "intensity": "tissue"},
                   subjects_per_batch=2, points=256, warmup_steps=1, num_threads=1, log_every=100, steps=4,
                   mask_softness_mm=1.5)
    record = json.loads((out / "inr2vec_model.json").read_text())
    assert record["decoder"]["intensity"] == "tissue" and record["mask_softness_mm"] == 1.5
    log = json.loads((out / "train_log.json").read_text())
    assert [row["iteration"] for row in log] == [2, 4] and np.isfinite([row["loss"] for row in log]).all()
