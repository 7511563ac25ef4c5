"""How a generator's decoder renders latents that are not training subjects': the training latents moved by
isotropic noise, blends of two training latents, and the EDM's samples, each measured against the decoded
training cohort on the canonical grid (no resampling to the source's slices).

    python benchmarks/edm_blend.py --run runs/cpu_phantom --json /tmp/edm_blend.json

``--run`` is a pipeline output (``inr2vec/latents.json`` and ``edm_synth/models``), or give ``--latents`` and
``--models``. All latents live in the generator's standardised space (latent + log voxel size). Rows:
- ``noise eps``: every training latent + eps * N(0, I) on the latent dims (voxel size kept); per feature the
  mean paired change in SDs of the decoded training cohort.
- ``blend t``: (1 - t) z_a + t z_b for ``--pairs`` random pairs; per feature the mean of decoded(blend) minus
  (1 - t) f(a) + t f(b), the same endpoints' features interpolated, in the same SDs.
- ``nearest t``: every training latent moved a share t of the way to its nearest neighbour (paired, as ``noise``).
- ``gaussian``: ``--samples`` draws from a Gaussian with the training latents' mean and covariance (no EDM).
- ``samples``: ``--samples`` EDM samples.
``gaussian`` and ``samples``: per feature the difference of means, in the same SDs, and the SD ratio.
A blend that decodes like a morph of its endpoints scores 0 on every feature.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from edm_span import add_run_arguments, load_run  # the sibling benchmark's helpers
from lgesynth.engines.edm import EdmData
from lgesynth.synth.features import FEATURES, volume_features
from lgesynth.synth.generator import Generator, decode_samples, sample_grid


def decoded_features(gen: Generator, w: torch.Tensor, spacing: np.ndarray) -> dict[str, np.ndarray]:
    """Features (per row) of latents ``w`` (n, dim) decoded on each one's canonical grid at ``spacing`` (n, 3) mm."""
    grids = [sample_grid(gen.record, s) for s in spacing]
    rows = [volume_features(image, label, spacing[i]) for i, image, label in decode_samples(gen.decoder, w, grids)]
    return {k: np.array([r[k] for r in rows], dtype=np.float64) for k in FEATURES}


def standardised_features(gen: Generator, z: torch.Tensor) -> dict[str, np.ndarray]:
    """:func:`decoded_features` of standardised vectors ``z`` (n, model_dim)."""
    return decoded_features(gen, *gen.split(gen.standardizer.destandardize(z.to(gen.device)).cpu()))


def shifts(changed: dict, reference: dict, sd: dict) -> dict[str, float]:
    """Mean of ``changed - reference`` per feature in units of ``sd`` (NaN-aware, paired rows)."""
    return {k: round(float(np.nanmean(changed[k] - reference[k]) / sd[k]), 3) for k in FEATURES}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(ap)
    ap.add_argument("--eps", default="0.25,0.5", help="comma-separated noise scales (standardised units)")
    ap.add_argument("--blends", default="0.25,0.5", help="comma-separated blend weights t")
    ap.add_argument("--nearest", default="0.3", help="comma-separated shares of the way to the nearest neighbour")
    ap.add_argument("--pairs", type=int, default=60)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gen, latents = load_run(ap, args)
    if gen.model_dim != gen.vector_dim:
        ap.error("a generator of components: span models no latent dims directly; this benchmark needs components: all")
    data = EdmData(str(latents), scale=bool(gen.scale_dims))  # the training subjects' [w, log voxel size], as trained
    z = gen.standardizer.standardize(data.x.to(gen.device)).cpu()
    n = len(data.ids)
    base = standardised_features(gen, z)
    sd = {k: float(np.nanstd(base[k])) for k in FEATURES}
    out: dict = {"training_subjects": n, "feature_sd": sd, "rows": {}}
    noise_gen = torch.Generator().manual_seed(args.seed)
    for eps in (float(e) for e in args.eps.split(",") if e):
        noise = torch.randn(z.shape, generator=noise_gen)
        noise[:, gen.dim:] = 0.0
        out["rows"][f"noise {eps:g}"] = shifts(standardised_features(gen, z + eps * noise), base, sd)
    rng = np.random.default_rng(args.seed)
    a, b = rng.integers(0, n, args.pairs), rng.integers(0, n, args.pairs)
    a, b = a[a != b], b[a != b]
    for t in (float(x) for x in args.blends.split(",") if x):
        blended = standardised_features(gen, (1 - t) * z[a] + t * z[b])
        ends = {k: (1 - t) * base[k][a] + t * base[k][b] for k in FEATURES}
        out["rows"][f"blend {t:g}"] = shifts(blended, ends, sd)
    distance = torch.cdist(z[:, :gen.dim], z[:, :gen.dim]).fill_diagonal_(float("inf"))
    nearest = distance.argmin(dim=1)
    for t in (float(x) for x in args.nearest.split(",") if x):
        out["rows"][f"nearest {t:g}"] = shifts(standardised_features(gen, (1 - t) * z + t * z[nearest]), base, sd)
    g = torch.Generator().manual_seed(args.seed)
    gaussian = z.mean(0) + torch.randn(args.samples, n, generator=g) @ (z - z.mean(0)) / (n - 1) ** 0.5
    cohorts = {"gaussian": standardised_features(gen, gaussian),
               "samples": decoded_features(gen, *gen.sample_with_spacing(args.samples, seed=args.seed))}
    out["sd_ratio"] = {}
    for name, features in cohorts.items():
        out["rows"][name] = {k: round(float((np.nanmean(features[k]) - np.nanmean(base[k])) / sd[k]), 3) for k in FEATURES}
        out["sd_ratio"][name] = {k: round(float(np.nanstd(features[k]) / sd[k]), 3) for k in FEATURES}
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
