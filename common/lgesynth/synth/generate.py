"""The ``inference.yaml`` engine: a synthetic cohort from a trained generator (``synth.generator``).

:class:`CohortSynthesizer` runs one iteration per batch of samples: it samples latents and canonical
voxel sizes (``Generator.denoise`` + ``Generator.split``), decodes each sample over its own physical
box (``sample_grid``) and writes ``imagesTr/syn_0001.nii.gz``, ``labelsTr/syn_0001.nii.gz`` with the
sample's own affine, then ``latents.{safetensors,json}``, ``montage.png``, ``report.{json,png}``,
``nearest.png`` (``synth.report``: samples against the source cohort and the decoded training cohort) and,
last, ``datalist.json``. Each sample's ``canonical_spacing_mm`` (the voxel size it was generated with)
and ``spacing_mm`` (the voxel size it was written at) are recorded in its datalist entry and its
latents.json record.

Grids (``slices``): ``"source"`` (default) keeps the canonical in-plane grid and puts slices at the
source cohort's median slice spacing (generator.json ``source_slice_spacing_mm``) over the sample's z
extent, so a sample has as many slices as a real stack of its size; ``"canonical"`` writes the
canonical grid; a number is a slice spacing in mm. ``spacing_mm`` (a number or three) overrides both.
With ``snap_slices`` (default) each slice is decoded at the nearest canonical plane: the canonical grid
resampled every training stack to its planes by nearest neighbour, so the decoder learned the subjects
at those depths alone, and between them it blends two neighbouring planes into rings with gaps
(``docs/experiments.md``, "Does decoding each slice at a trained depth close the rings?").

The names of ``synth.generator`` are importable from here too.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine

from lgesynth.data.datalist import write_datalist
from lgesynth.data.validate import label_problems
from lgesynth.engines.base import BundleEngine
from lgesynth.flags import flag
from lgesynth.inr2vec.latents import Latents, save_latents
from lgesynth.io import save_nifti, spacing_from_affine
from lgesynth.synth.figures import NEAREST_SAMPLES
from lgesynth.synth.generator import (CONDITIONS, FILES, GENERATOR_FORMAT, GENERATOR_JSON, Generator, bundle_root,
                                      canonical_grid, centred_affine, condition_parts, decode_latents, decode_samples,
                                      load_generator_record, reference_spacing, sample_grid)
from lgesynth.synth.report import comparison_cohorts, report_metrics, write_report
from lgesynth.synth.stats import CohortStats
from lgesynth.viz import mid_slice, save_montage

__all__ = ["CohortSynthesizer", "slice_spacing_of", "CONDITIONS", "FILES", "GENERATOR_FORMAT", "GENERATOR_JSON",
           "Generator", "bundle_root", "canonical_grid", "centred_affine", "condition_parts", "decode_latents",
           "decode_samples", "load_generator_record", "reference_spacing", "sample_grid"]

logger = logging.getLogger("lgesynth.edm")


def slice_spacing_of(record: dict, slices) -> float | None:
    """The slice spacing (mm) samples are written at: ``"source"`` -> generator.json's
    ``source_slice_spacing_mm`` (None, i.e. the canonical grid, when it does not record one),
    ``"canonical"`` / None -> None, a number -> that number."""
    if slices is None or str(slices).lower() == "canonical":
        return None
    if str(slices).lower() == "source":
        value = record.get("source_slice_spacing_mm")
        if value is None:
            logger.info("generator.json records no source slice spacing: writing samples on the canonical grid")
        return None if value is None else float(value)
    try:
        value = float(slices)
    except (TypeError, ValueError):
        raise ValueError(f"slices must be 'source', 'canonical' or a slice spacing in mm, got {slices!r}") from None
    if not value > 0:
        raise ValueError(f"slices: a slice spacing must be positive, got {slices!r}")
    return value


class CohortSynthesizer(BundleEngine):
    """Write a synthetic cohort (see module doc); one iteration per ``batch_size`` samples.

    Args:
        models_dir: the edm_synth models folder.
        output_dir: the cohort folder.
        num_samples, seed, num_steps, guidance: sampling (``num_steps`` None: generator.json's default).
        scar_burden, pattern: condition request (see ``Generator.conditions``).
        slices: ``"source"``, ``"canonical"`` or a slice spacing in mm (see module doc).
        spacing_mm: decode each sample's box at this voxel size (a number or (3,), mm) instead.
        snap_slices: decode each slice at the nearest canonical plane (the depths the decoder was trained
            at) instead of at its own depth.
        batch_size: samples per iteration (sampled together, decoded ``decode_batch`` at a time).
        reject_implausible: also list samples failing the ring checks under ``rejected``.
        montage_samples: panels in ``montage.png``.
        reference_datalist: real training pairs for the report instead of the stored decoded reference
            (the comparison with the stored source stats stays).
    """

    def __init__(self, models_dir: str, output_dir: str, num_samples: int = 200, seed: int = 0,
                 num_steps: int | None = None, guidance: float = 1.0, scar_burden=None, pattern=None,
                 spacing_mm=None, slices="source", snap_slices: bool = True, batch_size: int = 32,
                 decode_batch: int = 8, chunk: int = 32768,
                 reject_implausible: bool = False, montage_samples: int = 16, reference_datalist: str | None = None,
                 device: str | torch.device = "cpu", val_handlers=(), progress: bool = True):
        super().__init__()
        self.gen = Generator(models_dir, device)
        self.models_dir, self.output_dir = str(models_dir), Path(output_dir).resolve()
        self.num_samples, self.seed, self.guidance = int(num_samples), int(seed), float(guidance)
        self.num_steps = int(num_steps) if num_steps else int(self.gen.record.get("sampler", {}).get("num_steps", 32))
        self.batch_size, self.decode_batch, self.chunk = max(1, int(batch_size)), int(decode_batch), int(chunk)
        self.reject_implausible, self.montage_samples = flag(reject_implausible, "reject_implausible"), int(montage_samples)
        self.reference_datalist = reference_datalist
        self.spacing_mm = None if spacing_mm is None else np.broadcast_to(np.asarray(spacing_mm, dtype=np.float64), (3,))
        self.slice_spacing_mm = None if spacing_mm is not None else slice_spacing_of(self.gen.record, slices)
        self.snap_slices = flag(snap_slices, "snap_slices")
        sample_grid(self.gen.record, reference_spacing(self.gen.record), self.spacing_mm, self.slice_spacing_mm)  # checks
        self.cond, self.asked = self.gen.conditions(self.num_samples, scar_burden, pattern, self.seed)
        self.request = {"scar_burden": scar_burden, "pattern": pattern}
        self.ids = [f"syn_{i + 1:04d}" for i in range(self.num_samples)]
        self.noise = torch.randn((self.num_samples, self.gen.model_dim), generator=torch.Generator().manual_seed(self.seed))
        self.stats = CohortStats(tuple(self.gen.record["grid"]["shape"]), keep_slices=NEAREST_SAMPLES)
        self.latents: list[torch.Tensor] = []
        self.spacing: dict[int, dict] = {}
        self.kept: list[dict] = []
        self.rejected: list[dict] = []
        self.panels: list[tuple] = []
        self._bar = None
        if progress:
            from tqdm import tqdm

            self._bar = tqdm(total=self.num_samples, desc="edm_synth sample+decode", unit="sample")
        self.attach_handlers(val_handlers, finish=self._finish)  # the handlers log what _finish writes

    def run_data(self) -> list[int]:
        """The first sample of every batch, all in one epoch; the cohort's files are written at its end."""
        return list(range(0, self.num_samples, self.batch_size))

    def run_params(self) -> dict:
        return {"models_dir": self.models_dir, "num_samples": self.num_samples, "seed": self.seed,
                "num_steps": self.num_steps, "guidance": self.guidance, "condition": self.gen.condition,
                "request": {k: str(v) for k, v in self.request.items()}, "grid_shape": self.gen.record["grid"]["shape"],
                "scale_dims": self.gen.scale_dims, "slice_spacing_mm": self.slice_spacing_mm,
                "snap_slices": self.snap_slices,
                "spacing_mm": None if self.spacing_mm is None else self.spacing_mm.tolist()}

    def _process(self, engine: Engine, start: int) -> dict:
        n = min(self.batch_size, self.num_samples - start)
        cond = None if self.cond is None else self.cond[start: start + n]
        w, canonical = self.gen.split(self.gen.denoise(self.noise[start: start + n], self.num_steps, self.guidance, cond))
        self.latents.append(w)
        grids = [sample_grid(self.gen.record, c, self.spacing_mm, self.slice_spacing_mm, self.snap_slices)
                 for c in canonical]
        for r, image, label in decode_samples(self.gen.decoder, w, grids, self.decode_batch, self.chunk):
            i, affine = start + r, grids[r][1]
            sid, spacing = self.ids[i], spacing_from_affine(affine)
            self.spacing[i] = {"canonical_spacing_mm": [round(float(v), 4) for v in canonical[r]],
                               "spacing_mm": [round(float(v), 4) for v in spacing]}
            record = self.stats.add(sid, image, label, spacing)
            img_p = save_nifti(self.output_dir / "imagesTr" / f"{sid}.nii.gz", image, affine, dtype=np.float32)
            lab_p = save_nifti(self.output_dir / "labelsTr" / f"{sid}.nii.gz", label, affine, dtype=np.uint8)
            entry = {"id": sid, "image": str(img_p), "label": str(lab_p), "synthetic": True,
                     "scar": bool((label == 2).any()), "scar_burden": record["scar_burden"], **self.spacing[i],
                     **self.asked[i]}
            problems = label_problems(label, affine) or (record["problems"] if self.reject_implausible else [])
            if problems:
                self.rejected.append({**entry, "reason": "; ".join(problems)})
            else:
                self.kept.append(entry)
            if len(self.panels) < self.montage_samples:
                k = mid_slice(label)
                b = record["scar_burden"]
                self.panels.append((image[..., k], label[..., k], f"{sid} b={b:.2f}" if b == b else sid))
        if self._bar is not None:
            self._bar.update(n)
        return {"samples": n}

    def write(self) -> dict:
        """Latents, montage, report, then the datalist (it commits the cohort); returns the report."""
        w = torch.cat(self.latents) if self.latents else torch.zeros(0, self.gen.dim)
        self.stats.latents = w
        subjects = [{"id": sid, "section": "synthetic", **self.spacing.get(i, {}), **self.asked[i]}
                    for i, sid in enumerate(self.ids)]
        settings = {"generator": self.models_dir, "seed": self.seed, "num_steps": self.num_steps, "guidance": self.guidance,
                    "scale_dims": self.gen.scale_dims, "slice_spacing_mm": self.slice_spacing_mm,
                    "snap_slices": self.snap_slices,
                    "spacing_mm": None if self.spacing_mm is None else self.spacing_mm.tolist()}
        save_latents(self.output_dir, Latents(w, subjects, self.gen.record.get("latents", {}).get("encoder_sha256"), settings))
        if self.panels:
            save_montage(self.output_dir / "montage.png", [p[0] for p in self.panels], [p[1] for p in self.panels],
                         [p[2] for p in self.panels])
        reference, reference_info, source, source_missing = comparison_cohorts(self.models_dir, self.gen.record,
                                                                               self.reference_datalist)
        report = write_report(self.output_dir, self.stats, reference, self.gen.standardizer.cpu(), {
            "rejected": len(self.rejected), "kept": len(self.kept), "num_steps": self.num_steps, "seed": self.seed,
            "guidance": self.guidance, "condition": self.gen.condition, "scale_dims": self.gen.scale_dims,
            "slice_spacing_mm": self.slice_spacing_mm, "snap_slices": self.snap_slices,
            "canonical_spacing_mm": self.spacing_summary(),
            "reference": reference_info}, source, source_missing)
        rel = [{**e, "image": f"imagesTr/{e['id']}.nii.gz", "label": f"labelsTr/{e['id']}.nii.gz"} for e in self.rejected]
        write_datalist(self.output_dir / "datalist.json", self.kept, [], rejected=rel,
                       source={**settings, "condition": self.gen.condition,
                               "request": {k: v for k, v in self.request.items() if v is not None}})
        return report

    def spacing_summary(self) -> dict:
        """The samples' canonical voxel sizes (min, median, max (3,) mm) beside the training subjects' (generator.json)."""
        sp = np.asarray([self.spacing[i]["canonical_spacing_mm"] for i in sorted(self.spacing)]).reshape(-1, 3)
        samples = {k: f(sp, 0).tolist() for k, f in (("min", np.min), ("median", np.median), ("max", np.max))} if len(sp) else {}
        return {"samples": samples, "training": self.gen.record.get("canonical_spacing_mm")}

    def _finish(self, engine: Engine) -> None:
        report = self.write()
        engine.state.metrics = {**report_metrics(report), "rejected": report["rejected"]}
        if self._bar is not None:
            self._bar.close()
