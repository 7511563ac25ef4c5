"""EDM training loss (Karras et al. 2022, sec. 5 and Table 1) with classifier-free guidance dropout.

    ln(sigma) ~ N(P_mean, P_std^2)                                                  (Table 1, p_train)
    lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2                  (Table 1, lambda)
    L = E_{sigma, y, n} [ lambda(sigma) || D(y + n; sigma) - y ||^2 ],  n ~ N(0, sigma^2 I)   (eq. 8)

lambda(sigma) = 1 / c_out(sigma)^2, so the loss equals ``|| F - F_target ||^2`` with a target of unit
variance: a network that outputs zeros scores 1 per element on data of second moment sigma_data^2.

Classifier-free guidance (Ho & Salimans 2022): with probability ``p_uncond`` a sample's condition is
dropped, i.e. its ``cond_mask`` entry is False and the network uses its learned null embedding.
"""

from __future__ import annotations

import torch


class EDMLoss:
    """``loss(net, y (batch, *dims), cond=None) -> scalar`` (or per element with ``reduction="none"``).

    Args:
        P_mean, P_std: log-normal training distribution of sigma.
        sigma_data: the same value the net's :class:`~lgesynth.edm.precond.EDMPrecond` uses.
        p_uncond: probability of dropping the condition of a sample (0 = never; only used when
            ``cond`` is given).

    ``net`` is a preconditioned denoiser ``net(x, sigma (batch,), cond, cond_mask) -> D``.
    """

    def __init__(self, P_mean: float = -1.2, P_std: float = 1.2, sigma_data: float = 1.0, p_uncond: float = 0.0):
        if not 0.0 <= p_uncond <= 1.0:
            raise ValueError(f"p_uncond must be in [0, 1], got {p_uncond}")
        self.P_mean = P_mean
        self.P_std = P_std
        self.sigma_data = sigma_data
        self.p_uncond = p_uncond

    def sample_sigma(self, n: int, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` noise levels from p_train: ``exp(P_mean + P_std * N(0, 1))``, shape (n,)."""
        rnd_normal = torch.randn(n, device=device, generator=generator)
        return (rnd_normal * self.P_std + self.P_mean).exp()

    def weight(self, sigma: torch.Tensor) -> torch.Tensor:
        """lambda(sigma) of Table 1."""
        return (sigma ** 2 + self.sigma_data ** 2) / (sigma * self.sigma_data) ** 2

    def __call__(self, net, y: torch.Tensor, cond: torch.Tensor | None = None, reduction: str = "mean",
                 generator: torch.Generator | None = None) -> torch.Tensor:
        batch = y.shape[0]
        sigma = self.sample_sigma(batch, device=y.device, generator=generator)
        weight = self.weight(sigma).reshape(-1, *[1] * (y.ndim - 1))
        n = torch.randn(y.shape, dtype=y.dtype, device=y.device, generator=generator) * sigma.reshape(weight.shape)
        cond_mask = None
        if cond is not None:
            cond_mask = torch.rand(batch, device=y.device, generator=generator) >= self.p_uncond
        D_yn = net(y + n, sigma, cond, cond_mask)
        loss = weight * (D_yn - y) ** 2
        if reduction == "none":
            return loss
        if reduction == "mean":
            return loss.mean()
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
