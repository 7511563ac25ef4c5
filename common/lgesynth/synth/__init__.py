"""Synthetic cohorts from the edm_synth generator, and their quality report.

    generate  Generator(models_dir): EMA denoiser + standardiser + inr2vec decoder from the bundle's models;
              .conditions(n, scar_burden, pattern, seed), .sample(n, seed, num_steps, guidance, cond);
              decode_latents(decoder, w, coords, shape); canonical_grid(record, spacing_mm);
              CohortSynthesizer (inference.yaml engine); bundle_root() (the bundle of --config_file)
    report    plausibility_problems(myo, scar), volume_features(image, label, spacing_mm),
              CohortStats, quality_report(samples, reference), save_report_figure, write_report,
              CohortEvaluator (evaluate.yaml engine)
"""

from lgesynth.synth.generate import CohortSynthesizer, Generator, bundle_root, canonical_grid, decode_latents
from lgesynth.synth.report import (FEATURES, CohortEvaluator, CohortStats, plausibility_problems, quality_report,
                                   volume_features, write_report)

__all__ = ["CohortSynthesizer", "Generator", "bundle_root", "canonical_grid", "decode_latents", "FEATURES",
           "CohortEvaluator", "CohortStats", "plausibility_problems", "quality_report", "volume_features", "write_report"]
