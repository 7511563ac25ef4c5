"""inr2vec: encoder shapes and locality, function-preserving permutations, decoder determinism,
training on a tiny fitted cohort, architecture refusal, linear probe."""

from __future__ import annotations

import functools

import pytest
import torch

from conftest import grid_coords, ring_targets, torch_threads

from lgesynth.errors import DataError
from lgesynth.inr import FitConfig, InrBank, SirenSpec, fit, forward_chunked, init_params, seed_init, stack_params
from lgesynth.inr2vec import (
    ImplicitDecoder, Inr2VecEncoder, Inr2VecModel, augment_params, encode_bank, evaluate, linear_probe_accuracy,
    permute_neurons, sample_batch, targets_from_inr, train_step,
)

TINY = SirenSpec(hidden_features=32, hidden_layers=2)
SHAPE = (16, 16, 4)


pytestmark = pytest.mark.usefixtures("one_thread")


def _coords(shape=SHAPE, z_extent=0.5):
    return grid_coords(shape, z_extent)


def _cohort(n=6, shape=SHAPE, seed=0):
    """Ring 'myocardium', scar wedge on odd subjects, smooth background (conftest.ring_targets)."""
    return ring_targets(n, shape, seed, radius=(0.3, 0.2), wedge=1.5)


def _random_bank(spec=TINY, subjects=4, seed=0):
    """Init + per-subject perturbations of every tensor: distinct INRs without fitting."""
    g = torch.Generator().manual_seed(seed)
    base = stack_params(init_params(spec, 0), subjects)
    return [p + 0.3 * p.std() * torch.randn(p.shape, generator=g) for p in base]


@pytest.fixture(scope="module")
def fitted_bank():
    cfg = FitConfig(max_steps=150, batch_size=6, points=None, lr=1e-3, early_stop=False)
    with torch_threads(1):
        res = fit(_cohort(6), _coords(), init_params(TINY, 0), TINY, cfg)
    return res.params


