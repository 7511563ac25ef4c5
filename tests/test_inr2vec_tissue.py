"""inr2vec's tissue rendering (``intensity="tissue"``): the myocardium's intensity follows its decoded
tissue, so a latent between two subjects cannot mark scar where the image is remote-dark; records round-trip."""

from __future__ import annotations

import pytest
import torch

from lgesynth.inr.siren import SirenSpec
from lgesynth.inr2vec import build_decoder
from lgesynth.inr2vec.tissue import TissueIntensity

TINY = SirenSpec(hidden_features=32, hidden_layers=2)

pytestmark = pytest.mark.usefixtures("one_thread")


def _levels(head: TissueIntensity, remote: float, scar: float) -> TissueIntensity:
    """Constant remote and scar levels, whatever the latent (no gradients across the heart)."""
    with torch.no_grad():
        head.levels.weight.zero_()
        head.levels.bias.zero_()
        head.levels.bias[0], head.levels.bias[1 + head.in_features] = remote, scar
    return head


def test_inside_the_myocardium_the_intensity_is_the_tissue_level_mixed_by_the_scar_probability():
    head = _levels(TissueIntensity(latent_dim=4), remote=-0.6, scar=0.8)
    g = torch.Generator().manual_seed(0)
    raw = torch.randn(2, 500, 3, generator=g) * 4
    raw[..., 1] = torch.sign(raw[..., 1]) * 12  # deep inside (p_m ~ 1 - 6e-6) or far outside the myocardium
    coords, latent = torch.rand(2, 500, 3, generator=g) * 2 - 1, torch.randn(2, 4, generator=g)
    out = head(raw, coords, latent)
    p_m, p_s = torch.sigmoid(raw[..., 1]), torch.sigmoid(raw[..., 2])
    inside = p_m > 0.999
    assert inside.sum() > 20 and (p_m < 1e-3).sum() > 20
    # deep inside the myocardium: remote + p_s (scar - remote), the field F plays no part
    assert torch.allclose(out[..., 0][inside], (-0.6 + 1.4 * p_s)[inside], atol=1e-3)
    # far outside it: the field itself
    outside = p_m < 1e-3
    assert torch.allclose(out[..., 0][outside], raw[..., 0][outside], atol=1e-3)
    assert torch.equal(out[..., 1:], raw[..., 1:])  # the logits pass through
    # wherever the decoded label says scar (both probabilities > 0.5), the intensity is nearer scar than remote
    # once the field is out of the way; a field-rendered image has no such floor
    scar_voxels = inside & (p_s > 0.5)
    assert scar_voxels.sum() > 10 and bool((out[..., 0][scar_voxels] >= 0.1 - 1e-3).all())


def test_a_blend_of_two_subjects_keeps_its_scar_bright():
    """Subject A has scar on the left, B on the right (overlapping in the middle); their fields are dark on the
    whole myocardium. Mixing their outputs 0.6 / 0.4 marks A's scar and the overlap, and every marked voxel
    keeps at least half the scar contrast under tissue rendering (field rendering would leave it at -0.5)."""
    head = _levels(TissueIntensity(latent_dim=2), remote=-0.5, scar=0.5)
    coords = torch.linspace(-1, 1, 101).view(1, -1, 1).expand(1, -1, 3).contiguous()
    x = coords[..., 0]
    scar_a, scar_b = torch.where(x < 0.2, 6.0, -6.0), torch.where(x > -0.2, 6.0, -6.0)
    raw_mid = torch.stack([torch.full_like(x, -0.5), torch.full_like(x, 8.0), 0.6 * scar_a + 0.4 * scar_b], dim=-1)
    out = head(raw_mid, coords, torch.zeros(1, 2))[..., 0]
    marked = torch.sigmoid(raw_mid[..., 2]) > 0.5
    assert int(marked.sum()) > 50  # A's scar (x < -0.2) and the overlap
    assert bool((out[marked] > 0.0).all())  # remote -0.5 + at least half of the 1.0 contrast


@pytest.mark.parametrize("kind", ["siren", "fourier"])
def test_the_record_rebuilds_a_tissue_decoder_and_an_old_record_the_field_one(kind):
    config = {"kind": kind, "latent_dim": 8, "intensity": "tissue"}
    if kind == "siren":
        config["spec"] = TINY.to_dict()
    config["tissue_sharpness"] = 2.0
    dec = build_decoder(config)
    with torch.no_grad():
        for p in dec.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    rebuilt = build_decoder(dec.config())
    rebuilt.load_state_dict(dec.state_dict())
    coords, latent = torch.rand(2, 64, 3) * 2 - 1, torch.randn(2, 8)
    assert torch.equal(dec(coords, latent), rebuilt(coords, latent))
    assert dec.config()["intensity"] == "tissue" and rebuilt.tissue.sharpness == 2.0
    old = {k: v for k, v in config.items() if k not in ("intensity", "tissue_sharpness")}
    assert build_decoder(old).config()["intensity"] == "field" and build_decoder(old).tissue is None
    assert build_decoder({**old, "intensity": "tissue"}).tissue.sharpness == 1.0  # a record before the key
    # the levels learn from the intensity loss
    dec(coords, latent)[..., 0].square().sum().backward()
    assert dec.tissue.levels.weight.grad.abs().sum() > 0


def test_a_sharper_mix_renders_a_weakly_marked_scar_nearer_the_scar_level_and_leaves_clear_tissue():
    """Where the scar logit is small and positive (a latent between a subject with scar there and one without),
    k = 3 renders the voxel nearer the scar level than k = 1; where the logit is clear either way, both agree."""
    raw = torch.tensor([[[0.0, 12.0, 0.5], [0.0, 12.0, 1.0], [0.0, 12.0, 9.0], [0.0, 12.0, -9.0]]])
    coords, latent = torch.zeros(1, 4, 3), torch.zeros(1, 2)
    soft, sharp = (_levels(TissueIntensity(latent_dim=2, sharpness=k), remote=-0.5, scar=0.5)(raw, coords, latent)[0, :, 0]
                   for k in (1.0, 3.0))
    assert bool((sharp[:2] > soft[:2] + 0.1).all())
    assert torch.allclose(sharp[2:], soft[2:], atol=1e-3)
    assert torch.allclose(sharp[:2], -0.5 + torch.sigmoid(3.0 * raw[0, :2, 2]), atol=1e-4)


def test_an_unknown_intensity_kind_or_a_mix_without_sharpness_is_refused():
    with pytest.raises(ValueError, match="intensity must be one of"):
        build_decoder({"kind": "fourier", "latent_dim": 8, "intensity": "texture"})
    with pytest.raises(ValueError, match="tissue_sharpness must be > 0"):
        build_decoder({"kind": "fourier", "latent_dim": 8, "intensity": "tissue", "tissue_sharpness": 0.0})
