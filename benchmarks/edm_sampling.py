"""Sampling-time changes to a trained generator, scored by the quality report: do they make the samples
plausible, and what do they cost in features and copies?

    python benchmarks/edm_sampling.py --run runs/cpu_phantom --out /tmp/offspan0 --offspan 0
    python benchmarks/edm_sampling.py --run runs/cpu_phantom --out /tmp/slab3 --slab 3
    python benchmarks/edm_sampling.py --run runs/cpu_phantom --out /tmp/between --between-planes --seed 1

``--run`` is a pipeline output (``edm_synth/models``, ``inr2vec/latents.json``, ``data/datalist.json`` as
the report's real training cohort unless ``--reference``). The cohort is what ``inference.yaml`` writes
with its defaults (200 samples, seed 0), with at most one change:

- ``--between-planes``: each slice is decoded at its own depth instead of the nearest canonical plane.
- ``--offspan L``: each sampled vector (latent + log voxel size) keeps its part inside the span of the
  centred training vectors and ``L`` times the rest (1: unchanged, 0: projected onto the span). The
  decoder has only seen latents inside that span.
- ``--slab K``: each slice is decoded as the mean of the decoder's outputs at ``K`` planes spread evenly
  through the slice's thickness (a slice profile) before the masks are thresholded; 1: the slice's centre.
  A slab is centred on the slice's own depth (``--between-planes`` implied).

Prints the report's plausible fraction, its reasons, the copies and each feature's mean shift (source
SDs) / SD ratio; the full report is ``OUT/report.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from edm_span import span_basis  # the sibling benchmark's helper
from lgesynth.inr2vec.latents import load_latents
from lgesynth.synth.features import FEATURES
from lgesynth.synth.generate import CohortSynthesizer


def training_vectors(latents_json: Path, scale_dims: int) -> torch.Tensor:
    """(n, 512 [+ 3]) float64: the training latents, with log canonical voxel size when the generator models it."""
    lat = load_latents(latents_json)
    rows = lat.rows("training")
    w = lat.latents[rows].double()
    if scale_dims:
        spacing = torch.tensor([lat.subjects[i]["canonical_spacing_mm"] for i in rows], dtype=torch.float64)
        w = torch.cat([w, spacing.log()], dim=1)
    return w


def offspan_scaler(train: torch.Tensor, scale: float):
    """``x (b, d) -> x`` with its part outside the span of the centred ``train`` rows times ``scale``."""
    mean, basis = span_basis(train)

    def apply(x: torch.Tensor) -> torch.Tensor:
        d = x.double() - mean
        inside = (d @ basis.T) @ basis
        return (mean + inside + scale * (d - inside)).to(x.dtype)

    return apply


class SlabDecoder(torch.nn.Module):
    """The inr2vec ``decoder`` whose ``decode`` at a grid's slice centres returns the mean of its outputs at ``planes``
    depths spread evenly through each slice's thickness (the generator thresholds the masks after it)."""

    def __init__(self, decoder: torch.nn.Module, planes: int):
        super().__init__()
        self.decoder, self.planes = decoder, int(planes)

    def decode(self, coords: torch.Tensor, latent: torch.Tensor, chunk: int = 32768) -> torch.Tensor:
        z = torch.unique(coords[:, 2])
        step = float(z[1] - z[0]) if z.numel() > 1 else 0.0
        offsets = [((k + 0.5) / self.planes - 0.5) * step for k in range(self.planes)]
        return sum(self.decoder.decode(coords + torch.tensor([0.0, 0.0, o], dtype=coords.dtype, device=coords.device),
                                       latent, chunk).float() for o in offsets) / self.planes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a pipeline output folder")
    ap.add_argument("--out", required=True, help="where the synthetic cohort and its report.json go")
    ap.add_argument("--reference", help="real training datalist for the report (default RUN/data/datalist.json)")
    ap.add_argument("--offspan", type=float, default=1.0)
    ap.add_argument("--slab", type=int, default=1)
    ap.add_argument("--between-planes", action="store_true",
                    help="decode each slice at its own depth, not at the nearest canonical plane")
    ap.add_argument("--guidance", type=float, default=2.0, help="classifier-free guidance (inference.yaml's default)")
    ap.add_argument("--models", help="a generator's models folder (default RUN/edm_synth/models)")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed (inference.yaml's default 0)")
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    synth = CohortSynthesizer(args.models or run / "edm_synth" / "models", args.out, num_samples=args.samples,
                              seed=args.seed, guidance=args.guidance,
                              snap_slices=not (args.between_planes or args.slab > 1),
                              reference_datalist=args.reference or str(run / "data" / "datalist.json"), progress=False)
    if args.slab > 1:
        synth.gen.decoder = SlabDecoder(synth.gen.decoder, args.slab)
    if args.offspan != 1.0:
        scaler = offspan_scaler(training_vectors(run / "inr2vec" / "latents.json", synth.gen.scale_dims), args.offspan)
        denoise = synth.gen.denoise
        synth.gen.denoise = lambda *a, **k: scaler(denoise(*a, **k))
    synth.run_all()
    report = json.loads((Path(args.out) / "report.json").read_text())
    features = report["features"]
    print(json.dumps({"plausible_fraction": report["plausible_fraction"], "reasons": report["implausible_reasons"],
                      "copies (both / image / latent)": [report[k] for k in ("copies_flagged", "copies_flagged_image",
                                                                             "copies_flagged_latent")],
                      "shift_sd / sd_ratio": {k: [round(features[k]["mean_shift_sd"], 2), round(features[k]["sd_ratio"], 2)]
                                              for k in FEATURES}}, indent=2))


if __name__ == "__main__":
    main()
