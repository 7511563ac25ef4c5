"""Sampling latents from the trained EDM and decoding them into a synthetic cohort.

The edm_synth bundle's ``models_dir`` holds everything this needs (written by the train run's
``GeneratorExporter``, see ``engines/edm.py``):

    generator.json             format, denoiser architecture, sigma_data, condition, sampler defaults,
                               decoder architecture, canonical grid, z extent, reference affine, files
    edm_ema.safetensors        EMA weights of F_theta (the LatentDenoiser inside EDMPrecond)
    standardizer.safetensors   per-dimension mean / std of the training latents
    decoder.safetensors        the inr2vec implicit decoder (not the encoder)
    reference.{json,safetensors}  training-cohort stats for the quality report (``synth.report``)

:class:`Generator` loads them; ``sample`` draws latents (Algorithm 2, deterministic Heun by default;
all initial noise is drawn up front from one seeded generator, so a sample does not depend on the
batch size); ``decode_latents`` renders latents on a grid in bounded-memory batches.
:class:`CohortSynthesizer` is the ``inference.yaml`` engine: one iteration per batch of samples,
writing ``imagesTr/syn_0001.nii.gz``, ``labelsTr/syn_0001.nii.gz``, ``latents.{safetensors,json}``,
``montage.png``, ``report.{json,png}`` and, last, ``datalist.json``.
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events

from lgesynth.errors import DataError
from lgesynth.io import save_nifti

GENERATOR_JSON = "generator.json"
GENERATOR_FORMAT = "lgesynth.edm_generator"
FILES = {"denoiser": "edm_ema.safetensors", "standardizer": "standardizer.safetensors", "decoder": "decoder.safetensors"}
CONDITIONS = ("none", "burden", "pattern", "burden+pattern")


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


def canonical_grid(record: dict, spacing_mm=None) -> tuple[tuple[int, int, int], np.ndarray, torch.Tensor]:
    """``(shape, affine (4, 4), coords (X*Y*Z, 3))`` to decode on: the canonical grid with the reference
    affine, or the reference box (canonical shape x reference spacing, centred at 0) at ``spacing_mm``."""
    from lgesynth.data.canonical import canonical_coords
    from lgesynth.io import spacing_from_affine

    shape = tuple(int(s) for s in record["grid"]["shape"])
    affine = np.asarray(record["reference_affine"], dtype=np.float64)
    if spacing_mm is not None:
        extent = spacing_from_affine(affine) * np.asarray(shape)
        shape = tuple(max(1, int(round(e / s))) for e, s in
                      zip(extent, np.broadcast_to(np.asarray(spacing_mm, dtype=np.float64), (3,))))
        spacing = extent / np.asarray(shape)
        affine = np.diag([*spacing, 1.0])
        affine[:3, 3] = -spacing * (np.asarray(shape) - 1) / 2
    return shape, affine, canonical_coords(shape, record["z_extent"])


@torch.no_grad()
def decode_latents(decoder, w: torch.Tensor, coords: torch.Tensor, shape, batch: int = 8, chunk: int = 32768):
    """Yield ``(rows, images (b, X, Y, Z) float32, labels (b, X, Y, Z) uint8)`` per batch of ``batch`` latents.

    ``w`` (n, latent_dim) raw (destandardised) latents; labels by ``inr.loss.decode`` (myocardium
    p > 0.5, scar p > 0.5 inside it).
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


def condition_parts(condition: str) -> tuple[bool, bool]:
    """``(burden, pattern)`` flags of a condition name."""
    if condition not in CONDITIONS:
        raise ValueError(f"condition must be one of {CONDITIONS}, got {condition!r}")
    return "burden" in condition, "pattern" in condition


