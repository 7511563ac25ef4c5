"""EDM (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models") on
inr2vec latents. Torch only; the ignite engine and bundle configs build on these pieces.

API (shapes: ``batch`` samples of ``dim``-d latents):

- ``EDMPrecond(model, sigma_data=1.0)`` (precond.py): the denoiser
  ``D(x (batch, dim), sigma (batch,) | scalar, cond=None, cond_mask=None) -> (batch, dim)`` of eq. 7;
  ``edm_preconditioning(sigma, sigma_data) -> (c_skip, c_out, c_in, c_noise)`` (Table 1).
- ``EDMLoss(P_mean=-1.2, P_std=1.2, sigma_data=1.0, p_uncond=0.0)`` (loss.py):
  ``loss(net, y, cond=None, reduction="mean"|"none", generator=None)``; ``sample_sigma(n)``,
  ``weight(sigma)``; drops the condition of a sample with probability ``p_uncond`` (CFG training).
- ``edm_sampler(net, noise | shape, num_steps=18, sigma_min=0.002, sigma_max=80, rho=7, S_churn=0,
  S_min=0, S_max=inf, S_noise=1, cond=None, guidance=1.0, generator=None, device=None,
  return_trajectory=False) -> x (batch, dim) [, trajectory (num_steps + 1, batch, dim)]`` (sampler.py,
  Algorithm 2); ``edm_sigma_steps(num_steps, sigma_min, sigma_max, rho)`` (eq. 5);
  ``guided_denoise(net, x, sigma, cond, guidance)``.
- ``LatentDenoiser(dim=512, hidden=1024, blocks=4, cond_dim=0, emb_dim=256, noise_channels=128,
  noise_embedding="positional"|"fourier", dropout=0.0)`` (denoiser.py): F_theta,
  ``forward(x_in, c_noise, cond=None, cond_mask=None)``; residual MLP with adaptive scale/shift.
- ``scar_condition(burden=None, pattern=None) -> cond (batch, 1 | 3 | 4)``, ``SCAR_PATTERNS``,
  ``ConditionEmbedding(cond_dim, emb_dim)`` with a learned null embedding (condition.py).
- ``EMA(model, decay=None, halflife_kimg=None, batch_size=None, rampup_ratio=0.05)`` (ema.py): a
  ``torch.optim.swa_utils.AveragedModel``; ``ema_beta(halflife_kimg, batch_size, cur_nimg, rampup_ratio)``.
- ``LatentStandardizer.fit(latents (n, dim), eps=1e-6)``, ``.standardize``, ``.destandardize``, ``.head(k)``,
  ``.save(path)``, ``LatentStandardizer.load(path)``; ``estimate_sigma_data(z)`` (standardize.py).

Typical use::

    std = LatentStandardizer.fit(train_latents); z = std.standardize(train_latents)
    net = EDMPrecond(LatentDenoiser(dim=512, cond_dim=4), sigma_data=estimate_sigma_data(z))
    ema = EMA(net, halflife_kimg=0.5, batch_size=64); loss_fn = EDMLoss(sigma_data=net.sigma_data, p_uncond=0.1)
    loss = loss_fn(net, z_batch, cond_batch); loss.backward(); opt.step(); ema.update_parameters(net)
    w = std.destandardize(edm_sampler(ema, (16, 512), cond=cond, guidance=2.0,
                                      generator=torch.Generator().manual_seed(0)))
"""

from lgesynth.edm.condition import SCAR_PATTERNS, ConditionEmbedding, scar_condition
from lgesynth.edm.denoiser import LatentDenoiser
from lgesynth.edm.ema import EMA, ema_beta
from lgesynth.edm.loss import EDMLoss
from lgesynth.edm.precond import EDMPrecond, edm_preconditioning
from lgesynth.edm.sampler import edm_sampler, edm_sigma_steps, guided_denoise
from lgesynth.edm.standardize import LatentStandardizer, estimate_sigma_data

__all__ = [
    "EDMPrecond", "edm_preconditioning", "EDMLoss", "edm_sampler", "edm_sigma_steps", "guided_denoise",
    "LatentDenoiser", "SCAR_PATTERNS", "ConditionEmbedding", "scar_condition", "EMA", "ema_beta",
    "LatentStandardizer", "estimate_sigma_data",
]
