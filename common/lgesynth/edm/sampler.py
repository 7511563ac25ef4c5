"""EDM sampler (Karras et al. 2022, Algorithm 2): Heun's 2nd-order method on the probability-flow
ODE with optional stochastic churn, and classifier-free guidance.

Time steps (eq. 5), i = 0 .. N-1, and sigma_N = 0:

    sigma_i = (sigma_max^(1/rho) + i / (N - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho     (5)

Step i (Algorithm 2, lines 4-10):

    gamma_i   = min(S_churn / N, sqrt(2) - 1)  if S_min <= sigma_i <= S_max  else 0
    sigma_hat = (1 + gamma_i) sigma_i
    x_hat     = x_i + sqrt(sigma_hat^2 - sigma_i^2) eps,  eps ~ N(0, S_noise^2 I)
    d_i       = (x_hat - D(x_hat; sigma_hat)) / sigma_hat        (dx/dsigma: eq. 1 with the score of eq. 3)
    x_{i+1}   = x_hat + (sigma_{i+1} - sigma_hat) d_i                          (Euler step)
    if sigma_{i+1} != 0:                                                       (2nd-order correction)
        d'_i    = (x_{i+1} - D(x_{i+1}; sigma_{i+1})) / sigma_{i+1}
        x_{i+1} = x_hat + (sigma_{i+1} - sigma_hat) (d_i / 2 + d'_i / 2)

Classifier-free guidance with weight w (Ho & Salimans 2022):
    D_w = D(x; sigma, none) + w (D(x; sigma, cond) - D(x; sigma, none))
w = 1 is the plain conditional model, w = 0 the unconditional one, w > 1 sharpens the condition.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch


def edm_sigma_steps(num_steps: int = 18, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                    device=None) -> torch.Tensor:
    """sigma_0 > ... > sigma_{N-1} of eq. 5 followed by sigma_N = 0; shape (num_steps + 1,), float64."""
    if num_steps < 2:
        raise ValueError(f"num_steps must be >= 2, got {num_steps}")
    i = torch.arange(num_steps, dtype=torch.float64, device=device)
    sigma = (sigma_max ** (1 / rho) + i / (num_steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([sigma, torch.zeros_like(sigma[:1])])


def guided_denoise(net, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor | None = None,
                   guidance: float = 1.0) -> torch.Tensor:
    """``D_w(x; sigma, cond)``: conditional, unconditional (``cond=None``) or guided; in float64."""
    if cond is None or guidance == 0.0:
        return net(x, sigma, None).to(torch.float64)
    D_cond = net(x, sigma, cond).to(torch.float64)
    if guidance == 1.0:
        return D_cond
    D_uncond = net(x, sigma, None).to(torch.float64)
    return D_uncond + guidance * (D_cond - D_uncond)


@torch.no_grad()
def edm_sampler(net, noise: torch.Tensor | Sequence[int], num_steps: int = 18, sigma_min: float = 0.002,
                sigma_max: float = 80.0, rho: float = 7.0, S_churn: float = 0.0, S_min: float = 0.0,
                S_max: float = math.inf, S_noise: float = 1.0, cond: torch.Tensor | None = None,
                guidance: float = 1.0, generator: torch.Generator | None = None, device=None,
                return_trajectory: bool = False):
    """Draw samples from ``net`` with Algorithm 2.

    Args:
        net: a denoiser ``net(x (batch, *dims), sigma (batch,), cond) -> D (batch, *dims)``, e.g.
            :class:`~lgesynth.edm.precond.EDMPrecond` or its EMA.
        noise: a unit Gaussian (batch, *dims) tensor, or a shape to draw it from ``generator``.
        num_steps, sigma_min, sigma_max, rho: the time steps of eq. 5 (N = ``num_steps``; the net is
            evaluated 2N - 1 times, twice that with guidance).
        S_churn, S_min, S_max, S_noise: stochasticity (Algorithm 2); ``S_churn=0`` is the deterministic
            Heun sampler (Algorithm 1).
        cond: (batch, cond_dim) condition, or None for unconditional sampling.
        guidance: classifier-free guidance weight w (ignored without ``cond``).
        generator: the source of the initial noise (when a shape is given) and of the churn noise;
            the same seed gives the same samples.
        device: where to draw noise from a shape (default: the generator's device, else CPU).
        return_trajectory: also return every x_i.

    Returns:
        ``x_N`` (batch, *dims) float32, and with ``return_trajectory`` the tuple
        ``(x_N, trajectory (num_steps + 1, batch, *dims))``, ``trajectory[0] = sigma_0 * noise``.
    """
    if isinstance(noise, torch.Tensor):
        latents = noise
    else:
        device = device if device is not None else (generator.device if generator is not None else "cpu")
        latents = torch.randn(tuple(noise), generator=generator, device=device)
    batch = latents.shape[0]
    t_steps = edm_sigma_steps(num_steps, sigma_min, sigma_max, rho, device=latents.device)

    x_next = latents.to(torch.float64) * t_steps[0]
    trajectory = [x_next]
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):  # 0, ..., N-1
        x_cur = x_next

        # Increase noise temporarily (churn).
        gamma = min(S_churn / num_steps, math.sqrt(2) - 1) if S_min <= t_cur <= S_max else 0.0
        t_hat = t_cur + gamma * t_cur
        x_hat = x_cur
        if gamma > 0:
            eps = torch.randn(x_cur.shape, generator=generator, device=x_cur.device).to(torch.float64)
            x_hat = x_cur + (t_hat ** 2 - t_cur ** 2).sqrt() * S_noise * eps

        # Euler step.
        denoised = guided_denoise(net, x_hat, t_hat.expand(batch), cond, guidance)
        d_cur = (x_hat - denoised) / t_hat
        x_next = x_hat + (t_next - t_hat) * d_cur

        # 2nd-order correction, except at the last step (sigma_N = 0).
        if i < num_steps - 1:
            denoised = guided_denoise(net, x_next, t_next.expand(batch), cond, guidance)
            d_prime = (x_next - denoised) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
        trajectory.append(x_next)

    if return_trajectory:
        return x_next.to(torch.float32), torch.stack(trajectory).to(torch.float32)
    return x_next.to(torch.float32)
