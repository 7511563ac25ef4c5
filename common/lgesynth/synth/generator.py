"""A trained edm_synth generator: its record, sampling, the grids samples are written on, decoding.

The edm_synth bundle's ``models_dir`` holds everything this needs (written by the train run's
``GeneratorExporter``, see ``engines/edm.py``):

    generator.json             format, denoiser architecture, sigma_data, condition, sampler defaults,
                               decoder architecture, canonical grid, z extent, reference affine,
                               ``scale_dims``, ``source_slice_spacing_mm``, files
    edm_ema.safetensors        EMA weights of F_theta (the LatentDenoiser inside EDMPrecond)
    standardizer.safetensors   per-dimension mean / std (and the training cohort's span) of what the EDM models
    decoder.safetensors        the inr2vec implicit decoder (not the encoder)
    reference.{json,safetensors}  training-cohort stats for the quality report (``synth.report``)

What the EDM models per subject is ``x = [w, log(canonical voxel size / mm)]``: the inr2vec latent
``w`` (latent_dim,) and, when ``scale_dims`` is 3, the log of the subject's canonical voxel size
(sx, sy, sz), which is the heart's physical size (the canonical crop normalises it away from ``w``).
:meth:`Generator.split` cuts a sample into the latent for the decoder and its voxel size; generators
without scale dims give every sample the reference voxel size (``reference_affine``).

Every sample is written over its own physical box, ``canonical shape x its voxel size``, centred
at the origin (:func:`sample_grid`): on the canonical grid, at a requested ``spacing_mm``, or with
the canonical in-plane grid and slices at a given slice spacing (e.g. the source cohort's). The
decoder is implicit, so any grid over the box is a set of coordinates in the shared frame: x, y in
(-1, 1), z in (-z_extent, z_extent), whatever the number of voxels. It was trained at the canonical
grid's planes only (each a nearest-neighbour copy of a source slice), so ``snap_slices`` decodes each
slice at the nearest of them: between two planes it blends their rings into rings with gaps.

:meth:`Generator.sample` draws latents (Algorithm 2, deterministic Heun by default; all initial noise
is drawn up front from one seeded generator, so a sample does not depend on the batch size);
:func:`decode_latents` renders latents on a grid in bounded-memory batches.
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import numpy as np
import torch

from lgesynth.errors import DataError

GENERATOR_JSON = "generator.json"
GENERATOR_FORMAT = "lgesynth.edm_generator"
FILES = {"denoiser": "edm_ema.safetensors", "standardizer": "standardizer.safetensors", "decoder": "decoder.safetensors"}
CONDITIONS = ("none", "burden", "pattern", "burden+pattern")
SCALE_DIMS = 3
SPACING_RANGE = 2.0  # sampled voxel sizes are clipped to [min / 2, max * 2] of the training subjects'


def bundle_root(default: str = ".") -> str:
    """The bundle folder of the config given on the command line (``--config_file B/configs/x.yaml`` -> ``B``).

    So ``python -m monai.bundle run --config_file bundles/edm_synth/configs/inference.yaml`` finds
    ``bundles/edm_synth/models`` from the repository root; ``default`` when no ``--config_file`` is
    on the command line (e.g. ``monai.bundle.run`` called from Python: pass ``bundle_root``).
    """
    argv = sys.argv
    for i, arg in enumerate(argv):
        value = argv[i + 1] if arg == "--config_file" and i + 1 < len(argv) else (
            arg.split("=", 1)[1] if arg.startswith("--config_file=") else None)
        if value is None:
            continue
        if value.strip().startswith("["):
            value = ast.literal_eval(value)[0]
        path = Path(value).resolve()
        if path.parent.name == "configs":
            return str(path.parent.parent)
    return default


def load_generator_record(models_dir: str | Path) -> dict:
    """``models_dir/generator.json``, checked; ``DataError`` naming it when missing or foreign."""
    path = Path(models_dir) / GENERATOR_JSON
    if not path.is_file():
        raise DataError(path, "not found: models_dir must hold a trained edm_synth generator (configs/train.yaml "
                        "writes it into models_dir at its end); train first, or pass --models_dir (or --bundle_root)")
    record = json.loads(path.read_text())
    if record.get("format") != GENERATOR_FORMAT:
        raise DataError(path, f"not an edm_synth generator record (format {record.get('format')!r})")
    for key, name in record["files"].items():
        if not (Path(models_dir) / name).is_file():
            raise DataError(Path(models_dir) / name, f"{key} weights listed in {GENERATOR_JSON} are missing; copy the "
                            "whole models folder")
    return record


def condition_parts(condition: str) -> tuple[bool, bool]:
    """``(burden, pattern)`` flags of a condition name."""
    if condition not in CONDITIONS:
        raise ValueError(f"condition must be one of {CONDITIONS}, got {condition!r}")
    return "burden" in condition, "pattern" in condition


# ------------------------------------------------------------------------------------- grids
def centred_affine(spacing_mm, shape) -> np.ndarray:
    """(4, 4) diagonal voxel -> world (mm) affine of a ``shape`` grid at ``spacing_mm`` (3,), centred at 0."""
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -spacing * (np.asarray(shape, dtype=np.float64) - 1) / 2
    return affine


def sample_grid(record: dict, canonical_spacing_mm, spacing_mm=None, slice_spacing_mm: float | None = None,
                snap_slices: bool = False) -> tuple[tuple[int, int, int], np.ndarray, torch.Tensor]:
    """``(shape, affine (4, 4), coords (X*Y*Z, 3))`` to decode one sample on.

    The sample's box is the canonical shape x ``canonical_spacing_mm`` (3,), centred at the origin.
    Default: the canonical grid. ``spacing_mm`` (a number or (3,)): round(extent / spacing) voxels per
    axis over the box. ``slice_spacing_mm``: the canonical in-plane grid with round(z extent / slice
    spacing) slices. The written spacing is extent / voxels (within half a voxel of the request).
    ``snap_slices``: each slice's coordinates sit at the nearest canonical plane
    (``canonical_coords.nearest_planes``), the depths the decoder was trained at, instead of its own.
    """
    from lgesynth.data.canonical_coords import canonical_coords

    canonical = tuple(int(s) for s in record["grid"]["shape"])
    extent = np.asarray(canonical_spacing_mm, dtype=np.float64) * np.asarray(canonical)
    if spacing_mm is not None:
        want = np.broadcast_to(np.asarray(spacing_mm, dtype=np.float64), (3,))
        if not np.all(want > 0):
            raise ValueError(f"spacing_mm must be positive, got {spacing_mm!r}")
        shape = tuple(max(1, int(round(e / s))) for e, s in zip(extent, want))
    elif slice_spacing_mm is not None:
        if not float(slice_spacing_mm) > 0:
            raise ValueError(f"slice_spacing_mm must be positive, got {slice_spacing_mm!r}")
        shape = (canonical[0], canonical[1], max(1, int(round(extent[2] / float(slice_spacing_mm)))))
    else:
        shape = canonical
    spacing = extent / np.asarray(shape)
    coords = canonical_coords(shape, record["z_extent"], canonical[2] if snap_slices else None)
    return shape, centred_affine(spacing, shape), coords


def reference_spacing(record: dict) -> np.ndarray:
    """(3,) the reference voxel size (mm) of generator.json / inr2vec_model.json (``reference_affine``)."""
    from lgesynth.io import spacing_from_affine

    return spacing_from_affine(np.asarray(record["reference_affine"], dtype=np.float64))


def canonical_grid(record: dict, spacing_mm=None) -> tuple[tuple[int, int, int], np.ndarray, torch.Tensor]:
    """``(shape, affine (4, 4), coords (X*Y*Z, 3))``: :func:`sample_grid` of the reference voxel size."""
    return sample_grid(record, reference_spacing(record), spacing_mm)


@torch.no_grad()
def decode_latents(decoder, w: torch.Tensor, coords: torch.Tensor, shape, batch: int = 8, chunk: int = 32768):
    """Yield ``(rows, images (b, X, Y, Z) float32, labels (b, X, Y, Z) uint8)`` per batch of ``batch`` latents.

    ``w`` (n, latent_dim) raw (destandardised) latents; ``coords`` (X*Y*Z, 3); labels by
    ``inr.loss.decode`` (myocardium p > 0.5, scar p > 0.5 inside it).
    """
    from lgesynth.inr.loss import decode

    device = next(decoder.parameters()).device
    coords = coords.to(device)
    for s in range(0, w.shape[0], batch):
        z = w[s: s + batch].to(device)
        pred = decoder.decode(coords, z, chunk).float()
        myo, scar = decode(torch.sigmoid(pred[..., 1]), torch.sigmoid(pred[..., 2]))
        label = (myo.to(torch.uint8) + scar.to(torch.uint8)).reshape(z.shape[0], *shape).cpu().numpy()
        image = pred[..., 0].reshape(z.shape[0], *shape).cpu().numpy().astype(np.float32)
        yield list(range(s, s + z.shape[0])), image, label


def decode_samples(decoder, w: torch.Tensor, grids: list[tuple], batch: int = 8, chunk: int = 32768):
    """Yield ``(row, image (X, Y, Z) float32, label (X, Y, Z) uint8)`` per latent in row order.

    ``w`` (n, latent_dim); ``grids[i]`` is sample i's ``(shape, affine, coords)`` (:func:`sample_grid`);
    samples that share a shape are decoded together (their coords are the same).
    """
    by_shape: dict[tuple, list[int]] = {}
    for i, (shape, _, _) in enumerate(grids):
        by_shape.setdefault(tuple(shape), []).append(i)
    out = {}
    for shape, rows in by_shape.items():
        for part, images, labels in decode_latents(decoder, w[rows], grids[rows[0]][2], shape, batch, chunk):
            for j, image, label in zip(part, images, labels):
                out[rows[j]] = (image, label)
    for i in range(len(grids)):
        yield (i, *out[i])


# ------------------------------------------------------------------------------------- the generator
class Generator:
    """A trained generator: EMA denoiser, standardiser and decoder from ``models_dir`` (see module doc).

    Attributes: ``record`` (generator.json), ``net`` (EDMPrecond, eval), ``standardizer``, ``decoder``,
    ``condition``, ``cond_dim``, ``scale_dims`` (0 or 3), ``dim`` (the latent the decoder takes),
    ``vector_dim`` (latent + scale dims: what the standardiser maps back to), ``model_dim`` (what the EDM
    models: ``vector_dim``, or the k dims of the training cohort's span).
    """

    def __init__(self, models_dir: str | Path, device: str | torch.device = "cpu"):
        from safetensors.torch import load_file

        from lgesynth.edm import EDMPrecond, LatentDenoiser, LatentStandardizer
        from lgesynth.inr2vec.decoder import build_decoder

        self.models_dir, self.device = Path(models_dir), torch.device(device)
        self.record = load_generator_record(models_dir)
        where = self.models_dir / GENERATOR_JSON
        files = {k: self.models_dir / v for k, v in self.record["files"].items()}
        denoiser = LatentDenoiser(**self.record["denoiser"])
        denoiser.load_state_dict(load_file(str(files["denoiser"])))
        self.net = EDMPrecond(denoiser, self.record["sigma_data"]).to(self.device).eval()
        self.standardizer = LatentStandardizer.load(files["standardizer"]).to(self.device)
        self.decoder = build_decoder(self.record["decoder"])
        self.decoder.load_state_dict(load_file(str(files["decoder"])))
        self.decoder = self.decoder.to(self.device).eval()
        self.condition = self.record.get("condition", "none")
        self.cond_dim = int(self.record["denoiser"].get("cond_dim", 0))
        self.scale_dims = int(self.record.get("scale_dims", 0))
        if self.scale_dims not in (0, SCALE_DIMS) or self.standardizer.out_dim != self.model_dim or \
                int(getattr(self.decoder, "latent_dim", self.dim)) != self.dim:
            raise DataError(where, f"scale_dims {self.scale_dims} and denoiser dim {self.model_dim} do not fit the "
                            f"standardiser ({self.standardizer.dim} -> {self.standardizer.out_dim} dims) or the decoder; "
                            "copy the whole models folder "
                            "of one training run")
        bounds = self.record.get("canonical_spacing_mm", {})
        self.spacing_bounds = (np.asarray(bounds["min"]) / SPACING_RANGE, np.asarray(bounds["max"]) * SPACING_RANGE
                               ) if "min" in bounds and "max" in bounds else None

    @property
    def model_dim(self) -> int:
        return int(self.record["denoiser"]["dim"])

    @property
    def vector_dim(self) -> int:
        return self.standardizer.dim

    @property
    def dim(self) -> int:
        return self.vector_dim - self.scale_dims

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
        """``x`` (n, vector_dim) raw (destandardised) vectors -> ``(w (n, dim) float32, canonical voxel size (n, 3) mm float64)``.

        The voxel size is ``exp`` of the scale dims, clipped to [min / 2, max * 2] of the training
        subjects'; the reference voxel size for every row without scale dims.
        """
        w = x[:, : self.dim].float()
        if not self.scale_dims:
            return w, np.tile(reference_spacing(self.record), (x.shape[0], 1))
        spacing = torch.exp(x[:, self.dim:].double()).cpu().numpy()
        if self.spacing_bounds is not None:
            spacing = np.clip(spacing, *self.spacing_bounds)
        return w, spacing

    def conditions(self, n: int, scar_burden=None, pattern=None, seed: int = 0) -> tuple[torch.Tensor | None, list[dict]]:
        """Condition vectors (n, cond_dim) and what was requested per sample.

        Unrequested columns are resampled (with replacement) from the training subjects' conditions,
        so the default follows the training distribution. ``scar_burden``: ``[lo, hi]`` (uniform in
        the range), a number (constant) or None; ``pattern``: a name of ``SCAR_PATTERNS``, a list of
        names (cycled over the samples) or None.
        """
        from lgesynth.edm import SCAR_PATTERNS, scar_condition

        where = self.models_dir / GENERATOR_JSON
        if self.cond_dim == 0:
            if scar_burden is not None or pattern is not None:
                raise DataError(where, "this generator is unconditional (trained with condition: none); drop "
                                "scar_burden / pattern or retrain with condition: burden, pattern or burden+pattern")
            return None, [{} for _ in range(n)]
        use_burden, use_pattern = condition_parts(self.condition)
        if scar_burden is not None and not use_burden:
            raise DataError(where, f"trained with condition: {self.condition}; it cannot take a scar_burden")
        if pattern is not None and not use_pattern:
            raise DataError(where, f"trained with condition: {self.condition}; it cannot take a pattern")
        rng = np.random.default_rng([int(seed), 1])
        train = np.asarray(self.record["training_conditions"], dtype=np.float32).reshape(-1, self.cond_dim)
        cond = train[rng.integers(0, len(train), n)].copy()
        if use_burden and scar_burden is not None:
            b = np.asarray(scar_burden, dtype=np.float64).reshape(-1)
            cond[:, 0] = rng.uniform(b.min(), b.max(), n) if b.size == 2 else float(b[0])
        if use_pattern and pattern is not None:
            names = [pattern] if isinstance(pattern, str) else list(pattern)
            one_hot = scar_condition(pattern=[names[i % len(names)] for i in range(n)]).numpy()
            cond[:, -len(SCAR_PATTERNS):] = one_hot
        cond_t = torch.from_numpy(cond)
        if use_burden:
            scar_condition(burden=cond_t[:, 0])  # range check
        asked = []
        for row in cond:
            a = {}
            if use_burden:
                a["requested_scar_burden"] = float(row[0])
            if use_pattern:
                a["requested_pattern"] = SCAR_PATTERNS[int(np.argmax(row[-len(SCAR_PATTERNS):]))]
            asked.append(a)
        return cond_t, asked

    @torch.no_grad()
    def sample_with_spacing(self, n: int, seed: int = 0, num_steps: int | None = None, guidance: float = 1.0,
                            cond: torch.Tensor | None = None, batch_size: int = 64,
                            S_churn: float = 0.0) -> tuple[torch.Tensor, np.ndarray]:
        """``n`` samples from the noise of ``seed``: ``(w (n, dim) float32, canonical voxel size (n, 3) mm)``."""
        noise = torch.randn((n, self.model_dim), generator=torch.Generator().manual_seed(int(seed)))
        churn = torch.Generator(device=self.device).manual_seed(int(seed) + 1) if S_churn else None
        out = [self.denoise(noise[s: s + batch_size], num_steps, guidance,
                            None if cond is None else cond[s: s + batch_size], S_churn, churn)
               for s in range(0, n, batch_size)]
        return self.split(torch.cat(out) if out else torch.zeros(0, self.vector_dim))

    def sample(self, n: int, seed: int = 0, num_steps: int | None = None, guidance: float = 1.0,
               cond: torch.Tensor | None = None, batch_size: int = 64, S_churn: float = 0.0) -> torch.Tensor:
        """``n`` raw latents (n, dim) float32 (:meth:`sample_with_spacing` without the voxel sizes)."""
        return self.sample_with_spacing(n, seed, num_steps, guidance, cond, batch_size, S_churn)[0]

    @torch.no_grad()
    def denoise(self, noise: torch.Tensor, num_steps: int | None = None, guidance: float = 1.0,
                cond: torch.Tensor | None = None, S_churn: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """Heun sampling from unit ``noise`` (b, model_dim) in standardised space, destandardised: (b, vector_dim) on CPU
        (latent and log voxel size; :meth:`split` separates them).

        ``num_steps`` None: generator.json's default; the other sampler settings are generator.json's.
        """
        from lgesynth.edm import edm_sampler

        sampler = {k: v for k, v in self.record.get("sampler", {}).items() if k != "num_steps"}
        steps = int(num_steps or self.record.get("sampler", {}).get("num_steps", 32))
        z = edm_sampler(self.net, noise.to(self.device), num_steps=steps, cond=None if cond is None else cond.to(self.device),
                        guidance=guidance, S_churn=S_churn, generator=generator, **sampler)
        return self.standardizer.destandardize(z).cpu()
