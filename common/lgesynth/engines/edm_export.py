"""The generator export at the end of edm_synth training (the bundle's ``GeneratorExporter`` handler).

``GeneratorExporter`` writes everything generation needs into ``models_dir`` (read by
``synth/generator.py``): EMA weights, standardiser, sigma_data, the inr2vec decoder (not the encoder) +
its architecture, grid, z extent, reference affine, scale dims and the training subjects' voxel sizes,
the quality report's stats of the decoded training cohort (``reference``) and of the training subjects'
own volumes (``source``), and ``generator.json`` last (it commits the export).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from ignite.engine import Engine, Events

from lgesynth.engines.edm import EdmData, denoiser_architecture, latents_json
from lgesynth.errors import DataError
from lgesynth.inr2vec.latents import state_sha256
from lgesynth.io import atomic_path, write_json
from lgesynth.synth.generator import FILES, GENERATOR_FORMAT, GENERATOR_JSON

logger = logging.getLogger("lgesynth.edm")


class GeneratorExporter:
    """At the end of training (``Events.COMPLETED``, rank 0), write the generator into ``models_dir``.

    Args:
        models_dir: the bundle's models folder (default in train.yaml: ``bundle_root/models``).
        data: ``EdmData`` (standardiser, sigma_data, training latents and conditions).
        ema: the EMA whose weights are exported.
        inr2vec_dir: the inr2vec train output (``inr2vec_model.json`` + checkpoint): its decoder is
            copied; its encoder must be the one that made the latents (checksum); its bank's source files
            give the source stats (``synth.stats.measure_source``; when unreadable the export goes on
            without them and generator.json's ``source.missing`` says why).
        inr2vec_checkpoint: the inr2vec checkpoint (default ``find_checkpoint``).
        sampler: defaults stored for inference (``num_steps``, ``sigma_min``, ``sigma_max``, ``rho``).
        decode_batch: latents decoded together for the training-cohort stats.
        config: recorded in generator.json (training settings).
    """

    def __init__(self, models_dir: str, data: EdmData, ema, inr2vec_dir: str, inr2vec_checkpoint: str | None = None,
                 sampler: dict | None = None, decode_batch: int = 8, config: dict | None = None, enabled: bool = True):
        from lgesynth.engines.inr2vec_eval import load_trained

        self.models_dir, self.data, self.ema, self.inr2vec_dir = Path(models_dir), data, ema, Path(inr2vec_dir)
        self.sampler = {"num_steps": 32, "sigma_min": 0.002, "sigma_max": 80.0, "rho": 7.0, **dict(sampler or {})}
        self.decode_batch, self.config, self.enabled = int(decode_batch), dict(config or {}), bool(enabled)
        self.inr2vec = load_trained(inr2vec_dir, inr2vec_checkpoint, "cpu")
        sha = state_sha256(self.inr2vec.encoder)
        if data.encoder_sha256 and data.encoder_sha256 != sha:
            raise DataError(latents_json(data.path), f"was encoded by another encoder than the one of the inr2vec model "
                            f"in {inr2vec_dir} (checkpoint {self.inr2vec.checkpoint}); its decoder would not decode them: "
                            "re-encode with that model or point inr2vec_dir at the model that encoded them")
        if self.inr2vec.decoder.latent_dim != data.latent_dim:
            raise DataError(latents_json(data.path), f"latent_dim {data.latent_dim} differs from the inr2vec decoder's "
                            f"{self.inr2vec.decoder.latent_dim} ({inr2vec_dir})")

    def attach(self, engine: Engine) -> None:
        if self.enabled:
            engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        path = self.export(engine.state.iteration, getattr(engine.state, "memorisation_stop", None))
        logger.info("generator written to %s", path)

    def reference_stats(self):
        """The training cohort as the decoder renders it on the canonical grid: features, plausibility,
        masks, latents (n, latent_dim). Each subject is measured at its own canonical voxel size (the
        reference one for subjects that do not record it), so physical volumes compare fairly with samples."""
        from lgesynth.synth.generator import canonical_grid, decode_latents, reference_spacing
        from lgesynth.synth.stats import CohortStats

        record = self.inr2vec.record
        shape, _, coords = canonical_grid(record)
        stats = CohortStats(shape, latents=self.data.w.clone())
        spacing = self.data.spacing_mm if self.data.spacing_mm is not None else \
            np.tile(reference_spacing(record), (len(self.data.ids), 1))
        for rows, images, labels in decode_latents(self.inr2vec.decoder, self.data.w, coords, shape, self.decode_batch):
            for r, image, label in zip(rows, images, labels):
                stats.add(self.data.ids[r], image, label, spacing[r])
        return stats

    def scale_record(self) -> dict:
        """generator.json's scale fields: ``scale_dims``; ``canonical_spacing_mm`` (min, median, max (3,) mm of
        the training subjects, when known); ``source_slice_spacing_mm``, the median original slice spacing
        of the training subjects (None when latents.json does not record ``source_spacing_mm``)."""
        from lgesynth.inr2vec.latents import subject_spacing

        out: dict = {"scale_dims": self.data.scale_dims, "source_slice_spacing_mm": None}
        sp = self.data.spacing_mm
        if sp is not None:
            out["canonical_spacing_mm"] = {"min": sp.min(0).tolist(), "median": np.median(sp, 0).tolist(),
                                           "max": sp.max(0).tolist()}
        source = subject_spacing(self.data.subjects, "source_spacing_mm", latents_json(self.data.path))
        if source is not None:
            out["source_slice_spacing_mm"] = float(np.median(source[:, 2]))
        return out

    def export(self, iteration: int | None = None, memorisation_stop: dict | None = None) -> Path:
        """Write the weights, the stats and, last, ``generator.json`` (with ``memorisation_stop``, the
        ``engines.edm_stop`` record, when given); returns its path."""
        from safetensors.torch import save_file

        from lgesynth.engines.inr2vec import architecture
        from lgesynth.synth.stats import measure_source

        d = self.models_dir
        d.mkdir(parents=True, exist_ok=True)
        denoiser = self.ema.module.model
        for key, module in (("denoiser", denoiser), ("decoder", self.inr2vec.decoder)):
            state = {k: v.detach().float().cpu().contiguous() for k, v in module.state_dict().items()}
            with atomic_path(d / FILES[key]) as tmp:
                save_file(state, str(tmp))
        self.data.standardizer.cpu().save(d / FILES["standardizer"])
        stats = self.reference_stats()
        stats.save(d, "reference")
        source, missing = measure_source(self.inr2vec.record, self.inr2vec_dir, self.data.ids)
        if source is not None:
            source.save(d, "source")
        else:  # no stats of another export may stand in for the missing ones
            for ext in ("json", "safetensors"):
                (d / f"source.{ext}").unlink(missing_ok=True)
        record = self.inr2vec.record
        cond = self.data.cond
        write_json(d / GENERATOR_JSON, {
            "format": GENERATOR_FORMAT, "version": 1,
            "denoiser": denoiser_architecture(denoiser), "sigma_data": self.data.sigma_data,
            "modelled_dims": "per dimension" if self.data.standardizer.basis is None else "span",
            "memorisation_stop": memorisation_stop,
            "condition": self.data.condition, "sampler": self.sampler,
            "training_conditions": [] if cond is None else cond.cpu().tolist(),
            "decoder": architecture(self.inr2vec.encoder, self.inr2vec.decoder)["decoder"],
            "grid": record["grid"], "z_extent": record["z_extent"], "reference_affine": record["reference_affine"],
            **self.scale_record(),
            "files": dict(FILES),
            "latents": {"path": self.data.path, "count": len(self.data.ids), "dim": self.data.latent_dim,
                        "encoder_sha256": self.data.encoder_sha256, "ids": self.data.ids},
            "inr2vec": {"checkpoint": self.inr2vec.checkpoint, "bank": record.get("bank", {})},
            "reference": {"count": len(stats), "plausible_fraction": stats.plausible_fraction},
            "source": {"count": len(source), "plausible_fraction": source.plausible_fraction} if source is not None
            else {"missing": missing},
            "training": {"iteration": iteration, "ema_halflife_kimg": self.ema.halflife_kimg, "ema_decay": self.ema.decay,
                         **self.config}})
        return d / GENERATOR_JSON
