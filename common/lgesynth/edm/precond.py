"""EDM preconditioning (Karras et al. 2022, Table 1, "EDM" column; eq. 7).

The network ``F_theta`` never sees the raw noisy input. It is wrapped as

    D_theta(x; sigma) = c_skip(sigma) x + c_out(sigma) F_theta(c_in(sigma) x; c_noise(sigma))     (7)

with

    c_skip  = sigma_data^2 / (sigma^2 + sigma_data^2)
    c_out   = sigma sigma_data / sqrt(sigma^2 + sigma_data^2)
    c_in    = 1 / sqrt(sigma^2 + sigma_data^2)
    c_noise = ln(sigma) / 4

so that, for data of second moment sigma_data^2, both the input and the training target of
``F_theta`` have unit variance at every sigma (paper, appendix B.6).

Conventions of the wrapped model ``F``: ``F(x_in (batch, *dims), c_noise (batch,), cond, cond_mask)
-> (batch, *dims)``; see :class:`lgesynth.edm.denoiser.LatentDenoiser`.
"""

from __future__ import annotations

import torch
from torch import nn


def edm_preconditioning(sigma: torch.Tensor, sigma_data: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(c_skip, c_out, c_in, c_noise)`` at noise level ``sigma`` (Table 1), each shaped like ``sigma``."""
    sigma = torch.as_tensor(sigma)
    c_skip = sigma_data ** 2 / (sigma ** 2 + sigma_data ** 2)
    c_out = sigma * sigma_data / (sigma ** 2 + sigma_data ** 2).sqrt()
    c_in = 1 / (sigma_data ** 2 + sigma ** 2).sqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


class EDMPrecond(nn.Module):
    """The denoiser ``D(x; sigma[, cond])`` of eq. 7 around a raw network ``model``.

    Args:
        model: ``F_theta``; called as ``model(c_in * x, c_noise, cond, cond_mask)``.
        sigma_data: second moment (RMS) of the training data, see
            :func:`lgesynth.edm.standardize.estimate_sigma_data`.

    ``forward(x (batch, *dims), sigma (batch,) or scalar, cond=None, cond_mask=None) -> D (batch, *dims)``
    in ``x``'s dtype. The model runs in its own parameter dtype (float32), the skip path in ``x``'s
    dtype, so the sampler can integrate in float64 as the reference does. ``cond`` (batch, cond_dim)
    and ``cond_mask`` (batch,) bool (False = treat the row as unconditional) pass through to ``model``.
    """

    def __init__(self, model: nn.Module, sigma_data: float = 1.0):
        super().__init__()
        self.model = model
        self.sigma_data = float(sigma_data)

    def forward(self, x: torch.Tensor, sigma, cond: torch.Tensor | None = None,
                cond_mask: torch.Tensor | None = None) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1).expand(x.shape[0])
        c_skip, c_out, c_in, c_noise = edm_preconditioning(sigma.reshape(-1, *[1] * (x.ndim - 1)), self.sigma_data)
        dtype = next((p.dtype for p in self.model.parameters()), torch.float32)
        F_x = self.model((c_in * x).to(dtype), c_noise.reshape(-1).to(dtype), cond, cond_mask)
        D_x = c_skip * x + c_out * F_x.to(x.dtype)
        return D_x
