"""Intensity rendered from the decoded tissue inside the myocardium (a decoder's ``intensity="tissue"``).

A decoder's raw outputs are an intensity field ``F``, a myocardium logit and a scar logit per point. With
``intensity="field"`` the image is ``F``: scar brightness is whatever ``F`` holds there, independent of the
scar logit. Then a latent between two subjects renders an average of their intensity fields, and where one
subject had scar the blend is half as bright while the thresholded scar mask still marks it scar: the
samples' scar is dull (docs/experiments.md, "edm_synth: Are the samples' dull scar and narrow spreads the EDM's
or the decoder's? (phantom)").

``intensity="tissue"`` renders the myocardium from its tissue classes instead:

    p_m = sigmoid(myocardium logit),  p_s = sigmoid(k * scar logit)
    R(x) = r_0(z) + r(z) . x           remote myocardium: an offset and an in-plane/through-plane gradient
    S(x) = s_0(z) + s(z) . x           scar, the same
    I(x) = (1 - p_m) F(x) + p_m ((1 - p_s) R(x) + p_s S(x))

with ``(r_0, r, s_0, s) = T z + t`` one linear map of the latent (8 numbers for 3-d coordinates; the
gradients carry a coil's bias field across the heart) and ``k`` the mix's sharpness (``tissue_sharpness``,
default 1: the scar mask's own probability; k > 1 renders a voxel whose scar logit is small but positive,
as in a latent between subjects with and without scar there, nearer the scar level; measured and not
adopted: docs/experiments.md, "inr2vec: Does a sharper tissue mix keep the samples' scar as bright as the
cohort's?"). Wherever the decoded scar mask is set (scar logit > 0, so p_s > 0.5 for any k), the
intensity is at least half way from remote to scar, whatever latent it came from, so image and masks
agree by construction; outside the myocardium nothing changes. The price: the myocardium's texture (noise,
grey zone) is not rendered, only its two tissue levels blended at soft mask edges.
"""

from __future__ import annotations

import torch
from torch import nn

INTENSITY_KINDS = ("field", "tissue")


def tissue_head(intensity: str, latent_dim: int, in_features: int = 3,
                sharpness: float = 1.0) -> "TissueIntensity | None":
    """A decoder's rendering for its ``intensity`` kind: a :class:`TissueIntensity` (mix ``sharpness`` k) for
    ``"tissue"``, None for ``"field"`` (the raw intensity channel is the image); anything else is refused."""
    if intensity not in INTENSITY_KINDS:
        raise ValueError(f"intensity must be one of {INTENSITY_KINDS}, got {intensity!r}")
    if not sharpness > 0:
        raise ValueError(f"tissue_sharpness must be > 0, got {sharpness!r}")
    return TissueIntensity(latent_dim, in_features, sharpness) if intensity == "tissue" else None


class TissueIntensity(nn.Module):
    """``forward(raw (subjects, points, 3), coords (subjects, points, d), latent (subjects, latent_dim))`` -> the
    same shape with channel 0 replaced by ``I(x)`` of the module doc; channels 1-2 (the logits) pass through.

    The map ``T`` starts at zero (both tissues at intensity 0, mid-grey in canonical units) and learns the
    levels from the intensity loss, which reaches it only through the myocardium's points.
    """

    def __init__(self, latent_dim: int, in_features: int = 3, sharpness: float = 1.0):
        super().__init__()
        self.in_features, self.sharpness = in_features, float(sharpness)
        self.levels = nn.Linear(latent_dim, 2 * (1 + in_features))
        with torch.no_grad():
            self.levels.weight.zero_()
            self.levels.bias.zero_()

    def forward(self, raw: torch.Tensor, coords: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        raw = raw.float()  # in float32 under bf16 autocast too: a few ops per point beside the network's GEMMs
        c = self.levels(latent.float()).float().view(latent.shape[0], 2, 1 + self.in_features)  # (subjects, tissue, 1 + d)
        level = c[:, :, :1].transpose(1, 2) + torch.matmul(coords.float(), c[:, :, 1:].transpose(1, 2)).float()
        p_m, p_s = torch.sigmoid(raw[..., 1]), torch.sigmoid(self.sharpness * raw[..., 2])
        tissue = torch.lerp(level[..., 0], level[..., 1], p_s)  # (subjects, points)
        intensity = torch.lerp(raw[..., 0], tissue, p_m)
        return torch.cat([intensity.unsqueeze(-1), raw[..., 1:]], dim=-1)