def test_encoder_shapes_and_each_weight_reaches_only_its_subject():
    params = _random_bank(subjects=4)
    enc = Inr2VecEncoder(TINY, width=64).eval()
    with torch.no_grad():
        z = enc(params)
        assert z.shape == (4, 512)  # (subjects, latent)
        assert enc([p[:1] for p in params]).shape == (1, 512)
        # one weight (or bias) of subject 2 in every tensor: first layer, hidden, head
        for t in range(len(params)):
            changed = [p.clone() for p in params]
            flat = changed[t][2].view(-1)
            flat[flat.numel() // 2] += 0.5 * params[t].std()
            z2 = enc(changed)
            assert (z2[2] - z[2]).abs().max() > 1e-6, f"tensor {t}: a changed weight did not change the latent"
            others = [0, 1, 3]
            assert torch.allclose(z2[others], z[others], atol=1e-6, rtol=0), f"tensor {t}: other subjects changed"
    # the latent of a subject does not depend on its batch (no batch statistics), also in train mode
    enc.train()
    assert torch.allclose(enc(params)[1:2], enc([p[1:2] for p in params]), atol=1e-5)


def test_standardization_from_bank():
    params = _random_bank(subjects=8)
    enc = Inr2VecEncoder(TINY, width=32, latent_dim=16)
    raw = enc.rows(params)
    enc.fit_standardization(params)
    rows = enc.rows(params)
    for k, r in enumerate(rows):
        w = r[..., :-1]  # the weights of the rows (the last column is the bias)
        assert abs(float(w.mean())) < 1e-4 and abs(float(w.std()) - 1) < 1e-3, k
    assert not torch.allclose(raw[1], rows[1])
    enc.fit_standardization(params, per_element=True)
    assert enc.rows(params)[1].mean(0).abs().max() < 1e-4  # the bank mean of every entry is removed
    assert "scale_0" in enc.state_dict() and "center_0" in enc.state_dict()


def test_center_rows_tell_the_pool_which_neuron_deviates():
    params = _random_bank(subjects=4)
    # subject 0's deviation from the bank mean, moved from first-layer neuron 3 to neuron 5 (and back)
    mean = [p.mean(0) for p in params]
    moved = [p[:1].clone() for p in params]
    for t in (0, 1):  # w0 (1, in, out) and b0 (1, out): neurons are the last dim
        dev = params[t][:1] - mean[t]
        dev[..., [3, 5]] = dev[..., [5, 3]]
        moved[t] = mean[t] + dev
    with torch.no_grad():
        for center_rows, same in ((False, True), (True, False)):
            enc = Inr2VecEncoder(TINY, width=32, latent_dim=16, center_rows=center_rows).eval()
            enc.fit_standardization(params, per_element=True)
            rows = enc.rows(params)
            assert rows[1].shape == (4, 32, (32 + 1) * (2 if center_rows else 1))  # (subjects, neurons, row)
            z0, z_moved = enc([p[:1] for p in params]), enc(moved)
            # per-element rows alone are a set the pool cannot order; the centre half names the neuron
            assert torch.allclose(z0, z_moved, atol=1e-5) == same, center_rows
            if center_rows:
                assert torch.equal(rows[1][0, :, 33:], rows[1][3, :, 33:])  # the same centre rows for every subject


def test_permutation_keeps_function_changes_weights_and_latent():
    params = _random_bank(subjects=3)
    before = [p.clone() for p in params]
    coords = _coords()
    perm = permute_neurons(params, TINY, generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(p, q) for p, q in zip(params, before)), "input modified"
    f0 = forward_chunked(params, coords, TINY)
    f1 = forward_chunked(perm, coords, TINY)
    assert (f0 - f1).abs().max() < 1e-5
    for k in range(len(TINY.omegas)):  # every permuted tensor differs
        assert not torch.equal(perm[2 * k], params[2 * k]) and not torch.equal(perm[2 * k + 2], params[2 * k + 2])
    assert torch.equal(perm[-1], params[-1])  # the head's bias has no hidden index
    # a wrong permutation (in-dim of the next layer left alone) would change the function
    broken = list(perm)
    broken[2] = params[2]
    assert (forward_chunked(broken, coords, TINY) - f0).abs().max() > 1e-2
    enc = Inr2VecEncoder(TINY, width=64, latent_dim=32).eval()
    with torch.no_grad():
        assert (enc(perm) - enc(params)).abs().max() > 1e-5  # not invariant by design
    aug = augment_params(params, TINY, permute_prob=1.0, noise=0.0, generator=torch.Generator().manual_seed(2))
    assert (forward_chunked(aug, coords, TINY) - f0).abs().max() < 1e-5
    noisy = augment_params(params, TINY, noise=0.01, generator=torch.Generator().manual_seed(3))
    assert not torch.equal(noisy[2], params[2])


def test_decoder_is_deterministic_and_chunking_is_exact():
    torch.manual_seed(0)
    dec = ImplicitDecoder(latent_dim=32, hidden=64, layers=4).eval()
    z = torch.randn(3, 32)
    coords = _coords()
    a = dec.decode(coords, z)
    assert a.shape == (3, coords.shape[0], 3)  # (subjects, points, channels)
    assert torch.equal(a, dec.decode(coords, z))
    assert torch.allclose(a, dec.decode(coords, z, chunk=100), atol=1e-5)
    assert (a[0] - a[1]).abs().max() > 1e-4  # the latent conditions the output
    assert torch.allclose(dec(coords[:50].expand(3, -1, -1), z), a[:, :50], atol=1e-5)


def test_training_loss_falls_on_a_tiny_fitted_cohort(fitted_bank):
    params, coords = fitted_bank, _coords()
    torch.manual_seed(0)
    enc = Inr2VecEncoder(TINY, latent_dim=64, width=64, depth=2).fit_standardization(params)
    model = Inr2VecModel(enc, ImplicitDecoder(latent_dim=64, hidden=96, layers=4, num_freqs=4))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    fixed = sample_batch(params, coords, 512, generator=torch.Generator().manual_seed(9))
    fixed["targets"] = targets_from_inr(fixed["params"], fixed["coords"], TINY)

    def held_loss():
        model.eval()
        with torch.no_grad():
            return float(model.loss(fixed["params"], fixed["coords"], fixed["targets"]))

    start = held_loss()
    aug = functools.partial(augment_params, spec=TINY, noise=0.005, generator=torch.Generator().manual_seed(4))
    for step in range(40):
        batch = sample_batch(params, coords, 512, generator=g)  # no targets: rendered from the INRs
        info = train_step(model, opt, batch, augment=aug if step % 2 else None)
        assert info["loss"] == info["loss"]  # not NaN
    end = held_loss()
    assert end < 0.7 * start, (start, end)
    assert train_step(model, opt, batch, bf16=True)["loss"] < start  # the bf16 autocast path runs too
    m = evaluate(model, params, coords)
    assert set(m) == {"psnr", "dice_myo", "dice_scar", "has_scar"} and m["psnr"].shape == (6,)
    assert not m["has_scar"][0] and m["has_scar"][1] and not torch.isnan(m["dice_scar"][1])  # even subjects have no scar
    assert torch.isnan(m["dice_scar"][0]) or m["dice_scar"][0] == 0  # none decoded (undefined), or some: 0
    # canonical targets work the same way and give the same loss for the INR's own targets
    full_t = targets_from_inr(params, coords, TINY)
    m2 = evaluate(model, params, coords, full_t)
    assert torch.allclose(m["psnr"], m2["psnr"])
    assert torch.allclose(encode_bank(enc, params, batch_size=4), encode_bank(enc, params), atol=1e-5)
    # per-subject grids: the sampled coords of a subject come from its own grid
    per_subject = torch.stack([coords, coords * 0.5])
    b = sample_batch([p[:2] for p in params], per_subject, 64, generator=torch.Generator().manual_seed(1))
    assert b["coords"].shape == (2, 64, 3) and b["coords"][1].abs().max() <= 0.5 < b["coords"][0].abs().max()


def test_other_architecture_is_refused():
    enc = Inr2VecEncoder(TINY, width=32, latent_dim=16)
    enc.check_spec(TINY)  # fine
    other = SirenSpec(hidden_features=64, hidden_layers=2)
    with pytest.raises(DataError, match=r"hidden_features 64 \(encoder: 32\)"):
        enc.check_spec(other, "bank/inr_bank.json")
    with pytest.raises(DataError, match="omega_0 20.0"):
        enc.check_spec(SirenSpec(hidden_features=32, hidden_layers=2, omega_0=20.0))
    with pytest.raises(DataError, match="differ from the encoder's architecture"):
        enc(_random_bank(other, subjects=2))
    bank = InrBank.from_fit(other, seed_init(0), _random_bank(other, subjects=2), [{"id": "a"}, {"id": "b"}])
    with pytest.raises(DataError, match="INR bank: INR architecture differs"):
        encode_bank(enc, bank)
    with pytest.raises(DataError, match="hidden_layers 3"):
        enc.load_state_dict(Inr2VecEncoder(SirenSpec(hidden_features=32, hidden_layers=3), 32, 16).state_dict(), strict=False)


def test_linear_probe_separates_clusters_and_is_at_chance_on_shuffled_labels():
    g = torch.Generator().manual_seed(0)
    n, d = 200, 64
    y = torch.arange(2 * n) % 2
    shift = torch.zeros(d)
    shift[:8] = 1.5  # clusters 2 * 1.5 * sqrt(8) ~ 8.5 std apart
    x = torch.randn(2 * n, d, generator=g) + torch.where(y[:, None] == 1, shift, -shift)
    acc = linear_probe_accuracy(x[:n], y[:n], x[n:], y[n:])
    assert acc >= 0.9, acc
    y_shuf = y[torch.randperm(2 * n, generator=g)]
    chance = linear_probe_accuracy(x[:n], y_shuf[:n], x[n:], y_shuf[n:])
    assert 0.35 <= chance <= 0.65, chance


def test_mask_fidelity_sees_a_dilated_myocardium_and_a_narrowed_cohort():
    import numpy as np
    from scipy import ndimage as ndi

    from lgesynth.inr2vec.fidelity import cohort_fidelity, mask_fidelity

    yy, xx = np.mgrid[:32, :32]
    r = np.hypot(xx - 15.5, yy - 15.5)
    true = np.repeat(((r > 7) & (r < 10)).astype(np.uint8)[..., None], 4, axis=2)
    true[20:, :, :][true[20:, :, :] == 1] = 2  # scar on one side of the ring
    same = mask_fidelity(true, true, (1.5, 1.5, 8.0))
    assert same["myo_ratio"] == 1.0 and same["scar_ratio"] == 1.0 and same["wall_ratio"] == 1.0
    dilated = true.copy()
    grown = ndi.binary_dilation(true > 0, structure=np.ones((3, 3, 1), bool))
    dilated[grown & (true == 0)] = 1
    d = mask_fidelity(dilated, true, (1.5, 1.5, 8.0))
    assert d["myo_ratio"] > 1.3 and d["wall_ratio"] > 1.3 and d["scar_ratio"] == 1.0
    assert d["myo_voxels_decoded"] == int((dilated > 0).sum())
    no_scar = np.where(true == 2, 1, true).astype(np.uint8)
    assert np.isnan(mask_fidelity(no_scar, no_scar, (1.5, 1.5, 8.0))["scar_ratio"])
    # a cohort decoded towards its mean: same median ratio 1, smaller decoded spread
    rows = [{"myo_ratio": t_ / t_, "myo_voxels_true": t_, "myo_voxels_decoded": 100 + (t_ - 100) // 4,
             "scar_voxels_true": 10, "scar_voxels_decoded": 10, "scar_ratio": 1.0, "wall_ratio": 1.0}
            for t_ in (60, 80, 100, 120, 140)]
    summary = cohort_fidelity(rows, "train")
    assert summary["myo_ratio_median_train"] == 1.0
    assert summary["myo_voxels_cv_decoded_train"] < 0.5 * summary["myo_voxels_cv_true_train"]
    with pytest.raises(ValueError, match="different grids"):
        mask_fidelity(true[..., :2], true, (1.5, 1.5, 8.0))


def test_the_final_decoder_is_the_default_checkpoint(tmp_path):
    """Synthesis decodes the training latents' distribution: the final decoder (best on the training subjects)
    is loaded by default, not model_best.pt (best held-out PSNR, which peaks early)."""
    from lgesynth.engines.inr2vec_eval import find_checkpoint

    with pytest.raises(DataError, match="no inr2vec checkpoint"):
        find_checkpoint(tmp_path)
    (tmp_path / "checkpoint_epoch=3.pt").write_bytes(b"")
    assert find_checkpoint(tmp_path).name == "checkpoint_epoch=3.pt"
    (tmp_path / "model_best.pt").write_bytes(b"")
    assert find_checkpoint(tmp_path).name == "model_best.pt"
    (tmp_path / "model_final.pt").write_bytes(b"")
    assert find_checkpoint(tmp_path).name == "model_final.pt"


def test_contrast_fidelity_sees_a_dull_scar_and_a_narrowed_contrast():
    import numpy as np

    from lgesynth.inr2vec.fidelity import cohort_fidelity, mask_fidelity

    def contrast_fidelity(decoded_image, decoded, true_image, true):
        return mask_fidelity(decoded, true, (1.5, 1.5, 8.0), decoded_image, true_image)

    yy, xx = np.mgrid[:32, :32]
    r = np.hypot(xx - 15.5, yy - 15.5)
    label = np.repeat(((r > 7) & (r < 10)).astype(np.uint8)[..., None], 4, axis=2)
    label[20:, :, :][label[20:, :, :] == 1] = 2
    image = np.where(label == 2, 0.8, np.where(label == 1, -0.5, 0.0))
    same = contrast_fidelity(image, label, image, label)
    assert same["contrast_scar_true"] == pytest.approx(1.3) and same["contrast_scar_decoded"] == pytest.approx(1.3)
    dull = np.where(label == 2, 0.2, image)
    assert contrast_fidelity(dull, label, image, label)["contrast_scar_decoded"] == pytest.approx(0.7)
    assert np.isnan(contrast_fidelity(image, np.minimum(label, 1), image, np.minimum(label, 1))["contrast_scar_true"])
    # decoded contrast pulled half-way to the cohort mean and down by 0.1: shift < 0, SD ratio 0.5
    true_c = np.array([0.2, 0.3, 0.4, 0.5, 0.6])
    rows = [{"contrast_scar_true": t, "contrast_scar_decoded": 0.4 + (t - 0.4) / 2 - 0.1} for t in true_c]
    s = cohort_fidelity(rows, "train")
    assert s["contrast_scar_sd_ratio_train"] == pytest.approx(0.5)
    assert s["contrast_scar_shift_sd_train"] == pytest.approx(-0.1 / true_c.std(ddof=1))
