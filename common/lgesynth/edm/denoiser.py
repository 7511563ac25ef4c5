"""The raw network F_theta for latent vectors: a residual MLP with adaptive normalisation.

Layout (for ``dim`` = 512 latents; EDM's ``UNetBlock`` with linear layers instead of convolutions):

    c_noise (batch,) -> noise features (positional or Fourier, ``noise_channels``) -> MLP -> emb
    [+ ConditionEmbedding(cond, cond_mask)]                                            (batch, emb_dim)
    x (batch, dim) -> Linear -> h (batch, hidden)
    ``blocks`` x ResidualBlock:
        r = Linear(SiLU(LayerNorm(h)))
        scale, shift = Linear(SiLU(emb))                 (adaptive scale/shift, per block)
        r = Linear(Dropout(SiLU(LayerNorm(r) * (1 + scale) + shift)))     (last Linear zero-initialised)
        h = (h + r) / sqrt(2)
    h -> LayerNorm -> SiLU -> Linear -> F (batch, dim)   (zero-initialised: D = c_skip x at start)
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lgesynth.edm.condition import ConditionEmbedding


class PositionalEmbedding(nn.Module):
    """Transformer sinusoids of a scalar: frequencies ``(1 / max_positions)^(k / (C/2 - 1))``, k < C/2.

    ``(batch,) -> (batch, num_channels)`` as ``[cos(f x), sin(f x)]``.
    """

    def __init__(self, num_channels: int, max_positions: int = 10000):
        super().__init__()
        half = num_channels // 2
        self.register_buffer("freqs", (1 / max_positions) ** (torch.arange(half, dtype=torch.float32) / max(half - 1, 1)),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1, 1) * self.freqs.to(x.dtype)
        return torch.cat([x.cos(), x.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features of a scalar, ``freqs ~ N(0, scale^2)`` fixed at construction (seed it).

    ``(batch,) -> (batch, num_channels)`` as ``[cos(2 pi f x), sin(2 pi f x)]``.
    """

    def __init__(self, num_channels: int, scale: float = 1.0):
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1, 1) * (2 * math.pi * self.freqs.to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)


class ResidualBlock(nn.Module):
    """``(h (batch, hidden), emb (batch, emb_dim)) -> (batch, hidden)``; see the module docstring."""

    def __init__(self, hidden: int, emb_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm0 = nn.LayerNorm(hidden)
        self.linear0 = nn.Linear(hidden, hidden)
        self.affine = nn.Linear(emb_dim, 2 * hidden)
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False)
        self.dropout = nn.Dropout(dropout)
        self.linear1 = nn.Linear(hidden, hidden)
        nn.init.zeros_(self.linear1.weight)
        nn.init.zeros_(self.linear1.bias)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        r = self.linear0(nn.functional.silu(self.norm0(h)))
        scale, shift = self.affine(emb).chunk(2, dim=1)
        r = nn.functional.silu(self.norm1(r) * (1 + scale) + shift)
        r = self.linear1(self.dropout(r))
        return (h + r) / math.sqrt(2)


class LatentDenoiser(nn.Module):
    """F_theta for (batch, dim) latents; wrap it in :class:`~lgesynth.edm.precond.EDMPrecond`.

    Args:
        dim: latent size (512 for inr2vec).
        hidden: width of the residual stream.
        blocks: number of residual blocks.
        cond_dim: size of the condition vector (see :mod:`lgesynth.edm.condition`), 0 = unconditional.
        emb_dim: width of the sigma (+ condition) embedding.
        noise_channels: number of sinusoidal features of c_noise.
        noise_embedding: ``"positional"`` (deterministic) or ``"fourier"`` (random frequencies).
        dropout: dropout rate inside the blocks.

    ``forward(x_in (batch, dim), c_noise (batch,), cond=None, cond_mask=None) -> (batch, dim)``.
    """

    def __init__(self, dim: int = 512, hidden: int = 1024, blocks: int = 4, cond_dim: int = 0, emb_dim: int = 256,
                 noise_channels: int = 128, noise_embedding: str = "positional", dropout: float = 0.0):
        super().__init__()
        self.dim, self.cond_dim = dim, cond_dim
        if noise_embedding == "positional":
            self.map_noise = PositionalEmbedding(noise_channels)
        elif noise_embedding == "fourier":
            self.map_noise = FourierEmbedding(noise_channels)
        else:
            raise ValueError(f"noise_embedding must be 'positional' or 'fourier', got {noise_embedding!r}")
        self.map_emb = nn.Sequential(nn.Linear(noise_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.map_cond = ConditionEmbedding(cond_dim, emb_dim) if cond_dim > 0 else None
        self.input = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(ResidualBlock(hidden, emb_dim, dropout) for _ in range(blocks))
        self.out_norm = nn.LayerNorm(hidden)
        self.output = nn.Linear(hidden, dim)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond: torch.Tensor | None = None,
                cond_mask: torch.Tensor | None = None) -> torch.Tensor:
        batch = x.shape[0]
        emb = self.map_emb(self.map_noise(c_noise.reshape(-1).expand(batch)))
        if self.map_cond is not None:
            emb = emb + self.map_cond(cond, cond_mask, batch)
        elif cond is not None:
            raise ValueError("this LatentDenoiser is unconditional (cond_dim=0) but was given a cond")
        emb = nn.functional.silu(emb)
        h = self.input(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.output(nn.functional.silu(self.out_norm(h)))
