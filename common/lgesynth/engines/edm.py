"""edm_synth training engines (the bundle's ``train#trainer`` and ``validate#evaluator``; the export at the
end of training is ``engines.edm_export.GeneratorExporter``).

    EdmData            latents of one datalist section (+ log canonical voxel size), standardised; sigma_data;
                       condition vectors
    EdmTrainer         ignite engine: one iteration = one EDMLoss step on a batch of latents + EMA update
    EdmValidator       MONAI Evaluator: EDM loss of the EMA net at fixed noise levels and fixed noise

Batches are a function of the iteration number only (``seed_of(seed, iteration)``), so a resumed run
draws what the uninterrupted run would have drawn; under torch.distributed every rank draws the same
global batch and takes its ``rank::world`` slice, so DDP averages the gradient of the same global batch.

Scale (``scale``): the canonical grid normalises each heart's size away from its latent; the size
lives in the subject's canonical voxel size (``canonical_spacing_mm`` in latents.json). With
``scale`` on, the EDM models ``x = [w, log(canonical_spacing_mm)]`` (latent_dim + 3 dims), jointly,
so every sample gets its own physical size; generator.json records ``scale_dims: 3`` and
``Generator.split`` cuts samples back into the latent and the voxel size. ``auto`` (default) turns it
on when every subject records its spacing (latents encoded before the field existed train without).

Conditioning (``condition``): ``none``, ``burden`` (the scar burden of the canonical label, from
``latents.json``), ``pattern`` (one-hot over ``SCAR_PATTERNS``; latents encoded with a datalist that
gives ``pattern``) or ``burden+pattern``; the loss drops a sample's condition with probability
``p_uncond`` (classifier-free guidance).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine
from monai.engines import Evaluator

from lgesynth.edm import SCAR_PATTERNS, EDMLoss, LatentStandardizer, estimate_sigma_data, scar_condition
from lgesynth.edm.denoiser import FourierEmbedding, LatentDenoiser
from lgesynth.engines.base import StepTrainer
from lgesynth.engines.inr2vec import SubjectMean, SubjectMedian, shard_of_rank
from lgesynth.errors import DataError
from lgesynth.flags import flag
from lgesynth.inr.sampling import seed_of
from lgesynth.inr2vec.latents import LATENTS_JSON, load_latents, subject_spacing
from lgesynth.synth.generator import SCALE_DIMS, condition_parts

logger = logging.getLogger("lgesynth.edm")


def latents_json(path: str | Path) -> Path:
    p = Path(path)
    return p.parent / LATENTS_JSON if p.suffix else p / LATENTS_JSON


def pattern_name(value) -> str | None:
    """The ``SCAR_PATTERNS`` name of a datalist's pattern, ignoring case, ``_``, ``-`` and spaces
    (the phantom writes ``nonischemic``); None when it is none of them."""
    key = str(value).lower().replace("_", "").replace("-", "").replace(" ", "")
    return next((p for p in SCAR_PATTERNS if p.replace("_", "") == key), None) if value is not None else None


def condition_vectors(subjects: list[dict], condition: str, where: str | Path | None = None) -> torch.Tensor | None:
    """``(n, cond_dim)`` condition vectors of latent records (``scar_burden``, ``pattern``), None for ``none``."""
    use_burden, use_pattern = condition_parts(condition)
    if not (use_burden or use_pattern):
        return None
    burden = pattern = None
    if use_burden:
        burden = [float(s.get("scar_burden", 0.0)) for s in subjects]
    if use_pattern:
        missing = [s["id"] for s in subjects if pattern_name(s.get("pattern")) is None]
        if missing:
            raise DataError(where, f"condition {condition!r} needs a scar pattern ({', '.join(SCAR_PATTERNS)}) per "
                            f"subject; missing or unknown for {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}: "
                            "encode with a datalist that gives \"pattern\" (inr2vec inference --datalist) or use "
                            "condition: burden / none")
        pattern = [pattern_name(s["pattern"]) for s in subjects]
    return scar_condition(burden, pattern)


def scale_mode(scale) -> str:
    """``"auto"``, ``"on"`` or ``"off"`` from the config's ``scale``: ``auto``, None / ``none`` (off), or a
    yes / no setting as ``lgesynth.flags.flag`` reads it."""
    key = str(scale).strip().lower()
    if key in ("auto", "none"):
        return "auto" if key == "auto" else "off"
    try:
        return "on" if flag(scale, "scale") else "off"
    except ValueError:
        raise ValueError(f"scale must be auto, true or false, got {scale!r}") from None


class EdmData:
    """Latents of the ``section`` subjects (training only, by default), standardised, and their conditions.

    Attributes: ``w`` (n, latent_dim) raw latents; ``spacing_mm`` (n, 3) canonical voxel sizes in mm
    (None when a subject does not record one); ``scale_dims`` (3 when the EDM models the scale, else 0);
    ``x`` (n, latent_dim + scale_dims) ``[w, log(spacing_mm)]`` or ``w``; ``z`` (n, dim) standardised
    ``x``, what the EDM models (on ``device``); ``ids``, ``subjects``, ``standardizer``, ``sigma_data``,
    ``cond`` (n, cond_dim) or None, ``cond_dim``, ``z_val`` (the ``validation`` latents if any, else
    ``z``), ``encoder_sha256``, ``path``.

    Args:
        scale: ``auto`` (model the scale when every subject of ``section`` and ``validation`` records
            ``canonical_spacing_mm``), true (require it: ``DataError`` naming latents.json otherwise)
            or false.
        components: the standardiser's span (``LatentStandardizer.fit``): ``all`` (per dimension),
            ``span`` (whitened along the training cohort's principal axes) or an int.
    """

    def __init__(self, latents: str, section: str = "training", condition: str = "none",
                 device: str | torch.device = "cpu", eps: float = 1e-6, scale="auto", components: int | str = "all"):
        self.path, self.device, self.condition = str(latents), torch.device(device), condition
        where = latents_json(latents)
        lat = load_latents(latents)
        rows = lat.rows(section)
        if len(rows) < 2:
            raise DataError(where, f"{len(rows)} latents in section {section!r}; the EDM needs at least 2 "
                            f"(sections present: {sorted({s.get('section') for s in lat.subjects})})")
        self.w = lat.latents[rows].float()
        self.subjects = [lat.subjects[i] for i in rows]
        self.ids = [s["id"] for s in self.subjects]
        self.encoder_sha256 = lat.encoder_sha256
        val = lat.rows("validation")
        val_subjects = [lat.subjects[i] for i in val]
        self.spacing_mm = subject_spacing(self.subjects, "canonical_spacing_mm", where)
        val_spacing = subject_spacing(val_subjects, "canonical_spacing_mm", where) if val else None
        mode = scale_mode(scale)
        known = self.spacing_mm is not None and (not val or val_spacing is not None)
        if mode == "on" and not known:
            raise DataError(where, "scale: true needs canonical_spacing_mm for every subject; re-encode the bank with "
                            "the inr2vec bundle's `encode` (it records them), or set scale: auto / false")
        self.scale_dims = SCALE_DIMS if mode != "off" and known else 0
        if mode == "auto" and not known:
            logger.warning("latents %s: not every subject records canonical_spacing_mm; the EDM models the latent only "
                           "and every sample gets the reference voxel size", latents)
        self.x = self._with_scale(self.w, self.spacing_mm)
        try:
            self.standardizer = LatentStandardizer.fit(self.x, eps, components)
        except ValueError as exc:
            raise DataError(where, f"{len(rows)} {section} latents: {exc}") from None
        self.z = self.standardizer.standardize(self.x).float().to(self.device)
        self.sigma_data = estimate_sigma_data(self.z)
        if not self.sigma_data > 0:
            raise DataError(where, f"the {len(rows)} {section} latents are all the same (after standardisation): "
                            "the inr2vec encoder collapsed, and an EDM cannot learn a distribution of one point; "
                            "retrain inr2vec (lower lr, more steps) and encode again")
        cond = condition_vectors(self.subjects, condition, where)
        self.cond = None if cond is None else cond.to(self.device)
        self.cond_dim = 0 if cond is None else int(cond.shape[1])
        x_val = self._with_scale(lat.latents[val].float(), val_spacing) if val else None
        self.z_val = self.standardizer.standardize(x_val).to(self.device) if val else self.z
        cond_val = condition_vectors(val_subjects, condition, where) if val else cond
        self.cond_val = None if cond_val is None else cond_val.to(self.device)
        logger.info("latents %s: %d %s subjects, latent dim %d + %d scale dims, modelled in %d dims (%s), sigma_data %.4f, "
                    "condition %s", latents, len(rows), section, self.w.shape[1], self.scale_dims, self.dim,
                    "per dimension" if self.standardizer.basis is None else "the cohort's span", self.sigma_data, condition)

    def _with_scale(self, w: torch.Tensor, spacing_mm: np.ndarray | None) -> torch.Tensor:
        """(n, latent_dim) -> (n, dim): ``[w, log(spacing_mm)]`` with scale dims, else ``w``."""
        if not self.scale_dims:
            return w
        return torch.cat([w, torch.from_numpy(np.log(spacing_mm)).to(w.dtype)], dim=1)

    @property
    def dim(self) -> int:
        """What the EDM models: latent_dim + scale_dims, or the span's k dims."""
        return int(self.z.shape[1])

    @property
    def latent_dim(self) -> int:
        return int(self.w.shape[1])


def denoiser_architecture(model: LatentDenoiser) -> dict:
    """Constructor arguments of a ``LatentDenoiser`` (what ``Generator`` needs to rebuild it)."""
    return {"dim": model.dim, "hidden": model.input.out_features, "blocks": len(model.blocks), "cond_dim": model.cond_dim,
            "emb_dim": model.map_emb[0].out_features, "noise_channels": model.map_emb[0].in_features,
            "noise_embedding": "fourier" if isinstance(model.map_noise, FourierEmbedding) else "positional",
            "dropout": float(model.blocks[0].dropout.p) if len(model.blocks) else 0.0}


def _unwrap(net):
    return net.module if isinstance(net, torch.nn.parallel.DistributedDataParallel) else net


class EdmTrainer(StepTrainer):
    """Train ``net`` (``EDMPrecond``, or DDP around it) on ``data`` with ``EDMLoss``; EMA after every step.

    Args:
        data: ``EdmData``.
        net: the denoiser being trained.
        ema: ``edm.EMA`` of the unwrapped ``EDMPrecond``.
        optimizer: over ``net.parameters()``.
        loss_fn: ``EDMLoss`` (its ``sigma_data`` should be ``data.sigma_data``).
        steps: total iterations; ``max_epochs = ceil(steps / epoch_length)``.
        epoch_length: iterations per epoch (checkpoints, validation, MLflow epochs).
        batch_size: global latents per iteration (drawn without replacement within an iteration; with
            replacement when larger than the cohort).
        grad_clip: max global grad norm (None: off).
        seed: seeds the batches and the noise (with the iteration and rank).
        train_handlers: attached in order.
        shard: ``(rank, world)``; default from torch.distributed.
    """

    def __init__(self, data: EdmData, net, ema, optimizer: torch.optim.Optimizer, loss_fn: EDMLoss, steps: int = 4000,
                 epoch_length: int = 100, batch_size: int = 64, grad_clip: float | None = None, seed: int = 0,
                 train_handlers=(), shard: tuple[int, int] | None = None, config: dict | None = None):
        super().__init__()
        self.data, self.net, self.ema, self.optimizer, self.loss_fn = data, net, ema, optimizer, loss_fn
        self.steps, self.epoch_length, self.batch_size = int(steps), int(epoch_length), int(batch_size)
        self.grad_clip, self.seed = grad_clip, int(seed)
        self.rank, self.world = shard or shard_of_rank()
        self.config = dict(config or {})
        self.attach_handlers(train_handlers)

    def run_params(self) -> dict:
        """What MLflow records as params (RunInfoHandler)."""
        return {"latents": self.data.path, "subjects": len(self.data.ids), "dim": self.data.dim,
                "scale_dims": self.data.scale_dims,
                "sigma_data": self.data.sigma_data, "condition": self.data.condition, "p_uncond": self.loss_fn.p_uncond,
                "P_mean": self.loss_fn.P_mean, "P_std": self.loss_fn.P_std,
                "denoiser": denoiser_architecture(_unwrap(self.net).model), "steps": self.steps,
                "epoch_length": self.epoch_length, "batch_size": self.batch_size, "grad_clip": self.grad_clip,
                "world_size": self.world, "ema_halflife_kimg": self.ema.halflife_kimg, "ema_decay": self.ema.decay,
                **self.config}

    def batch_rows(self, iteration: int) -> torch.Tensor:
        """Rows (of ``data.z``) of this rank's latents at ``iteration``."""
        n = self.data.z.shape[0]
        g = torch.Generator().manual_seed(seed_of(self.seed, iteration))
        k = max(self.batch_size, self.world)
        rows = torch.cat([torch.randperm(n, generator=g) for _ in range(math.ceil(k / n))])[:k]
        return rows[self.rank:: self.world]

    def _process(self, engine: Engine, _batch) -> list[dict]:
        it = engine.state.iteration
        rows = self.batch_rows(it).to(self.data.device)
        y = self.data.z[rows]
        cond = None if self.data.cond is None else self.data.cond[rows]
        g = torch.Generator(device=self.data.device).manual_seed(seed_of(self.seed, it, self.rank, 1))
        self.net.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.net, y, cond, generator=g)
        loss.backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.grad_clip)
        self.optimizer.step()
        self.ema.update_parameters(_unwrap(self.net))
        return [{"loss": float(loss.detach())}]