class Generator:
    """A trained generator: EMA denoiser, standardiser and decoder from ``models_dir`` (see module doc).

    Attributes: ``record`` (generator.json), ``net`` (EDMPrecond, eval), ``standardizer``, ``decoder``,
    ``condition``, ``cond_dim``.
    """

    def __init__(self, models_dir: str | Path, device: str | torch.device = "cpu"):
        from safetensors.torch import load_file

        from lgesynth.edm import EDMPrecond, LatentDenoiser, LatentStandardizer
        from lgesynth.inr2vec.decoder import build_decoder

        self.models_dir, self.device = Path(models_dir), torch.device(device)
        self.record = load_generator_record(models_dir)
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

    @property
    def dim(self) -> int:
        return int(self.record["denoiser"]["dim"])

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
    def sample(self, n: int, seed: int = 0, num_steps: int | None = None, guidance: float = 1.0,
               cond: torch.Tensor | None = None, batch_size: int = 64, S_churn: float = 0.0) -> torch.Tensor:
        """``n`` raw latents (n, dim) float32 from the noise of ``seed`` (see :meth:`denoise`)."""
        noise = torch.randn((n, self.dim), generator=torch.Generator().manual_seed(int(seed)))
        churn = torch.Generator(device=self.device).manual_seed(int(seed) + 1) if S_churn else None
        out = [self.denoise(noise[s: s + batch_size], num_steps, guidance,
                            None if cond is None else cond[s: s + batch_size], S_churn, churn)
               for s in range(0, n, batch_size)]
        return torch.cat(out) if out else torch.zeros(0, self.dim)

    @torch.no_grad()
    def denoise(self, noise: torch.Tensor, num_steps: int | None = None, guidance: float = 1.0,
                cond: torch.Tensor | None = None, S_churn: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """Heun sampling from unit ``noise`` (b, dim) in standardised space, destandardised: (b, dim) float32 on CPU.

        ``num_steps`` None: generator.json's default; the other sampler settings are generator.json's.
        """
        from lgesynth.edm import edm_sampler

        sampler = {k: v for k, v in self.record.get("sampler", {}).items() if k != "num_steps"}
        steps = int(num_steps or self.record.get("sampler", {}).get("num_steps", 32))
        z = edm_sampler(self.net, noise.to(self.device), num_steps=steps, cond=None if cond is None else cond.to(self.device),
                        guidance=guidance, S_churn=S_churn, generator=generator, **sampler)
        return self.standardizer.destandardize(z).cpu()


class CohortSynthesizer(Engine):
    """Write a synthetic cohort (see module doc); one iteration per ``batch_size`` samples.

    Args:
        models_dir: the edm_synth models folder.
        output_dir: the cohort folder.
        num_samples, seed, num_steps, guidance: sampling (``num_steps`` None: generator.json's default).
        scar_burden, pattern: condition request (see ``Generator.conditions``).
        spacing_mm: decode the reference box at this spacing instead of the canonical grid.
        batch_size: samples per iteration (sampled together, decoded ``decode_batch`` at a time).
        reject_implausible: also list samples failing the ring checks under ``rejected``.
        montage_samples: panels in ``montage.png``.
        reference_datalist: real training pairs for the report instead of the stored stats.
    """

    def __init__(self, models_dir: str, output_dir: str, num_samples: int = 200, seed: int = 0,
                 num_steps: int | None = None, guidance: float = 1.0, scar_burden=None, pattern=None,
                 spacing_mm=None, batch_size: int = 32, decode_batch: int = 8, chunk: int = 32768,
                 reject_implausible: bool = False, montage_samples: int = 16, reference_datalist: str | None = None,
                 device: str | torch.device = "cpu", val_handlers=(), progress: bool = True):
        from lgesynth.synth.report import CohortStats

        super().__init__(self._process)
        self.gen = Generator(models_dir, device)
        self.models_dir, self.output_dir = str(models_dir), Path(output_dir).resolve()
        self.num_samples, self.seed, self.guidance = int(num_samples), int(seed), float(guidance)
        self.num_steps = int(num_steps) if num_steps else int(self.gen.record.get("sampler", {}).get("num_steps", 32))
        self.batch_size, self.decode_batch, self.chunk = max(1, int(batch_size)), int(decode_batch), int(chunk)
        self.reject_implausible, self.montage_samples = bool(reject_implausible), int(montage_samples)
        self.reference_datalist = reference_datalist
        self.shape, self.affine, self.coords = canonical_grid(self.gen.record, spacing_mm)
        self.spacing_mm = spacing_mm
        self.cond, self.asked = self.gen.conditions(self.num_samples, scar_burden, pattern, self.seed)
        self.request = {"scar_burden": scar_burden, "pattern": pattern}
        self.ids = [f"syn_{i + 1:04d}" for i in range(self.num_samples)]
        self.noise = torch.randn((self.num_samples, self.gen.dim), generator=torch.Generator().manual_seed(self.seed))
        self.stats = CohortStats(tuple(self.gen.record["grid"]["shape"]))
        self.latents: list[torch.Tensor] = []
        self.kept: list[dict] = []
        self.rejected: list[dict] = []
        self.panels: list[tuple] = []
        for handler in val_handlers or ():
            handler.attach(self)
        self._bar = None
        if progress:
            from tqdm import tqdm

            self._bar = tqdm(total=self.num_samples, desc="edm_synth sample+decode", unit="sample")

    def run_params(self) -> dict:
        return {"models_dir": self.models_dir, "num_samples": self.num_samples, "seed": self.seed,
                "num_steps": self.num_steps, "guidance": self.guidance, "condition": self.gen.condition,
                "request": {k: str(v) for k, v in self.request.items()}, "grid_shape": list(self.shape)}

    def _process(self, engine: Engine, start: int) -> dict:
        from lgesynth.data.validate import label_problems
        from lgesynth.io import spacing_from_affine
        from lgesynth.viz import mid_slice

        n = min(self.batch_size, self.num_samples - start)
        cond = None if self.cond is None else self.cond[start: start + n]
        w = self.gen.denoise(self.noise[start: start + n], self.num_steps, self.guidance, cond)
        self.latents.append(w)
        spacing = spacing_from_affine(self.affine)
        for rows, images, labels in decode_latents(self.gen.decoder, w, self.coords, self.shape, self.decode_batch, self.chunk):
            for r, image, label in zip(rows, images, labels):
                i = start + r
                sid = self.ids[i]
                record = self.stats.add(sid, image, label, spacing)
                img_p = save_nifti(self.output_dir / "imagesTr" / f"{sid}.nii.gz", image, self.affine, dtype=np.float32)
                lab_p = save_nifti(self.output_dir / "labelsTr" / f"{sid}.nii.gz", label, self.affine, dtype=np.uint8)
                entry = {"id": sid, "image": str(img_p), "label": str(lab_p), "synthetic": True,
                         "scar": bool((label == 2).any()), "scar_burden": record["scar_burden"], **self.asked[i]}
                problems = label_problems(label) or (record["problems"] if self.reject_implausible else [])
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
        from lgesynth.data.datalist import write_datalist
        from lgesynth.inr2vec.latents import Latents, save_latents
        from lgesynth.synth.report import CohortStats, reference_from_datalist, write_report
        from lgesynth.viz import save_montage

        w = torch.cat(self.latents) if self.latents else torch.zeros(0, self.gen.dim)
        self.stats.latents = w
        subjects = [{"id": sid, "section": "synthetic", **self.asked[i]} for i, sid in enumerate(self.ids)]
        save_latents(self.output_dir, Latents(w, subjects, self.gen.record.get("latents", {}).get("encoder_sha256"),
                                              {"generator": self.models_dir, "seed": self.seed, "num_steps": self.num_steps,
                                               "guidance": self.guidance}))
        if self.panels:
            save_montage(self.output_dir / "montage.png", [p[0] for p in self.panels], [p[1] for p in self.panels],
                         [p[2] for p in self.panels])
        stored = CohortStats.load(self.models_dir)
        reference = (reference_from_datalist(self.reference_datalist, self.gen.record["grid"], latents=stored.latents)
                     if self.reference_datalist else stored)
        report = write_report(self.output_dir, self.stats, reference, self.gen.standardizer.cpu(), {
            "rejected": len(self.rejected), "kept": len(self.kept), "num_steps": self.num_steps, "seed": self.seed,
            "guidance": self.guidance, "condition": self.gen.condition,
            "reference": {"source": self.reference_datalist or "training-cohort stats in models_dir", "count": len(reference)}})
        rel = [{**e, "image": f"imagesTr/{e['id']}.nii.gz", "label": f"labelsTr/{e['id']}.nii.gz"} for e in self.rejected]
        write_datalist(self.output_dir / "datalist.json", self.kept, [], rejected=rel,
                       source={"generator": self.models_dir, "seed": self.seed, "num_steps": self.num_steps,
                               "guidance": self.guidance, "condition": self.gen.condition,
                               "request": {k: v for k, v in self.request.items() if v is not None}})
        return report

    def run_all(self):
        from lgesynth.synth.report import report_metrics

        def finish(engine: Engine) -> None:
            report = self.write()
            engine.state.metrics = {**report_metrics(report), "rejected": report["rejected"]}
            if self._bar is not None:
                self._bar.close()

        self._event_handlers[Events.EPOCH_COMPLETED].insert(0, (finish, (self,), {}))
        starts = list(range(0, self.num_samples, self.batch_size))
        return self.run(starts, max_epochs=1)
