"""Exponential moving average of the denoiser's weights, as EDM's training loop keeps it.

Built on ``torch.optim.swa_utils.AveragedModel``: ``update_parameters(model)`` after each optimiser
step; ``ema.module`` is the averaged network (``ema(x, sigma, cond)`` calls it); ``state_dict()`` /
``load_state_dict()`` carry the weights and the update count, so a resumed run continues the ramp-up.

Per update, with the model weights theta and the average theta_ema:

    theta_ema <- beta theta_ema + (1 - beta) theta

``beta`` is either a fixed ``decay`` or, as in EDM (training_loop.py: ema_halflife_kimg,
ema_rampup_ratio), derived from a half-life counted in training samples:

    halflife_nimg = 1000 ema_halflife_kimg,  optionally min(halflife_nimg, rampup_ratio * cur_nimg)
    beta = 0.5 ^ (batch_size / halflife_nimg)

so that the weights of ``halflife_nimg`` samples ago count half. ``cur_nimg`` is the number of samples
seen before this step, ``(updates so far) * batch_size``. The average starts as a copy of the
model at construction.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


def ema_beta(halflife_kimg: float, batch_size: int, cur_nimg: float | None = None,
             rampup_ratio: float | None = 0.05) -> float:
    """The EMA decay of one step of ``batch_size`` samples (EDM's half-life rule, with ramp-up)."""
    halflife_nimg = halflife_kimg * 1000
    if rampup_ratio is not None and cur_nimg is not None:
        halflife_nimg = min(halflife_nimg, cur_nimg * rampup_ratio)
    return 0.5 ** (batch_size / max(halflife_nimg, 1e-8))


class EMA(AveragedModel):
    """EMA of ``model``'s parameters (buffers are copied from the model, not averaged).

    Give either ``decay`` (a fixed beta per update) or ``halflife_kimg`` with ``batch_size``
    (EDM's rule; ``rampup_ratio=None`` turns the ramp-up off).
    """

    def __init__(self, model: nn.Module, decay: float | None = None, halflife_kimg: float | None = None,
                 batch_size: int | None = None, rampup_ratio: float | None = 0.05):
        if (decay is None) == (halflife_kimg is None):
            raise ValueError("EMA needs exactly one of decay or halflife_kimg")
        if halflife_kimg is not None and not batch_size:
            raise ValueError("EMA with halflife_kimg needs the batch_size of one update")
        if decay is not None and not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay, self.halflife_kimg, self.batch_size, self.rampup_ratio = decay, halflife_kimg, batch_size, rampup_ratio
        super().__init__(model, multi_avg_fn=self._lerp)
        self.update_parameters(model)  # n_averaged = 1: the average starts at the model's weights

    def beta(self, n_averaged: int) -> float:
        """beta of the update made when ``n_averaged`` updates (the initial copy included) are done."""
        if self.decay is not None:
            return self.decay
        return ema_beta(self.halflife_kimg, self.batch_size, (n_averaged - 1) * self.batch_size, self.rampup_ratio)

    @torch.no_grad()
    def _lerp(self, ema_params: list[torch.Tensor], model_params: list[torch.Tensor], n_averaged) -> None:
        beta = self.beta(int(n_averaged))
        torch._foreach_lerp_(ema_params, model_params, 1.0 - beta)
