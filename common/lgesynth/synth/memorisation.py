"""Distances between cohorts: the diversity of a synthetic cohort and its memorisation of the training one.

- **diversity** (:func:`diversity`): pairwise distances between synthetic samples, in latent space (L2
  of standardised latents) and in image space (Dice distance ``1 - Dice`` of the myocardium masks);
  mean and min.
- **memorisation** (:func:`memorisation`): each sample's nearest training subject in latent space and
  in image space. Rule (relative, as Carlini et al. 2023 judge extraction from diffusion models): a
  sample *sits on* a training subject in a space when its distance to the nearest one is below
  ``COPY_RATIO`` (1/3) of its mean distance to its ``COPY_NEIGHBOURS`` (5) nearest; it is a **copy**
  when it sits on the same training subject in both spaces (the space the EDM models and what one
  sees). Counts per space are reported too, beside the absolute rule's counts for reference (NN
  distance below the 5th percentile of the train-to-train NN distances, ``flagged_absolute``). The
  absolute rule flags *typical* samples: with an encoder that spreads its training latents apart, it
  flagged 21 % of the held-out *real* phantom subjects (edm_synth docs); a sample near the middle of
  the cohort is close to many subjects, a copy is close to one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from lgesynth.synth.stats import CohortStats

COPY_RATIO = 1 / 3
COPY_NEIGHBOURS = 5
COPY_PERCENTILE = 5.0  # the absolute rule, reported for reference


def latent_distances(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """L2 distances (n, m) between rows of ``a`` (n, dim) and ``b`` (m, dim), float64."""
    return torch.cdist(a.to(torch.float64), b.to(torch.float64)).numpy()


def dice_distances(a: np.ndarray, b: np.ndarray, chunk: int = 256) -> np.ndarray:
    """``1 - Dice`` (n, m) between the flattened masks ``a`` (n, P) and ``b`` (m, P); 0 for two empty masks."""
    ta, tb = torch.from_numpy(np.asarray(a, dtype=np.float32)), torch.from_numpy(np.asarray(b, dtype=np.float32))
    inter = torch.cat([ta[s: s + chunk] @ tb.T for s in range(0, ta.shape[0], chunk)]) if len(ta) else torch.zeros(0, len(tb))
    size = ta.sum(1, keepdim=True) + tb.sum(1)[None]
    dice = torch.where(size > 0, 2 * inter / size.clamp_min(1), torch.ones_like(inter))
    return (1 - dice).double().numpy()


def pairwise_summary(d: np.ndarray) -> dict:
    """Mean and min of the off-diagonal upper triangle of a square distance matrix (NaN below 2 rows)."""
    iu = np.triu_indices(d.shape[0], k=1)
    v = d[iu]
    return {"mean": float(v.mean()), "min": float(v.min())} if v.size else {"mean": float("nan"), "min": float("nan")}


def nearest_neighbours(d_st: np.ndarray, d_tt: np.ndarray, ratio: float = COPY_RATIO, k: int = COPY_NEIGHBOURS,
                       percentile: float = COPY_PERCENTILE) -> dict:
    """Memorisation in one space from sample-to-train ``d_st`` (n, m) and train-to-train ``d_tt`` (m, m).

    ``nn_index`` (n,) the nearest training subject (None without training subjects), ``nn_distance``
    and ``nn_ratio`` (n,); ``close``: the nearest is nearer than ``ratio`` x the mean distance to the
    ``k`` nearest (all m when fewer); ``close_absolute``: NN distance below the ``percentile`` of the
    train-to-train NN distances (leave one out)."""
    d_tt = d_tt.copy()
    np.fill_diagonal(d_tt, np.inf)
    nn_tt = d_tt.min(axis=1) if d_tt.shape[0] > 1 else np.zeros(0)
    threshold = float(np.percentile(nn_tt, percentile)) if nn_tt.size else float("nan")
    n, m = d_st.shape
    if m:
        near = np.sort(d_st, axis=1)[:, : min(k, m)]
        nn, rel = near[:, 0], near[:, 0] / np.maximum(near.mean(axis=1), 1e-12)
    else:
        nn, rel = np.full(n, np.nan), np.full(n, np.nan)
    close = rel < ratio if m > 1 else np.zeros(n, dtype=bool)
    close_abs = nn < threshold if np.isfinite(threshold) else np.zeros(n, dtype=bool)
    return {"threshold": threshold, "nn_distance": nn, "nn_ratio": rel, "nn_index": d_st.argmin(axis=1) if m else None,
            "close": close, "close_absolute": close_abs,
            "train_nn_median": float(np.median(nn_tt)) if nn_tt.size else float("nan")}


def _summary(nb: dict, n: int) -> dict:
    return {"flagged": int(nb["close"].sum()), "nn_median": float(np.median(nb["nn_distance"])) if n else float("nan"),
            "nn_ratio_min": float(np.min(nb["nn_ratio"])) if n else float("nan"),
            "nn_ratio_median": float(np.median(nb["nn_ratio"])) if n else float("nan"),
            "train_nn_median": nb["train_nn_median"], "threshold_absolute": nb["threshold"],
            "flagged_absolute": int(nb["close_absolute"].sum())}


def diversity(samples: "CohortStats", lat_s: torch.Tensor | None = None) -> dict:
    """``{"dice_distance": {mean, min}, "latent_distance": {mean, min}}`` between the samples
    (``lat_s`` (n, dim) their standardised latents; the latent entry only with them)."""
    ms = samples.mask_matrix()
    out = {"dice_distance": pairwise_summary(dice_distances(ms, ms))}
    if lat_s is not None:
        out["latent_distance"] = pairwise_summary(latent_distances(lat_s, lat_s))
    return out


def memorisation(samples: "CohortStats", reference: "CohortStats", lat_s: torch.Tensor | None = None,
                 lat_r: torch.Tensor | None = None) -> tuple[dict, np.ndarray]:
    """The memorisation section (see module doc) and which samples are copies ((n,) bool).

    ``lat_s`` (n, dim), ``lat_r`` (m, dim): standardised latents of samples and training subjects
    (image space alone without them). ``per_sample`` rows: ``id``, ``nn_image`` (the nearest training
    subject's id in image space), ``nn_image_distance`` (1 - Dice), ``nn_image_ratio`` and, with
    latents, the same for ``nn_latent``.
    """
    n = len(samples)
    ms, mr = samples.mask_matrix(), reference.mask_matrix()
    image = nearest_neighbours(dice_distances(ms, mr), dice_distances(mr, mr))
    mem = {"rule": f"copy = nearer to its nearest training subject than {COPY_RATIO:.3g} x the mean distance to its "
                   f"{COPY_NEIGHBOURS} nearest, in latent space (L2, standardised) and in image space (1 - Dice of "
                   "myocardium masks), with the same nearest subject in both",
           "rule_absolute": f"NN distance below the {COPY_PERCENTILE:g}th percentile of train-to-train NN distances",
           "image": _summary(image, n)}
    flagged = image["close"]
    nn_image = image["nn_index"] if image["nn_index"] is not None else [None] * n
    per_sample = [{"id": sid, "nn_image": None if j is None else reference.ids[int(j)],
                   "nn_image_distance": float(d), "nn_image_ratio": float(r)}
                  for sid, j, d, r in zip(samples.ids, nn_image, image["nn_distance"], image["nn_ratio"])]
    if lat_s is not None and lat_r is not None:
        latent = nearest_neighbours(latent_distances(lat_s, lat_r), latent_distances(lat_r, lat_r))
        mem["latent"] = _summary(latent, n)
        same = (latent["nn_index"] == image["nn_index"]) if image["nn_index"] is not None else np.zeros(n, bool)
        flagged = flagged & latent["close"] & same
        mem["flagged_absolute"] = int((image["close_absolute"] & latent["close_absolute"]).sum())
        if latent["nn_index"] is not None:
            for row, j, d, r in zip(per_sample, latent["nn_index"], latent["nn_distance"], latent["nn_ratio"]):
                row.update(nn_latent=reference.ids[int(j)], nn_latent_distance=float(d), nn_latent_ratio=float(r))
    mem["copies"] = [s for s, f in zip(samples.ids, flagged) if f]
    mem["per_sample"] = per_sample
    return mem, np.asarray(flagged, dtype=bool)
