"""Weight-space augmentation for the inr2vec encoder.

The encoder is not permutation invariant (on purpose: a bank's INRs share one init, which aligns
their neurons). Two augmentations act on the weights without touching the data:

- ``permute_neurons``: for a hidden layer k, a permutation pi of its ``hidden`` output neurons is
  applied to the out-dim of layer k (``weight_k[:, :, pi]``, ``bias_k[:, pi]``) and to the in-dim of
  layer k+1 (``weight_{k+1}[:, pi, :]``). The INR computes exactly the same function (sin is applied
  neuron-wise), but its weights differ: training on permuted copies teaches the encoder that they
  are one INR. With per-element standardisation (``fit_standardization(per_element=True)``) a
  permuted INR no longer lines up with the bank mean; use one or the other.
- ``add_weight_noise``: ``p + sigma * std(p) * N(0, 1)`` per tensor (a small sigma, e.g. 0.01,
  keeps the function close; the decoder targets stay those of the clean INR).

Bank-level augmentation (more INRs, fitted from augmented volumes: flips, small rotations,
intensity changes) is not done here: the lead fits them through ``inr_fit`` (same spec and init)
and merges them into the bank (``inr.bank.merge_banks``); the encoder then simply sees more rows.
"""

from __future__ import annotations

import torch

from lgesynth.inr.siren import SirenSpec


def permute_neurons(params: list[torch.Tensor], spec: SirenSpec, layers: list[int] | None = None,
                    generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """Randomly permute hidden neurons, independently per subject and per layer.

    Args:
        params: stacked ``[w0 (subjects, in, out), b0 (subjects, out), ...]``.
        layers: which sine layers' outputs to permute (default: all ``len(spec.omegas)`` of them).
        generator: torch generator for reproducible permutations.
    Returns:
        New tensors (the input is not modified); same function per subject, different weights.
    """
    out = list(params)
    S, H = params[0].shape[0], spec.hidden_features
    for k in range(len(spec.omegas)) if layers is None else layers:
        assert 0 <= k < len(spec.omegas), f"layer {k} has no hidden outputs to permute"
        pi = torch.argsort(torch.rand(S, H, generator=generator), dim=1).to(params[0].device)  # (subjects, hidden)
        w, b, w_next = out[2 * k], out[2 * k + 1], out[2 * k + 2]
        out[2 * k] = torch.gather(w, 2, pi.unsqueeze(1).expand(-1, w.shape[1], -1))
        out[2 * k + 1] = torch.gather(b, 1, pi)
        out[2 * k + 2] = torch.gather(w_next, 1, pi.unsqueeze(2).expand(-1, -1, w_next.shape[2]))
    return out


def add_weight_noise(params: list[torch.Tensor], sigma: float = 0.01, generator: torch.Generator | None = None
                     ) -> list[torch.Tensor]:
    """``p + sigma * std(p) * eps`` per tensor (std over the whole stacked tensor)."""
    if sigma <= 0:
        return list(params)
    return [p + sigma * p.std() * torch.randn(p.shape, generator=generator).to(p) for p in params]


def augment_params(params: list[torch.Tensor], spec: SirenSpec, permute_prob: float = 0.0, noise: float = 0.0,
                   generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """Batch augmentation: with probability ``permute_prob`` a subject's neurons are permuted (all
    hidden layers), then weight noise of relative size ``noise`` is added."""
    out = list(params)
    if permute_prob > 0:
        S = params[0].shape[0]
        pick = torch.rand(S, generator=generator) < permute_prob
        if pick.any():
            permuted = permute_neurons(params, spec, generator=generator)
            m = pick.to(params[0].device)
            out = [torch.where(m.view(-1, *([1] * (p.dim() - 1))), q, p) for p, q in zip(out, permuted)]
    return add_weight_noise(out, noise, generator)
