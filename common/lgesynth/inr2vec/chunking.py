"""Decoding in chunks of points, shared by both decoder kinds (``decoder``, ``siren_decoder``)."""

from __future__ import annotations

import torch
from torch import nn


def decode_chunked(decoder: nn.Module, coords: torch.Tensor, latent: torch.Tensor, chunk: int = 32768) -> torch.Tensor:
    """``decoder(coords, latent)`` in chunks of points: ``coords (points, 3)`` shared or ``(subjects, points, 3)``,
    ``latent (subjects, latent_dim)`` -> ``(subjects, points, out_features)``."""
    S = latent.shape[0]
    if coords.dim() == 2:
        coords = coords.unsqueeze(0).expand(S, -1, -1)
    return torch.cat([decoder(coords[:, s: s + chunk], latent) for s in range(0, coords.shape[1], chunk)], dim=1)
