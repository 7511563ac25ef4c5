"""inr2vec's functa-style SirenDecoder: shapes, zero modulation = the base SIREN, the fused sine's
gradient, determinism and chunking, rebuild from its record, and a tiny training run whose loss falls."""

from __future__ import annotations

import pytest
import torch

from conftest import grid_coords, ring_targets

from lgesynth.inr import FitConfig, SirenSpec, batched_forward, fit, init_params
from lgesynth.inr2vec import (
    ImplicitDecoder, Inr2VecEncoder, Inr2VecModel, SirenDecoder, build_decoder, sample_batch, targets_from_inr, train_step,
)
from lgesynth.inr2vec.siren_decoder import ShiftedSine

TINY = SirenSpec(hidden_features=32, hidden_layers=2)
SHAPE = (16, 16, 4)

pytestmark = pytest.mark.usefixtures("one_thread")


def _init(seed=3):
    """A base that is not init_params(spec, 0) (what the decoder builds by default)."""
    return init_params(TINY, seed)


def _randomise_mapping(dec: SirenDecoder, std=0.05, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in dec.mapping.parameters():
            p.copy_(std * torch.randn(p.shape, generator=g))
    return dec


@pytest.mark.parametrize("modulation,mapping_hidden", [("shift", 0), ("scale_shift", 0), ("shift", 16)])
def test_zero_modulation_renders_the_base_siren(modulation, mapping_hidden):
    init = _init()
    dec = SirenDecoder(TINY, latent_dim=8, modulation=modulation, mapping_hidden=mapping_hidden, init=init)
    coords = torch.rand(3, 200, 3) * 2 - 1  # (subjects, points, 3)
    z = torch.randn(3, 8)  # (subjects, latent)
    beta, gamma = dec.modulations(z)
    assert beta.shape == (len(TINY.omegas), 3, 32)  # (sine layers, subjects, hidden)
    assert (gamma is None) == (modulation == "shift")
    out = dec(coords, z)
    assert out.shape == (3, 200, 3)  # (subjects, points, channels)
    ref = batched_forward([p.unsqueeze(0).expand(3, *p.shape) for p in init], coords, TINY)
    assert torch.allclose(out, ref, atol=2e-5, rtol=0)  # the latent does nothing until the mapping learns
    _randomise_mapping(dec)
    assert (dec(coords, z) - ref).abs().max() > 1e-3


def test_shifted_sine_gradient_matches_autograd():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 40, 16, generator=g, requires_grad=True)  # (subjects, points, width)
    b = (0.1 * torch.randn(2, 16, generator=g)).requires_grad_()  # (subjects, width)
    w = torch.randn(2, 40, 16, generator=g)
    (ShiftedSine.apply(z, b, 30.0) * w).sum().backward()
    got = z.grad.clone(), b.grad.clone()
    z.grad = b.grad = None
    (torch.sin(30.0 * (z + b.unsqueeze(1))) * w).sum().backward()
    for a, r in zip(got, (z.grad, b.grad)):
        assert torch.allclose(a, r, atol=1e-4 * float(r.abs().max()), rtol=0)


def test_decode_is_deterministic_chunked_and_rebuilt_from_its_record():
    torch.manual_seed(0)
    dec = _randomise_mapping(SirenDecoder(TINY, latent_dim=8, modulation="scale_shift", init=_init())).eval()
    coords = grid_coords(SHAPE, 0.5)  # (points, 3)
    z = torch.randn(3, 8)
    a = dec.decode(coords, z)
    assert a.shape == (3, coords.shape[0], 3)
    assert torch.equal(a, dec.decode(coords, z))
    assert torch.allclose(a, dec.decode(coords, z, chunk=100), atol=1e-5)
    assert (a[0] - a[1]).abs().max() > 1e-3  # the latent conditions the output
    # inr2vec_model.json / generator.json carry config(); the base weights come with the state dict
    record = dec.config()
    assert record["kind"] == "siren" and "init" not in record
    again = build_decoder(record)
    again.load_state_dict(dec.state_dict())
    assert torch.equal(again.eval().decode(coords, z), a)
    # records written before decoder kinds existed rebuild the Fourier decoder
    old = {"latent_dim": 8, "hidden": 16, "layers": 3, "num_freqs": 2, "in_features": 3, "out_features": 3}
    assert isinstance(build_decoder(old), ImplicitDecoder) and build_decoder(old).config() == {"kind": "fourier", **old, "intensity": "field", "tissue_sharpness": 1.0}
    with pytest.raises(ValueError, match="needs the bank's SIREN architecture"):
        build_decoder({"kind": "siren", "latent_dim": 8})


def test_training_from_the_bank_init_lowers_the_loss():
    coords = grid_coords(SHAPE, 0.5)
    with torch.no_grad():
        targets = ring_targets(4, SHAPE, 0, radius=(0.3, 0.2), wedge=1.5)
    init = init_params(TINY, 0)
    res = fit(targets, coords, init, TINY, FitConfig(max_steps=80, batch_size=4, points=None, lr=1e-3, early_stop=False))
    params = res.params
    torch.manual_seed(0)
    enc = Inr2VecEncoder(TINY, latent_dim=32, width=32, depth=2).fit_standardization(params, per_element=True)
    dec = build_decoder({"kind": "siren", "latent_dim": 32}, spec=TINY, init=init)
    model = Inr2VecModel(enc, dec)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    fixed = sample_batch(params, coords, 512, generator=torch.Generator().manual_seed(9))
    fixed["targets"] = targets_from_inr(fixed["params"], fixed["coords"], TINY)

    def held_loss():
        with torch.no_grad():
            return float(model.eval().loss(fixed["params"], fixed["coords"], fixed["targets"]))

    start = held_loss()
    for _ in range(40):
        info = train_step(model, opt, sample_batch(params, coords, 512, generator=g))
        assert info["loss"] == info["loss"]  # not NaN
    assert held_loss() < 0.7 * start
