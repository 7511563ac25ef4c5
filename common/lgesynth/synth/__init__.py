"""Synthetic cohorts from the edm_synth generator, and their quality report.

    generator Generator(models_dir): EMA denoiser + standardiser + inr2vec decoder from the bundle's models;
              .conditions(n, scar_burden, pattern, seed), .sample(n, seed, num_steps, guidance, cond),
              .sample_with_spacing(...) -> (latents, canonical voxel sizes); decode_latents(decoder, w,
              coords, shape); sample_grid(record, canonical_spacing_mm, spacing_mm, slice_spacing_mm);
              canonical_grid(record, spacing_mm); bundle_root() (the bundle of --config_file)
    generate  CohortSynthesizer (inference.yaml engine)
    features  plausibility_problems(myo, scar), volume_features(image, label, spacing_mm): one volume
    stats     CohortStats (per-volume results of a cohort, saved beside the generator), source_stats
              (the training subjects' own volumes from the bank's source files), reference_from_datalist
    memorisation  diversity and nearest training subjects (copies)
    figures   report.png (feature histograms), nearest.png (samples beside their nearest training subjects)
    report    quality_report(samples, reference, source=...), write_report, report_metrics,
              CohortEvaluator (evaluate.yaml engine)
"""

from lgesynth.synth.generate import CohortSynthesizer
from lgesynth.synth.generator import Generator, bundle_root, canonical_grid, decode_latents, sample_grid
from lgesynth.synth.features import FEATURES, plausibility_problems, volume_features
from lgesynth.synth.report import CohortEvaluator, quality_report, report_metrics, write_report
from lgesynth.synth.stats import CohortStats, source_stats

__all__ = ["CohortSynthesizer", "Generator", "bundle_root", "canonical_grid", "decode_latents", "sample_grid", "FEATURES",
           "CohortEvaluator", "CohortStats", "plausibility_problems", "quality_report", "report_metrics",
           "source_stats", "volume_features", "write_report"]
