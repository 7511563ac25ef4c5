"""Per-dimension standardisation of latents, and the sigma_data it leaves.

The EDM runs on standardised latents ``z = (w - mean) / std`` with ``mean``, ``std`` (dim,) fitted on
the training latents (``std`` floored at ``eps`` for dimensions that barely vary); samples are
mapped back with ``w = z * std + mean`` before decoding.

sigma_data (the data scale in the preconditioning, Table 1) is the RMS of all entries of the
standardised training latents, ``sqrt(mean(z^2))``: the preconditioning assumes E[y^2] = sigma_data^2
(second moment about zero, which is what c_in and c_skip use; the variance is the same here since
standardised columns have mean zero). It is 1 up to the ddof of ``std`` when the standardiser was
fitted on the same latents, and smaller when ``eps`` floored some dimensions; estimate it rather than
assume 1, and store it with the model.

File: ``save(path)`` writes safetensors with tensors ``mean`` and ``std`` (dim,) float32, atomically.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lgesynth.errors import DataError
from lgesynth.io import atomic_path


class LatentStandardizer(nn.Module):
    """``standardize(w (n, dim)) -> z`` and ``destandardize(z) -> w`` with per-dimension mean/std.

    A module with buffers ``mean``, ``std`` (dim,), so it moves with ``.to(device)`` and fits into
    checkpoint dicts; :meth:`fit` builds one from training latents.
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        mean, std = torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32)
        if mean.ndim != 1 or mean.shape != std.shape:
            raise ValueError(f"mean and std must both be (dim,), got {tuple(mean.shape)} and {tuple(std.shape)}")
        if not bool((std > 0).all()):
            raise ValueError("std must be positive in every dimension")
        self.register_buffer("mean", mean.clone())
        self.register_buffer("std", std.clone())

    @classmethod
    def fit(cls, latents: torch.Tensor, eps: float = 1e-6) -> "LatentStandardizer":
        """Fit on training latents (n, dim), n >= 2: per-column mean and std (ddof 1), std >= eps."""
        latents = torch.as_tensor(latents)
        if latents.ndim != 2 or latents.shape[0] < 2:
            raise ValueError(f"latents must be (n >= 2, dim), got {tuple(latents.shape)}")
        if not bool(torch.isfinite(latents).all()):
            raise ValueError("latents contain NaN or inf; check the inr2vec encoding")
        latents = latents.to(torch.float64)
        return cls(latents.mean(dim=0), latents.std(dim=0).clamp_min(eps))

    @property
    def dim(self) -> int:
        return self.mean.shape[0]

    def head(self, k: int) -> "LatentStandardizer":
        """The standardiser of the first ``k`` dimensions (e.g. the latent without trailing scale dims)."""
        if not 0 < k <= self.dim:
            raise ValueError(f"k must be in 1..{self.dim}, got {k}")
        return LatentStandardizer(self.mean[:k], self.std[:k])

    def standardize(self, w: torch.Tensor) -> torch.Tensor:
        """``(n, dim) -> (n, dim)``: ``(w - mean) / std``."""
        return (w - self.mean.to(w.dtype)) / self.std.to(w.dtype)

    def destandardize(self, z: torch.Tensor) -> torch.Tensor:
        """``(n, dim) -> (n, dim)``: ``z * std + mean``."""
        return z * self.std.to(z.dtype) + self.mean.to(z.dtype)

    def save(self, path: str | Path) -> Path:
        from safetensors.torch import save_file

        with atomic_path(path) as tmp:
            save_file({"mean": self.mean.cpu().contiguous(), "std": self.std.cpu().contiguous()}, str(tmp))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "LatentStandardizer":
        from safetensors.torch import load_file

        path = Path(path)
        if not path.exists():
            raise DataError(path, "standardiser file not found; fit it on the training latents (LatentStandardizer.fit(...).save(path))")
        try:
            tensors = load_file(str(path))
        except Exception as exc:  # safetensors raises several types for corrupt files
            raise DataError(path, f"cannot read as safetensors ({type(exc).__name__}: {exc})") from None
        if set(tensors) != {"mean", "std"}:
            raise DataError(path, f"expected tensors 'mean' and 'std', found {sorted(tensors)}")
        return cls(tensors["mean"], tensors["std"])


def estimate_sigma_data(z: torch.Tensor) -> float:
    """sigma_data = sqrt(mean(z^2)) over all entries of standardised training latents ``z`` (n, dim)."""
    return float(torch.as_tensor(z, dtype=torch.float64).square().mean().sqrt())
