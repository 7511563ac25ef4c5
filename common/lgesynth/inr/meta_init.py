"""A meta-learned shared initialisation for a bank's SIRENs (Reptile, Nichol et al. 2018).

Every INR of a bank must start from one init (weight-space encoding depends on it). Instead of the
plain SIREN init, learn one that every training subject can reach its answer from in a few steps, as
functa / MedFuncta do with MAML; Reptile needs no second-order terms and reuses the batched fitter:

    for outer step k = 1..K:
        draw a meta-batch of training subjects; phi_b <- theta for each
        phi_b <- n inner Adam steps on subject b (fresh Adam state, as in a real fit)
        theta <- theta + eps_k * (mean_b phi_b - theta)                                         (1)

with eps_k decaying linearly from ``outer_lr`` to 0. The result is stored beside the bank as
``inr_init.safetensors`` and the bank records its checksum (``bank.init_record``).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from typing import Callable

import torch

from lgesynth.inr.fit import BatchFitter, FitConfig
from lgesynth.inr.siren import SirenSpec


@dataclass
class MetaConfig:
    outer_steps: int = 30
    inner_steps: int = 8
    meta_batch: int = 8
    outer_lr: float = 1.0
    points: int = 2048  # per subject per inner step; 8192 costs 4x (docs/experiments.md, inr_fit: 2048- or 8192-point init)
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def meta_learn_init(targets: torch.Tensor, coords: torch.Tensor, init: list[torch.Tensor], spec: SirenSpec = SirenSpec(),
                    fit_config: FitConfig = FitConfig(), config: MetaConfig = MetaConfig(),
                    callback: Callable[[int, float], None] | None = None) -> tuple[list[torch.Tensor], dict]:
    """Reptile, eq. (1), on training subjects only.

    Args:
        targets: ``(subjects, grid_points, 3)`` of training subjects; coords as in ``fit.fit``.
        init: the starting point ``[w0, b0, ...]`` (``siren.init_params(spec, seed)``).
        fit_config: inner-loop settings (lr, loss weights, compute dtype, point focus).
        callback: ``callback(outer_step, mean inner-batch PSNR)``.
    Returns:
        ``(theta, record)``: the learned init (fp32, one subject) and a JSON-able record of how it was made.
    """
    t0 = time.perf_counter()
    S = targets.shape[0]
    slots = min(config.meta_batch, S)
    inner_cfg = replace(fit_config, points=config.points, seed=config.seed)
    fitter = BatchFitter(spec, targets, coords, inner_cfg, slots=slots)
    theta = [p.detach().clone().float().to(targets.device) for p in init]
    gen = torch.Generator().manual_seed(config.seed)
    last_psnr = float("nan")
    for k in range(config.outer_steps):
        subjects = torch.randperm(S, generator=gen)[:slots].tolist()
        fitter.remove(list(range(fitter.n)))
        fitter.add(subjects, theta)
        for _ in range(config.inner_steps):
            mse = fitter.step()
        eps = config.outer_lr * (1 - k / config.outer_steps)
        with torch.no_grad():
            for th, phi in zip(theta, fitter.view(fitter.params)):
                th.add_(phi.mean(0) - th, alpha=eps)
        last_psnr = float((10 * torch.log10(4 / mse.clamp_min(1e-12))).mean())
        if callback is not None:
            callback(k, last_psnr)
    record = {"method": "reptile", **config.to_dict(), "inner_lr": fit_config.lr, "subjects": S,
              "final_inner_psnr": last_psnr, "seconds": time.perf_counter() - t0}
    return theta, record
