"""Conditions of the latent EDM: scar burden and scar pattern, as vectors and as embeddings.

Condition vector (batch, cond_dim), columns in this order, each optional:
    burden    1 column : scar volume / myocardium volume, a fraction in [0, 1]
    pattern   3 columns: one-hot over ``SCAR_PATTERNS`` (none, ischemic, non_ischemic)
so ``cond_dim`` is 1 (burden), 3 (pattern) or 4 (both).

:class:`ConditionEmbedding` maps a condition vector to the denoiser's embedding space and holds the
learned null embedding used for classifier-free guidance: rows whose ``cond_mask`` is False (dropped
in training) or a missing ``cond`` (unconditional sampling) get the null embedding.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

SCAR_PATTERNS = ("none", "ischemic", "non_ischemic")


def scar_condition(burden: torch.Tensor | Sequence[float] | None = None,
                   pattern: torch.Tensor | Sequence[int | str] | None = None) -> torch.Tensor:
    """Condition vectors (batch, cond_dim) float32 from a scar burden (batch,) and/or pattern (batch,).

    ``pattern`` holds indices into ``SCAR_PATTERNS`` or their names.
    """
    columns = []
    if burden is not None:
        burden = torch.as_tensor(burden, dtype=torch.float32).reshape(-1)
        if burden.numel() and not bool(((burden >= 0) & (burden <= 1)).all()):
            raise ValueError(f"scar burden must be a fraction in [0, 1], got values {burden.min().item():.3g}..{burden.max().item():.3g}")
        columns.append(burden[:, None])
    if pattern is not None:
        if not isinstance(pattern, torch.Tensor):
            pattern = [SCAR_PATTERNS.index(p) if isinstance(p, str) else int(p) for p in pattern]
        pattern = torch.as_tensor(pattern, dtype=torch.long).reshape(-1)
        columns.append(nn.functional.one_hot(pattern, len(SCAR_PATTERNS)).to(torch.float32))
    if not columns:
        raise ValueError("scar_condition needs a burden, a pattern or both")
    if len(columns) == 2 and columns[0].shape[0] != columns[1].shape[0]:
        raise ValueError(f"burden and pattern differ in length: {columns[0].shape[0]} vs {columns[1].shape[0]}")
    return torch.cat(columns, dim=1)


class ConditionEmbedding(nn.Module):
    """``(cond (batch, cond_dim) | None, cond_mask (batch,) bool | None, batch) -> (batch, emb_dim)``.

    A two-layer MLP of the condition vector, replaced by a learned null embedding where ``cond_mask``
    is False or ``cond`` is None.
    """

    def __init__(self, cond_dim: int, emb_dim: int):
        super().__init__()
        self.cond_dim = cond_dim
        self.mlp = nn.Sequential(nn.Linear(cond_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.null = nn.Parameter(torch.zeros(emb_dim))

    def forward(self, cond: torch.Tensor | None, cond_mask: torch.Tensor | None, batch: int) -> torch.Tensor:
        null = self.null.expand(batch, -1)
        if cond is None:
            return null
        if cond.shape != (batch, self.cond_dim):
            raise ValueError(f"cond must have shape ({batch}, {self.cond_dim}), got {tuple(cond.shape)}")
        emb = self.mlp(cond.to(self.null.dtype))
        if cond_mask is None:
            return emb
        return torch.where(cond_mask.reshape(-1, 1), emb, null)
