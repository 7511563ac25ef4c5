"""The scar-weighted intensity term of eq. (1) and the decoder's latent noise."""

from __future__ import annotations

import pytest
import torch

from lgesynth.inr import SirenSpec, init_params, stack_params
from lgesynth.inr.loss import LossWeights, joint_loss, joint_loss_grad
from lgesynth.inr2vec import ImplicitDecoder, Inr2VecEncoder, Inr2VecModel

pytestmark = pytest.mark.usefixtures("one_thread")


def _targets(points=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    myo = (torch.rand(2, points, generator=g) < 0.5).float()
    scar = myo * (torch.rand(2, points, generator=g) < 0.4).float()
    return torch.stack([torch.rand(2, points, generator=g) * 2 - 1, myo, scar], -1)


def test_scar_intensity_weights_the_intensity_error_inside_scar_only():
    target = _targets()
    pred = target.clone()
    pred[..., 1:] = torch.where(target[..., 1:] > 0.5, 20.0, -20.0)  # masks right: BCE ~ 0
    scar = target[..., 2] > 0.5
    w0, w4 = LossWeights(1.0, 1.0), LossWeights(1.0, 1.0, scar_intensity=4.0)
    for where, factor in ((scar, 5.0), (~scar, 1.0)):
        p = pred.clone()
        p[..., 0] = torch.where(where, p[..., 0] + 0.5, p[..., 0])
        assert torch.allclose(joint_loss(p, target, w4), factor * joint_loss(p, target, w0), rtol=1e-4, atol=1e-6)


def test_hand_written_gradient_matches_autograd_with_the_scar_term():
    target = _targets(seed=1)
    pred = (torch.randn(target.shape, generator=torch.Generator().manual_seed(2))).requires_grad_(True)
    w = LossWeights(0.3, 0.7, scar_intensity=4.0)
    joint_loss(pred, target, w).sum().backward()
    dpred = torch.empty_like(pred)
    joint_loss_grad(pred.detach(), target, dpred, w)
    assert torch.allclose(dpred, pred.grad, atol=1e-6)


def _model(noise):
    torch.manual_seed(0)
    spec = SirenSpec(hidden_features=16, hidden_layers=1)
    params = [p + 0.1 * torch.randn(p.shape) for p in stack_params(init_params(spec, 0), 4)]
    enc = Inr2VecEncoder(spec, latent_dim=16, width=32, depth=2).fit_standardization(params)
    return Inr2VecModel(enc, ImplicitDecoder(latent_dim=16, hidden=32, layers=2, num_freqs=2), latent_noise=noise), params


def test_latent_noise_perturbs_training_forwards_only():
    coords = torch.rand(4, 32, 3) * 2 - 1
    model, params = _model(0.5)
    clean = model.decoder(coords, model.encode(params))
    model.eval()
    assert torch.equal(model(params, coords), clean)
    model.train()
    assert not torch.allclose(model(params, coords), clean, atol=1e-4)
    quiet, params = _model(0.0)
    assert torch.equal(quiet(params, coords), quiet.decoder(coords, quiet.encode(params)))
