"""Implicit decoder: canonical coordinates + latent -> (intensity, myocardium logit, scar logit).

A ReLU MLP on Fourier features of the coordinates, conditioned on the latent by FiLM (per layer a
scale and a shift computed from the latent), with an inr2vec-style skip that re-injects the
coordinate features half way:

    phi(x)  = [x, sin(pi 2^k x), cos(pi 2^k x)]_{k < num_freqs}              (NeRF positional encoding)
    (gamma_l, beta_l) = FiLM_l(z)                                            per subject, per layer
    h_0     = relu((A_0 phi + a_0) * (1 + gamma_0) + beta_0)
    h_l     = relu((A_l h_{l-1} + a_l) * (1 + gamma_l) + beta_l) [+ S phi at l = layers // 2]
    f(x, z) = H h_{L-1} + c

Conditioning is per subject, so it costs ``subjects x hidden`` per layer, not ``points x latent``
(concatenating a 512-d latent to every point, as inr2vec does, would triple the first GEMM). The
FiLM scale is folded into per-subject weights, ``A_l diag(1 + gamma_l)``, so a layer is one batched
GEMM and a ReLU (1.7x faster than Linear + scale + shift on CPU; 4.7x under bf16 autocast).
``num_freqs=7`` reaches pi 2^6 ~ 200 rad per unit: about Nyquist of a 96-voxel axis over [-1, 1].
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lgesynth.inr2vec.chunking import decode_chunked
from lgesynth.inr2vec.siren_decoder import SirenDecoder
from lgesynth.inr2vec.tissue import tissue_head


class FourierFeatures(nn.Module):
    """``coords (..., d) -> (..., d (1 + 2 num_freqs))``: the coordinates, then sin and cos per band."""

    def __init__(self, in_features: int = 3, num_freqs: int = 7):
        super().__init__()
        self.in_features, self.num_freqs = in_features, num_freqs
        self.register_buffer("freqs", math.pi * 2.0 ** torch.arange(num_freqs, dtype=torch.float32), persistent=False)

    @property
    def out_features(self) -> int:
        return self.in_features * (1 + 2 * self.num_freqs)

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        arg = (coords.unsqueeze(-1) * self.freqs).flatten(-2)  # (..., d * num_freqs)
        return torch.cat([coords, torch.sin(arg), torch.cos(arg)], dim=-1)


class ImplicitDecoder(nn.Module):
    """``f(coords (subjects, points, 3), latent (subjects, latent_dim)) -> (subjects, points, out_features)``.

    ``decoder_args: {kind: fourier, ...}``; the other kind is ``siren_decoder.SirenDecoder`` (``build_decoder``).

    Args:
        latent_dim: size of the latent.
        hidden: width of the MLP.
        layers: hidden layers (each Linear + FiLM + ReLU); the head is extra.
        num_freqs: Fourier bands of the coordinate features.
        out_features: 3 = intensity, myocardium logit, scar logit.
        intensity: ``"field"`` (the head's channel 0) or ``"tissue"`` (the myocardium rendered from its
            decoded tissue classes, ``inr2vec.tissue``).
        tissue_sharpness: k of the tissue mix ``sigmoid(k * scar logit)`` (``inr2vec.tissue``; 1: the scar
            mask's own probability).
    """

    kind = "fourier"

    def __init__(self, latent_dim: int = 512, hidden: int = 256, layers: int = 5, num_freqs: int = 7,
                 in_features: int = 3, out_features: int = 3, intensity: str = "field",
                 tissue_sharpness: float = 1.0):
        super().__init__()
        self.latent_dim, self.hidden, self.layers = latent_dim, hidden, layers
        self.features = FourierFeatures(in_features, num_freqs)
        n_feat = self.features.out_features
        self.linears = nn.ModuleList([nn.Linear(n_feat, hidden)] + [nn.Linear(hidden, hidden) for _ in range(layers - 1)])
        self.skip_at = layers // 2 if layers > 2 else None
        self.skip = nn.Linear(n_feat, hidden) if self.skip_at is not None else None
        self.film = nn.Linear(latent_dim, 2 * layers * hidden)
        with torch.no_grad():  # start near the identity modulation
            self.film.weight.mul_(0.1)
            self.film.bias.zero_()
        self.head = nn.Linear(hidden, out_features)
        self.intensity, self.tissue_sharpness = intensity, float(tissue_sharpness)
        self.tissue = tissue_head(intensity, latent_dim, in_features, self.tissue_sharpness)

    @property
    def out_features(self) -> int:
        return self.head.out_features

    def config(self) -> dict:
        """Constructor arguments, with ``kind`` (what ``build_decoder`` takes back)."""
        return {"kind": self.kind, "latent_dim": self.latent_dim, "hidden": self.hidden, "layers": self.layers,
                "num_freqs": self.features.num_freqs, "in_features": self.features.in_features,
                "out_features": self.head.out_features, "intensity": self.intensity,
                "tissue_sharpness": self.tissue_sharpness}

    def modulations(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``latent (subjects, latent_dim)`` -> ``gamma, beta: (layers, subjects, 1, hidden)``."""
        m = self.film(latent).view(latent.shape[0], self.layers, 2, self.hidden)
        return m[:, :, 0].transpose(0, 1).unsqueeze(2), m[:, :, 1].transpose(0, 1).unsqueeze(2)

    def forward(self, coords: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        assert coords.dim() == 3 and latent.dim() == 2 and coords.shape[0] == latent.shape[0], (coords.shape, latent.shape)
        phi = self.features(coords)
        gamma, beta = self.modulations(latent)
        h = phi
        for layer, lin in enumerate(self.linears):
            # FiLM folded into per-subject weights: (h A + a)(1 + gamma) + beta = h (A diag(1 + gamma)) + ...
            scale = 1.0 + gamma[layer]  # (subjects, 1, hidden)
            w = lin.weight.t().unsqueeze(0) * scale  # (subjects, in, hidden)
            h = torch.relu(torch.baddbmm(torch.addcmul(beta[layer], lin.bias, scale), h, w))
            if layer == self.skip_at:
                h = h + self.skip(phi)
        raw = self.head(h)
        return raw if self.tissue is None else self.tissue(raw, coords, latent)

    @torch.no_grad()
    def decode(self, coords: torch.Tensor, latent: torch.Tensor, chunk: int = 32768) -> torch.Tensor:
        """``forward`` chunked over points; ``coords (points, 3)`` shared or ``(subjects, points, 3)``."""
        return decode_chunked(self, coords, latent, chunk)


def build_decoder(config: dict, spec=None, init: list[torch.Tensor] | None = None) -> nn.Module:
    """A decoder from its ``config()`` (``inr2vec_model.json``, ``generator.json``) or ``decoder_args``.

    ``kind``: ``"fourier"`` (``ImplicitDecoder``; also when absent, as in records written before kinds
    existed) or ``"siren"`` (``SirenDecoder``; ``spec`` is the bank's architecture unless the config
    records one, ``init`` the bank's init weights; without ``init`` the checkpoint must supply them).
    """
    args = dict(config)
    kind = args.pop("kind", ImplicitDecoder.kind)
    if kind == ImplicitDecoder.kind:
        return ImplicitDecoder(**args)
    if kind == SirenDecoder.kind:
        args.setdefault("spec", spec)
        if args["spec"] is None:
            raise ValueError("a siren decoder needs the bank's SIREN architecture (spec)")
        return SirenDecoder(init=init, **args)
    raise ValueError(f"decoder kind must be 'fourier' or 'siren', got {kind!r}")
