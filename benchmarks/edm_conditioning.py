"""Does a burden-conditioned generator follow its condition? Samples asked for a low and a high scar
burden, burden measured on the decoded labels, one-sided Mann-Whitney U test (high > low).

    python -m monai.bundle run --config_file bundles/edm_synth/configs/train.yaml --inr2vec_dir RUN/inr2vec \
        --output_dir runs/edm_burden --models_dir runs/edm_burden/models --condition burden --steps 2500
    python benchmarks/edm_conditioning.py --models runs/edm_burden/models --json /tmp/edm_burden.json

Per requested burden (``--low``, ``--high``; ``--samples`` each, ``--guidance``): the measured burden's
mean, SD, median and 10th / 90th percentiles, scar-free samples, the plausible share
(``synth.features.plausibility_problems`` on each sample's own grid); and ``p_one_sided``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from scipy.stats import mannwhitneyu

from lgesynth.synth.features import plausibility_problems
from lgesynth.synth.generator import Generator, decode_samples, sample_grid


def measure(gen: Generator, burden: float, n: int, seed: int, guidance: float) -> dict:
    cond, _ = gen.conditions(n, scar_burden=burden, seed=seed)
    w, spacing = gen.sample_with_spacing(n, seed=seed, guidance=guidance, cond=cond)
    grids = [sample_grid(gen.record, c) for c in spacing]
    measured, plausible = [], 0
    for i, _, label in decode_samples(gen.decoder, w, grids):
        myo = int((label > 0).sum())
        measured.append(int((label == 2).sum()) / myo if myo else float("nan"))
        plausible += not plausibility_problems(label > 0, label == 2, axis=2, spacing_mm=spacing[i])
    b = np.asarray(measured, dtype=np.float64)
    b = b[np.isfinite(b)]
    return {"requested": burden, "samples": n, "measured": b.tolist(), "mean": float(b.mean()), "sd": float(b.std(ddof=1)),
            "median": float(np.median(b)), "p10": float(np.percentile(b, 10)), "p90": float(np.percentile(b, 90)),
            "scar_free": int((b == 0).sum()), "plausible": plausible / n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", required=True, help="a generator trained with condition: burden (or burden+pattern)")
    ap.add_argument("--low", type=float, default=0.05)
    ap.add_argument("--high", type=float, default=0.30)
    ap.add_argument("--samples", type=int, default=60)
    ap.add_argument("--guidance", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gen = Generator(args.models)
    low = measure(gen, args.low, args.samples, args.seed, args.guidance)
    high = measure(gen, args.high, args.samples, args.seed + 1, args.guidance)
    p = float(mannwhitneyu(high["measured"], low["measured"], alternative="greater").pvalue)
    for r in (low, high):
        print(f"requested {r['requested']:.2f}: measured {r['mean']:.3f} ± {r['sd']:.3f}, median {r['median']:.3f} "
              f"[{r['p10']:.3f}, {r['p90']:.3f}], scar-free {r['scar_free']} of {r['samples']}, plausible {r['plausible']:.3f}")
    print(f"one-sided Mann-Whitney (high > low): p = {p:.3g}")
    if args.json:
        out = {"low": {k: v for k, v in low.items() if k != "measured"}, "high": {k: v for k, v in high.items() if k != "measured"},
               "p_one_sided": p, "guidance": args.guidance, "models": str(args.models)}
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