def _lower_is_better(current: float, best: float) -> bool:
    """MONAI's key-metric comparison for a loss (MONAI starts ``best_metric`` at -1: any loss beats that)."""
    return best < 0 or current < best


class EdmValidator(Evaluator):
    """The EMA denoiser at every validation: its EDM loss on the validation latents (the training ones when
    there are none) at ``num_sigmas`` fixed noise levels (quantiles of p_train) with fixed noise
    (``state.metrics["val_loss"]``), and how much of what it samples copies a training subject:
    ``memorisation_samples`` latents from fixed noise (``memorisation_steps`` Heun steps, conditions drawn
    from the training subjects'), each flagged when its nearest training latent (standardised, scale dims
    left out) is nearer than ``COPY_RATIO`` of its mean distance to its ``COPY_NEIGHBOURS`` nearest, the
    quality report's latent-space rule: ``val_copy_fraction`` and ``val_nn_ratio`` (the samples' median
    ratio; it falls towards 0 as the EDM memorises its training set). ``memorisation_samples`` 0: off."""

    def __init__(self, data: EdmData, ema, loss_fn: EDMLoss, device: str | torch.device = "cpu", num_sigmas: int = 8,
                 seed: int = 12345, val_handlers=None, memorisation_samples: int = 64, memorisation_steps: int = 12):
        extra = {"val_copy_fraction": SubjectMean("copy"), "val_nn_ratio": SubjectMedian("nn_ratio")} \
            if memorisation_samples > 0 else None
        super().__init__(device=device, val_data_loader=[0], epoch_length=1, decollate=False,
                         key_val_metric={"val_loss": SubjectMean("loss")}, additional_metrics=extra,
                         val_handlers=val_handlers, metric_cmp_fn=_lower_is_better)
        self.data, self.ema, self.loss_fn = data, ema, loss_fn
        self.memorisation_steps = int(memorisation_steps)
        g = torch.Generator().manual_seed(seed + 1)
        self.sample_noise = torch.randn((int(memorisation_samples), data.dim), generator=g).to(data.z.device)
        self.sample_cond = None
        if data.cond is not None and memorisation_samples > 0:
            pick = torch.randint(len(data.cond), (int(memorisation_samples),), generator=g)
            self.sample_cond = data.cond[pick.to(data.cond.device)]
        # the training side of the memorisation measure, per-dimension standardised latents as the report takes them
        self.latent_head = data.standardizer.head(data.latent_dim)
        self.train_latents = self.latent_head.standardize(data.x[:, : data.latent_dim])
        from scipy.stats import norm

        q = (np.arange(num_sigmas) + 0.5) / num_sigmas
        self.sigmas = torch.tensor(np.exp(loss_fn.P_mean + loss_fn.P_std * norm.ppf(q)), dtype=torch.float32)
        g = torch.Generator().manual_seed(seed)
        self.noise = torch.randn((num_sigmas, *data.z_val.shape), generator=g).to(data.z_val.device)

    @torch.no_grad()
    def _iteration(self, engine, _batch) -> dict:
        net = self.ema.module.eval()
        y, cond = self.data.z_val, self.data.cond_val
        losses = []
        for sigma, n in zip(self.sigmas.to(y.device), self.noise):
            s = sigma.expand(y.shape[0])
            D = net(y + n * sigma, s, cond)
            losses.append((self.loss_fn.weight(s)[:, None] * (D - y) ** 2).mean(1))
        return {"loss": torch.stack(losses).mean(0), **self.memorisation(net)}

    @torch.no_grad()
    def memorisation(self, net) -> dict:
        """``copy`` (n,) 0/1 and ``nn_ratio`` (n,) of the fixed-noise samples (class doc); {} when off."""
        if not len(self.sample_noise):
            return {}
        from lgesynth.edm import edm_sampler
        from lgesynth.synth.memorisation import latent_distances, nearest_neighbours

        x = edm_sampler(net, self.sample_noise, num_steps=self.memorisation_steps, cond=self.sample_cond)
        w = self.data.standardizer.destandardize(x.cpu())[:, : self.data.latent_dim]
        train = self.train_latents
        nb = nearest_neighbours(latent_distances(self.latent_head.standardize(w), train), latent_distances(train, train))
        return {"copy": torch.from_numpy(nb["close"].astype(np.float32)), "nn_ratio": torch.from_numpy(nb["nn_ratio"])}
