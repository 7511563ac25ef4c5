"""INR core: SIREN init, batched == single, fused sine gradients, fitting, early stop, bank, render."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import grid_coords, ring_targets

from lgesynth.errors import DataError
from lgesynth.inr import (
    BatchFitter, FitConfig, InrBank, MetaConfig, SineFn, Siren, SirenSpec, Workspace, batched_forward, fit, init_params,
    joint_loss, load_bank, load_init, merge_banks, meta_learn_init, render, render_volume, save_bank, save_init,
    seed_init, stack_params,
)
from lgesynth.inr.loss import joint_loss_grad, psnr

TINY = SirenSpec(hidden_features=32, hidden_layers=2)
SHAPE = (16, 16, 4)


pytestmark = pytest.mark.usefixtures("one_thread")


def _coords(shape=SHAPE, z_extent=0.5):
    return grid_coords(shape, z_extent)


def _cohort(n=3, shape=SHAPE, seed=0):
    """Ring 'myocardium', scar wedge on odd subjects, smooth background (conftest.ring_targets)."""
    return ring_targets(n, shape, seed, radius=(0.35, 0.1), wedge=1.2)


def test_init_identical_across_subjects_and_follows_siren_bounds():
    a, b = init_params(TINY, 7), init_params(TINY, 7)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not torch.equal(a[2], init_params(TINY, 8)[2])
    fan_in = TINY.hidden_features
    assert a[0].abs().max() <= 1 / 3 and a[2].abs().max() <= (6 / fan_in) ** 0.5 / TINY.omega_0
    targets = _cohort(3)
    fitter = BatchFitter(TINY, targets, _coords(), FitConfig(points=256, batch_size=3))
    fitter.add([0, 1, 2], a)
    for p in fitter.view(fitter.params):
        assert torch.equal(p[0], p[1]) and torch.equal(p[0], p[2])
    assert all(torch.equal(p, q) for p, q in zip(Siren(TINY, seed=7).params(), a))


def test_batched_equals_separate_single_models():
    torch.manual_seed(0)
    B = 3
    params = [p + 0.05 * torch.randn_like(p) for p in stack_params(init_params(TINY, 0), B)]
    coords = torch.rand(B, 200, 3) * 2 - 1
    batched = batched_forward(params, coords, TINY)
    ws = Workspace(TINY, 4, 200)
    manual = ws.forward(params, coords)
    for b in range(B):
        single = Siren(TINY).load_params([p[b] for p in params])
        ref = single(coords[b])
        assert torch.allclose(batched[b], ref, atol=1e-5)
        # the fitting path folds omega into the GEMM (omega*(h@W) + omega*b): fp32 rounding only
        assert torch.allclose(manual[b], ref, atol=1e-4)


def test_fused_sine_gradcheck_and_manual_backward_match_autograd():
    z = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: SineFn.apply(t, 30.0), (z,))
    # a whole tiny SIREN through the sine path, float64
    tiny = SirenSpec(hidden_features=6, hidden_layers=1)
    x = torch.rand(7, 3, dtype=torch.float64) * 2 - 1
    params = tuple(p.double().requires_grad_() for p in init_params(tiny, 0))
    assert torch.autograd.gradcheck(lambda *p: batched_forward([q.unsqueeze(0) for q in p], x, tiny), params,
                                    eps=1e-6, atol=1e-4)
    # the hand-written batched backward equals autograd through the reference path
    B, P = 2, 64
    params = [p + 0.02 * torch.randn_like(p) for p in stack_params(init_params(TINY, 1), B)]
    coords = torch.rand(B, P, 3) * 2 - 1
    target = _cohort(2)[:, :P]
    ref_p = [p.clone().requires_grad_() for p in params]
    joint_loss(batched_forward(ref_p, coords, TINY), target).sum().backward()
    ws = Workspace(TINY, B, P)
    out = ws.forward(params, coords)
    dout = torch.empty_like(out)
    joint_loss_grad(out, target, dout)
    grads = [torch.empty_like(p) for p in params]
    ws.backward(dout, grads)
    for g, r in zip(grads, ref_p):
        assert torch.allclose(g, r.grad, rtol=1e-4, atol=1e-5 * float(r.grad.abs().max()))


def test_short_fit_raises_psnr():
    targets, coords = _cohort(2), _coords()
    cfg = FitConfig(max_steps=150, points=None, batch_size=2, lr=1e-3, early_stop=False)
    init = init_params(TINY, 0)
    before = psnr((render(stack_params(init, 1), coords, TINY)[0][0] - targets[0, :, 0]).square().mean())
    res = fit(targets, coords, init, TINY, cfg)
    assert res.steps == [150, 150]
    assert min(res.psnr) > float(before) + 8, (float(before), res.psnr)
    assert min(res.dice_myo) > 0.8


def test_early_stopped_subjects_stop_changing():
    targets, coords = _cohort(3), _coords()
    targets[0, :, 0] = -0.2  # subject 0: flat image, easy
    cfg = FitConfig(max_steps=200, points=512, batch_size=2, lr=1e-3, check_every=5, target_psnr=22.0,
                    target_dice_myo=0.7, target_dice_scar=0.5, gate_db=30.0)
    seen, snapshots = [], {}

    def callback(info):
        seen.append(list(info.subjects))
        for s, ps in info.finished_params.items():
            snapshots[s] = (info.step, [p.clone() for p in ps])

    res = fit(targets, coords, init_params(TINY, 0), TINY, cfg, callback)
    assert snapshots, "no subject finished early"
    for s, (step, ps) in snapshots.items():
        assert res.reached[s] and res.steps[s] < cfg.max_steps
        assert all(torch.equal(a, b[s]) for a, b in zip(ps, res.params))  # unchanged since it finished
        assert all(s not in active for active in seen[step:])  # never trained again
    assert 2 in [s for active in seen for s in active]  # the queued third subject got a freed slot


def test_full_grid_check_only_after_the_precheck_subset_meets_the_targets(monkeypatch):
    """The cheap pre-check (a fixed quarter of the grid) filters the costly full-grid stop checks; the
    stop itself is still decided on the full grid."""
    targets, coords = _cohort(3), _coords()
    cfg = FitConfig(max_steps=200, points=512, batch_size=2, lr=1e-3, check_every=5, target_psnr=22.0,
                    target_dice_myo=0.7, target_dice_scar=0.5, gate_db=30.0, gate_dice=1.0)  # gate: always
    calls, evaluate = [], BatchFitter.evaluate

    def spy(self, positions=None, precheck=False):
        m = evaluate(self, positions, precheck)
        calls.append((precheck, [int(self.rows[p]) for p in positions], m, len(self.precheck_idx)))
        return m

    monkeypatch.setattr(BatchFitter, "evaluate", spy)
    res = fit(targets, coords, init_params(TINY, 0), TINY, cfg)
    grid = targets.shape[1]
    assert all(n == round(0.25 * grid) for *_, n in calls)

    def meets(m, j):  # the scar target only for a subject with scar
        return (float(m["psnr"][j]) >= 22.0 and float(m["dice_myo"][j]) >= 0.7
                and (not bool(m["has_scar"][j]) or float(m["dice_scar"][j]) >= 0.5))

    failed_prechecks = 0
    for i, (pre, subjects, m, _) in enumerate(calls):
        if pre:
            failed_prechecks += sum(not meets(m, j) for j in range(len(subjects)))
            continue
        prev_pre, prev_subjects, prev_m, _ = calls[i - 1]
        assert prev_pre and set(subjects) <= set(prev_subjects)
        assert all(meets(prev_m, prev_subjects.index(s)) for s in subjects)  # only subjects that passed it
    assert failed_prechecks > 0 and any(not pre for pre, *_ in calls)
    for s in range(3):
        if res.reached[s]:
            assert res.psnr[s] >= 22.0 and res.dice_myo[s] >= 0.7  # the stop is the full grid's
    calls.clear()
    off = fit(targets, coords, init_params(TINY, 0), TINY, FitConfig(**{**cfg.to_dict(), "precheck_fraction": 1.0}))
    assert calls and not any(pre for pre, *_ in calls) and sum(off.reached) == sum(res.reached)


def test_a_subjects_fit_does_not_depend_on_its_batch_mates():
    """What makes a torchrun fit equal the one-process fit: subject 2, fitted after a refill beside
    subject 0 or 1, or alone, or first in another batch, draws the same points and ends the same."""
    targets, coords = _cohort(3), _coords()
    cfg = FitConfig(max_steps=60, points=256, batch_size=2, lr=1e-3, check_every=5, target_psnr=22.0,
                    target_dice_myo=0.7, target_dice_scar=0.5)
    init = init_params(TINY, 0)
    together = fit(targets, coords, init, TINY, cfg)
    alone = fit(targets[2:], coords, init, TINY, cfg, subject_ids=[2])
    other_order = fit(targets[[2, 0]], coords, init, TINY, cfg, subject_ids=[2, 0])
    for res, row in ((alone, 0), (other_order, 0)):
        assert res.steps[row] == together.steps[2] and res.psnr[row] == pytest.approx(together.psnr[2], abs=1e-3)
        for p, q in zip(res.params, together.params):
            torch.testing.assert_close(p[row], q[2], rtol=0, atol=1e-5)  # GEMM summation order only (bitwise on 1 CPU thread)
    assert other_order.steps[1] == together.steps[0]
    shifted = fit(targets[2:], coords, init, TINY, cfg, subject_ids=[7])  # another id: other points, another fit
    assert not torch.equal(shifted.params[0][0], together.params[0][2])


def test_boundary_focus_draws_from_both_sides_of_every_mask_edge():
    from lgesynth.inr.sampling import PointSampler, boundary_band, grid_shape

    square = torch.zeros(1, 7, 7, 2, dtype=torch.bool)
    square[0, 2:5, 2:5] = True  # a 3 x 3 square in both slices
    band = boundary_band(square)
    assert int(band[0, ..., 0].sum()) == 8 + 12  # its 8 edge voxels and the 12 outside voxels touching them
    assert not band[0, 3, 3, 0] and band[0, 2, 2, 0] and band[0, 1, 3, 0] and not band[0, 1, 1, 0]  # centre, edge, side, corner
    assert torch.equal(band[..., 0], band[..., 1])  # in-plane only
    assert grid_shape(_coords()) == SHAPE and grid_shape(_coords().expand(2, -1, -1)) == SHAPE
    with pytest.raises(ValueError, match="regular C-order grid"):
        grid_shape(torch.rand(SHAPE[0] * SHAPE[1] * SHAPE[2], 3))
    targets, coords = _cohort(2), _coords()
    sampler = PointSampler(coords, targets, 400, focus_fraction=0.5, generator=torch.Generator().manual_seed(0),
                           focus="boundary")
    _, t = sampler.sample(torch.tensor([0, 1]))
    vol = targets.view(2, *SHAPE, 3)
    edges = (boundary_band(vol[..., 1] > 0.5) | boundary_band(vol[..., 2] > 0.5)).view(2, -1)
    idx = sampler.idx_buf  # the drawn grid indices: the first 200 of each subject from its edge band
    assert all(bool(edges[b, idx[b, :200]].all()) for b in range(2))
    assert float(edges[0, idx[0, 200:]].float().mean()) < 0.6  # the rest uniform over the grid
    assert 0 < float(t[..., 1].mean()) < 1  # the band straddles the myocardium: points inside and outside it
    with pytest.raises(ValueError, match="focus must be"):
        PointSampler(coords, targets, 400, focus="edges")


@pytest.mark.parametrize("focus", ["myocardium", "boundary"])
def test_weighted_sampled_loss_is_an_unbiased_estimate_of_the_full_grid_loss(focus):
    """The importance-weighted mean over drawn points has the full-grid loss as its expectation; the plain
    mean of the same draws does not (it over-weights the focus: the bias that dilates decoded masks)."""
    from lgesynth.inr.loss import LossWeights, joint_loss
    from lgesynth.inr.sampling import PointSampler

    targets, coords = _cohort(3), _coords()
    pred = torch.randn(3, coords.shape[0], 3, generator=torch.Generator().manual_seed(1))
    pred[..., 1] += 4 * (targets[..., 1] - 0.5)  # a fair but imperfect myocardium logit: loss differs by region
    weights = LossWeights(myo=1.0, scar=1.0)
    full = joint_loss(pred, targets, weights)  # (3,)
    sampler = PointSampler(coords, targets, 256, focus_fraction=0.5, generator=torch.Generator().manual_seed(0), focus=focus)
    rows = torch.arange(3)
    flat_pred = pred.reshape(-1, 3)
    weighted, plain = torch.zeros(3), torch.zeros(3)
    draws = 400
    for _ in range(draws):
        _, t, w = sampler.sample(rows, with_weights=True)
        p = flat_pred[(sampler.idx_buf[:3] + rows.unsqueeze(1) * coords.shape[0]).view(-1)].view(3, -1, 3)
        weighted += joint_loss(p, t, weights, w) / draws
        plain += joint_loss(p, t, weights) / draws
    torch.testing.assert_close(weighted, full, rtol=0.03, atol=0)
    assert float(((plain - full).abs() / full).min()) > 0.05  # the unweighted draw is visibly biased
    uniform = PointSampler(coords, targets, 256, focus_fraction=0.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(uniform.sample(rows, with_weights=True)[2], torch.ones(3, 256))
    no_focus = targets.clone()
    no_focus[1, :, 1:] = 0  # a subject without myocardium draws uniformly: weight 1
    _, _, w = PointSampler(coords, no_focus, 256, 0.5, torch.Generator().manual_seed(0), focus).sample(rows, with_weights=True)
    assert torch.equal(w[1], torch.ones(256)) and not torch.equal(w[0], torch.ones(256))


def _bank(n=3, init=None, ids=None):
    params = [p + 0.01 * torch.randn_like(p) for p in stack_params(init_params(TINY, 0), n)]
    subjects = [{"id": i, "source": {"image": f"{i}.nii.gz"}, "canonical": {"crop_start": [1, 2, 0]},
                 "normalisation": {"lo": 0.0, "hi": 200.0}, "psnr": 31.0, "dice_myo": 0.96, "dice_scar": None,
                 "steps": 100} for i in (ids or [f"s{k}" for k in range(n)])]
    return InrBank.from_fit(TINY, init or seed_init(0), params, subjects, {"lr": 1e-4})


def test_bank_round_trip_and_merge(tmp_path):
    bank = _bank()
    save_bank(bank, tmp_path / "a")
    back = load_bank(tmp_path / "a", spec=TINY, init=seed_init(0))
    assert back.ids == bank.ids and back.subjects == json.loads(json.dumps(bank.subjects))
    assert all(torch.equal(a, b) for a, b in zip(back.stacked(), bank.stacked()))
    assert all(torch.equal(a, b) for a, b in zip(back.params("s1"), bank.params(1)))
    # meta-learned init stored beside the bank, verified by checksum
    theta = [p * 1.1 for p in init_params(TINY, 0)]
    meta = save_init(tmp_path / "m", theta, TINY, {"method": "reptile"})
    save_bank(_bank(2, init=meta), tmp_path / "m")
    assert all(torch.equal(a, b) for a, b in zip(load_init(tmp_path / "m", meta, TINY), theta))
    assert load_bank(tmp_path / "m", init=meta).init["sha256"] == meta["sha256"]
    # merge partial banks (resume / ranks)
    merged = merge_banks([bank, _bank(2, ids=["t0", "t1"])])
    assert merged.ids == ["s0", "s1", "s2", "t0", "t1"] and merged.stacked()[0].shape[0] == 5
    with pytest.raises(DataError, match="two of the banks"):
        merge_banks([bank, bank])
    with pytest.raises(DataError, match="different inits"):
        merge_banks([bank, _bank(2, init=seed_init(1), ids=["u0", "u1"])])


def test_bank_mismatch_refused_naming_the_file(tmp_path):
    save_bank(_bank(), tmp_path)
    with pytest.raises(DataError, match=r"inr_bank\.json.*architecture"):
        load_bank(tmp_path, spec=SirenSpec(hidden_features=64, hidden_layers=2))
    with pytest.raises(DataError, match=r"inr_bank\.json.*init seed 0 differs"):
        load_bank(tmp_path, init=seed_init(1))
    meta = save_init(tmp_path / "m", init_params(TINY, 0), TINY)
    save_bank(_bank(2, init=meta), tmp_path / "m")
    save_init(tmp_path / "m", init_params(TINY, 5), TINY)  # someone overwrote the init
    with pytest.raises(DataError, match=r"inr_init\.safetensors.*checksum"):
        load_bank(tmp_path / "m")
    (tmp_path / "inr_bank.safetensors").write_bytes(b"\0" * 16)
    with pytest.raises(DataError, match=r"inr_bank\.safetensors"):
        load_bank(tmp_path)


def test_meta_init_and_render_volume():
    targets, coords = _cohort(4), _coords()
    cfg = FitConfig(points=256, lr=1e-3)
    theta, record = meta_learn_init(targets, coords, init_params(TINY, 0), TINY, cfg,
                                    MetaConfig(outer_steps=4, inner_steps=3, meta_batch=2, points=256))
    assert record["method"] == "reptile" and all(torch.isfinite(p).all() for p in theta)
    assert not torch.equal(theta[2], init_params(TINY, 0)[2])
    image, label = render_volume(theta, coords, SHAPE, TINY, chunk=100)
    assert image.shape == SHAPE and label.dtype.name == "uint8" and set(label.ravel().tolist()) <= {0, 1, 2}
    inten, myo, scar = render(stack_params(theta, 2), coords, TINY, chunk=333)
    assert inten.shape == (2, coords.shape[0]) and float(myo.min()) >= 0 and float(scar.max()) <= 1


def test_fused_sincos_kernel_matches_torch():
    from lgesynth.inr import fastsin

    z = torch.randn(2, 300, 16) * 20
    bias = torch.randn(2, 16)
    for dtype, tol in ((torch.float32, 2e-5), (torch.bfloat16, 5e-3)):
        zz = z.to(dtype)
        s, c = torch.empty_like(zz), zz.clone()
        fastsin.sincos(c, s, c, bias, 30.0)  # cos written over its input, as the fitting path does
        ref = zz.float() + 30.0 * bias.unsqueeze(1)
        assert torch.allclose(s.float(), ref.sin(), atol=tol) and torch.allclose(c.float(), ref.cos(), atol=tol)
