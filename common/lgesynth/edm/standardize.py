"""Standardisation of latents (per dimension, optionally whitened inside the training cohort's span),
and the sigma_data it leaves.

The EDM runs on standardised latents ``u = (w - mean) / std`` with ``mean``, ``std`` (dim,) fitted on
the training latents (``std`` floored at ``eps`` for dimensions that barely vary); samples are
mapped back with ``w = u * std + mean`` before decoding.

**Span** (``components``): n training latents span at most n - 1 directions of the dim-d space (39
of 515 for 40 subjects). An EDM over all d dimensions has no data in the others, and its samples
carry about as much variance outside the cohort's span as inside it: directions the decoder never
saw (docs/experiments.md). With a span the EDM models ``z = (u @ basis.T) / scale`` (k,): the
coordinates of ``u`` along the k leading principal axes of the standardised training latents, each
divided by its SD (whitened); samples map back with ``u = (z * scale) @ basis``, so every sample
lies in the span of the training cohort.

sigma_data (the data scale in the preconditioning, Table 1) is the RMS of all entries of the
standardised training latents, ``sqrt(mean(z^2))``: the preconditioning assumes E[y^2] = sigma_data^2
(second moment about zero, which is what c_in and c_skip use; the variance is the same here since
standardised columns have mean zero). It is 1 up to the ddof of ``std`` when the standardiser was
fitted on the same latents, and smaller when ``eps`` floored some dimensions; estimate it rather than
assume 1, and store it with the model.

File: ``save(path)`` writes safetensors with tensors ``mean`` and ``std`` (dim,) float32, and with a
span also ``basis`` (k, dim) and ``scale`` (k,), atomically.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lgesynth.errors import DataError
from lgesynth.io import atomic_path

SPAN_RTOL = 1e-5  # principal axes whose SD is below this share of the largest carry no cohort variance


class LatentStandardizer(nn.Module):
    """``standardize(w (n, dim)) -> z (n, out_dim)`` and ``destandardize(z) -> w``.

    A module with buffers ``mean``, ``std`` (dim,) and, with a span, ``basis`` (k, dim) orthonormal
    rows and ``scale`` (k,) SDs along them; it moves with ``.to(device)`` and fits into checkpoint
    dicts. :meth:`fit` builds one from training latents.
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, basis: torch.Tensor | None = None,
                 scale: torch.Tensor | None = None):
        super().__init__()
        mean, std = torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32)
        if mean.ndim != 1 or mean.shape != std.shape:
            raise ValueError(f"mean and std must both be (dim,), got {tuple(mean.shape)} and {tuple(std.shape)}")
        if not bool((std > 0).all()):
            raise ValueError("std must be positive in every dimension")
        self.register_buffer("mean", mean.clone())
        self.register_buffer("std", std.clone())
        if (basis is None) != (scale is None):
            raise ValueError("basis and scale come together")
        if basis is not None:
            basis, scale = torch.as_tensor(basis, dtype=torch.float32), torch.as_tensor(scale, dtype=torch.float32)
            if basis.ndim != 2 or basis.shape[1] != mean.shape[0] or scale.shape != (basis.shape[0],):
                raise ValueError(f"basis must be (k, {mean.shape[0]}) and scale (k,), got {tuple(basis.shape)} and "
                                 f"{tuple(scale.shape)}")
            if not bool((scale > 0).all()):
                raise ValueError("scale must be positive along every axis")
            self.register_buffer("basis", basis.clone())
            self.register_buffer("scale", scale.clone())
        else:
            self.basis = self.scale = None

    @classmethod
    def fit(cls, latents: torch.Tensor, eps: float = 1e-6, components: int | str | None = None) -> "LatentStandardizer":
        """Fit on training latents (n, dim), n >= 2: per-column mean and std (ddof 1), std >= eps.

        ``components``: None or ``"all"``: per dimension only (out_dim = dim); ``"span"``: whiten along
        every principal axis that carries variance (at most n - 1); an int k: the k leading ones.
        """
        latents = torch.as_tensor(latents)
        if latents.ndim != 2 or latents.shape[0] < 2:
            raise ValueError(f"latents must be (n >= 2, dim), got {tuple(latents.shape)}")
        if not bool(torch.isfinite(latents).all()):
            raise ValueError("latents contain NaN or inf; check the inr2vec encoding")
        latents = latents.to(torch.float64)
        mean, std = latents.mean(dim=0), latents.std(dim=0).clamp_min(eps)
        if components is None or components == "all":
            return cls(mean, std)
        u = (latents - mean) / std
        _, s, vh = torch.linalg.svd(u, full_matrices=False)
        sd = s / (latents.shape[0] - 1) ** 0.5
        rank = int((sd > SPAN_RTOL * sd[0]).sum()) if sd[0] > 0 else 0
        if components == "span":
            k = rank
        elif isinstance(components, int) and not isinstance(components, bool) and components > 0:
            k = min(int(components), rank)
        else:
            raise ValueError(f"components must be 'all', 'span' or a positive int, got {components!r}")
        if k == 0:
            raise ValueError("the latents do not vary: there is no span to whiten in")
        return cls(mean, std, vh[:k], sd[:k])

    @property
    def dim(self) -> int:
        """The dimension of ``w`` (what is standardised)."""
        return self.mean.shape[0]

    @property
    def out_dim(self) -> int:
        """The dimension of ``z`` (what the EDM models): k with a span, else ``dim``."""
        return self.dim if self.basis is None else self.basis.shape[0]

    def head(self, k: int) -> "LatentStandardizer":
        """The per-dimension standardiser of the first ``k`` dimensions (e.g. the latent without trailing
        scale dims), without the span."""
        if not 0 < k <= self.dim:
            raise ValueError(f"k must be in 1..{self.dim}, got {k}")
        return LatentStandardizer(self.mean[:k], self.std[:k])

    def standardize(self, w: torch.Tensor) -> torch.Tensor:
        """``(n, dim) -> (n, out_dim)``: ``(w - mean) / std``, then along the span's axes when there is one."""
        u = (w - self.mean.to(w.dtype)) / self.std.to(w.dtype)
        return u if self.basis is None else (u @ self.basis.to(w.dtype).T) / self.scale.to(w.dtype)

    def destandardize(self, z: torch.Tensor) -> torch.Tensor:
        """``(n, out_dim) -> (n, dim)``: the inverse of :meth:`standardize` (inside the span)."""
        u = z if self.basis is None else (z * self.scale.to(z.dtype)) @ self.basis.to(z.dtype)
        return u * self.std.to(z.dtype) + self.mean.to(z.dtype)

    def save(self, path: str | Path) -> Path:
        from safetensors.torch import save_file

        tensors = {"mean": self.mean, "std": self.std}
        if self.basis is not None:
            tensors.update(basis=self.basis, scale=self.scale)
        with atomic_path(path) as tmp:
            save_file({k: v.cpu().contiguous() for k, v in tensors.items()}, str(tmp))
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
        if set(tensors) not in ({"mean", "std"}, {"mean", "std", "basis", "scale"}):
            raise DataError(path, f"expected tensors 'mean' and 'std' (and 'basis', 'scale'), found {sorted(tensors)}")
        try:
            return cls(tensors["mean"], tensors["std"], tensors.get("basis"), tensors.get("scale"))
        except ValueError as exc:
            raise DataError(path, str(exc)) from None


def estimate_sigma_data(z: torch.Tensor) -> float:
    """sigma_data = sqrt(mean(z^2)) over all entries of standardised training latents ``z`` (n, dim)."""
    return float(torch.as_tensor(z, dtype=torch.float64).square().mean().sqrt())
