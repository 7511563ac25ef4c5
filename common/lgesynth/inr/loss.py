"""Joint image + mask loss of an INR, its hand-written gradient, the decode rule and fit metrics.

Per subject, over the sampled points p (targets: intensity t_I in [-1, 1], myocardium m, scar s):

    L = mean_p (1 + lambda_sI * s) (f_I - t_I)^2
        + lambda_myo  * mean_p BCE(f_myo, m)
        + lambda_scar * mean_p m * BCE(f_scar, s)                                     (1)

lambda_sI (default 0) weights the intensity error inside the scar more: scar is a few per cent of the
points and thin, so an unweighted fit renders it duller than it is (lower scar/remote contrast).
The scar logit is only trained inside the (true) myocardium, so it is only meaningful there.
Decode rule (``decode``): myocardium = sigmoid(f_myo) > 0.5; scar = sigmoid(f_scar) > 0.5 AND
myocardium. PSNR is on the [-1, 1] scale (peak-to-peak 2): PSNR = 10 log10(4 / MSE).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lgesynth.dice import dice


@dataclass(frozen=True)
class LossWeights:
    myo: float = 0.1
    scar: float = 0.1
    scar_intensity: float = 0.0   # lambda_sI: extra weight of the intensity error at scar points


def joint_loss(pred: torch.Tensor, target: torch.Tensor, w: LossWeights = LossWeights(),
               point_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. (1) with autograd. ``pred, target: (..., points, 3)`` -> loss ``(...)`` per subject.

    ``point_weights (..., points)``: each point's share of the mean (e.g. ``PointSampler``'s importance
    weights, which make the sampled loss an unbiased estimate of the full-grid loss); None: all 1.
    """
    intensity = (pred[..., 0] - target[..., 0]).square()
    if w.scar_intensity:
        intensity = intensity * (1 + w.scar_intensity * target[..., 2])
    per_point = (intensity
                 + w.myo * F.binary_cross_entropy_with_logits(pred[..., 1], target[..., 1], reduction="none")
                 + w.scar * target[..., 1] * F.binary_cross_entropy_with_logits(pred[..., 2], target[..., 2], reduction="none"))
    if point_weights is not None:
        per_point = per_point * point_weights
    return per_point.mean(-1)


@torch.no_grad()
def joint_loss_grad(pred: torch.Tensor, target: torch.Tensor, dpred: torch.Tensor, w: LossWeights = LossWeights()) -> torch.Tensor:
    """Gradient of sum-over-subjects eq. (1) w.r.t. ``pred`` into ``dpred``; returns per-subject MSE.

    ``pred, target, dpred: (subjects, points, 3)`` fp32. d BCE(l, y)/dl = sigmoid(l) - y.
    """
    P = pred.shape[1]
    torch.sub(pred, target, out=dpred)  # channel 0: f_I - t_I
    mse = dpred[..., 0].square().mean(-1)
    dpred[..., 0].mul_(2.0 / P)
    if w.scar_intensity:
        dpred[..., 0].mul_(1 + w.scar_intensity * target[..., 2])
    torch.sigmoid(pred[..., 1:], out=dpred[..., 1:]).sub_(target[..., 1:])
    dpred[..., 1].mul_(w.myo / P)
    dpred[..., 2].mul_(target[..., 1]).mul_(w.scar / P)
    return mse


def psnr(mse: torch.Tensor) -> torch.Tensor:
    """PSNR in dB on the [-1, 1] scale (peak-to-peak 2)."""
    return 10.0 * torch.log10(4.0 / mse.clamp_min(1e-12))


def decode(myo_prob: torch.Tensor, scar_prob: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks from probabilities: myocardium = p_myo > 0.5; scar = p_scar > 0.5 AND myocardium."""
    myo = myo_prob > 0.5
    return myo, (scar_prob > 0.5) & myo


@torch.no_grad()
def fit_metrics(pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """PSNR and Dice (:mod:`lgesynth.dice`) of decoded masks. ``pred`` raw outputs, ``target``: ``(subjects, points, 3)``.

    Returns per-subject ``(subjects,)`` tensors ``psnr``, ``dice_myo``, ``dice_scar`` (NaN when neither the
    subject nor its decode has scar, 0 when only the decode has) and ``has_scar`` (bool: the target has scar).
    """
    mse = (pred[..., 0] - target[..., 0]).square().mean(-1)
    myo, scar = decode(torch.sigmoid(pred[..., 1]), torch.sigmoid(pred[..., 2]))
    true_scar = target[..., 2] > 0.5
    return {
        "psnr": psnr(mse),
        "dice_myo": dice(myo, target[..., 1] > 0.5, axis=-1),
        "dice_scar": dice(scar, true_scar, axis=-1),
        "has_scar": true_scar.any(-1),
    }
