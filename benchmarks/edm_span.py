"""Where a trained generator's samples lie against its training cohort's span, and how plausibly its
decoder renders latents between training subjects.

    python benchmarks/edm_span.py --run runs/cpu_emidec --json /tmp/edm_span.json

``--run`` is a pipeline output (``inr2vec/latents.json`` and ``edm_synth/models``), or give
``--latents`` and ``--models`` separately. Prints and writes:
- ``variance``: the summed squared deviation of raw latents from the training mean, per latent, for the
  training subjects and for ``--samples`` samples, the samples' split into the part inside the span of
  the centred training latents and the part outside it.
- ``plausible``: the share of plausible decodes (``synth.features.plausibility_problems``, slices at
  ``--slice-spacing`` mm over each box) of the training latents at their own voxel sizes, of midpoints
  of ``--pairs`` random pairs of them (geometric mean voxel size), and of the samples.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from lgesynth.inr2vec.latents import load_latents
from lgesynth.synth.features import plausibility_problems
from lgesynth.synth.generator import Generator, decode_samples, sample_grid


def span_basis(train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean (d,), basis (k, d))`` float64 of ``train`` (n, d): the rows' mean and an orthonormal basis of the span
    of the centred rows (singular values above 1e-6 of the largest)."""
    train = train.double()
    mean = train.mean(0)
    _, s, vh = torch.linalg.svd(train - mean, full_matrices=False)
    return mean, vh[: int((s > 1e-6 * s[0]).sum())]


def span_split(train: torch.Tensor, samples: torch.Tensor) -> dict[str, float]:
    """Mean over rows of the squared deviation from the training mean: training, samples inside / outside the span."""
    train, samples = train.double(), samples.double()
    mean, basis = span_basis(train)
    d = samples - mean
    inside = (d @ basis.T) @ basis
    return {"training": float(((train - mean) ** 2).sum(1).mean()), "samples_inside": float((inside ** 2).sum(1).mean()),
            "samples_outside": float(((d - inside) ** 2).sum(1).mean()), "span_dims": int(basis.shape[0])}


def plausible_share(gen: Generator, w: torch.Tensor, spacing: np.ndarray, slice_spacing: float) -> float:
    grids = [sample_grid(gen.record, c, None, slice_spacing) for c in spacing]
    good = sum(not plausibility_problems(label > 0, label == 2, axis=2, spacing_mm=spacing[i])
               for i, _, label in decode_samples(gen.decoder, w, grids))
    return good / max(1, len(grids))


def add_run_arguments(ap: argparse.ArgumentParser) -> None:
    """``--run`` (a pipeline output folder), or ``--latents`` and ``--models``."""
    ap.add_argument("--run", help="a pipeline output folder")
    ap.add_argument("--latents", help="latents.json (default RUN/inr2vec/latents.json)")
    ap.add_argument("--models", help="generator models folder (default RUN/edm_synth/models)")


def load_run(ap: argparse.ArgumentParser, args) -> tuple[Generator, Path]:
    """The generator and the latents path named by :func:`add_run_arguments`' arguments (``ap.error`` when
    neither is given)."""
    if not (args.run or (args.latents and args.models)):
        ap.error("give --run, or --latents and --models")
    gen = Generator(args.models or Path(args.run) / "edm_synth" / "models")
    return gen, Path(args.latents or Path(args.run) / "inr2vec" / "latents.json")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(ap)
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--pairs", type=int, default=100)
    ap.add_argument("--slice-spacing", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gen, latents = load_run(ap, args)
    lat = load_latents(latents)
    rows = lat.rows("training")
    w = lat.latents[rows].float()
    spacing = np.array([lat.subjects[i]["canonical_spacing_mm"] for i in rows], dtype=np.float64)
    samples, sample_spacing = gen.sample_with_spacing(args.samples, seed=args.seed)
    rng = np.random.default_rng(args.seed)
    a, b = rng.integers(0, len(rows), args.pairs), rng.integers(0, len(rows), args.pairs)
    a, b = a[a != b], b[a != b]
    out = {"variance": span_split(w, samples),
           "plausible": {"training": plausible_share(gen, w, spacing, args.slice_spacing),
                         "midpoints": plausible_share(gen, 0.5 * (w[a] + w[b]), np.sqrt(spacing[a] * spacing[b]),
                                                      args.slice_spacing),
                         "samples": plausible_share(gen, samples, sample_spacing, args.slice_spacing)},
           "training_subjects": len(rows), "samples": args.samples, "midpoints": int(len(a)),
           "slice_spacing_mm": args.slice_spacing}
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
