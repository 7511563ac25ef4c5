"""inr2vec training engines (the inr2vec bundle's ``train#trainer`` and ``validate#evaluator``).

    Inr2VecData        the bank, its subject split and the decoder targets on the canonical grid
    Inr2VecTrainer     ignite engine: one iteration = one ``train_step`` on a batch of subjects
    Inr2VecValidator   MONAI Evaluator: full-grid PSNR / Dice of the val subjects' reconstructions
    SubjectMean        ignite metric: NaN-aware mean of one per-subject value of the validator
    DistributedInr2Vec DDP over ``Inr2VecModel`` that still exposes what ``train_step`` reads

Split (by subject, never by point): the bank's ``test`` subjects are never trained on or used for
model selection; ``validation`` subjects, if the datalist had that section, are the val set, else a
seeded fraction of ``training`` subjects is held out, stratified by scar / no scar (the bank's ``has_scar``;
a bank without it records ``dice_scar = None`` exactly for the subjects without scar).

Targets: ``"volume"`` (default, the data): the canonical volume and label of every subject, re-made
from the source files the bank records with the bank's grid; ``"inr"``: rendered from the INR itself
(``targets_from_inr``, as in inr2vec). Points are drawn per subject with ``inr.sampling.PointSampler``:
a ``focus_fraction`` of them from the ``focus`` (the two-sided band of every myocardium and scar edge,
or the myocardium), so thin scar is seen often, and with ``importance_weights`` each point's loss is
weighted by ``1 / (N q)`` so that the step's loss is an unbiased estimate of the full-grid loss. Without
the weights the over-sampled class wins the decoder's mask threshold: a myocardium focus of 0.25
dilated the decoded myocardium of the training subjects by a median 15 % on real data.

Batches are a function of the iteration number only (generators seeded by ``seed, iteration, rank``),
so a resumed run draws what the uninterrupted run would have drawn. Under torch.distributed every
rank draws the same global batch of ``subjects_per_batch`` subjects and takes its ``rank::world``
slice (DistributedSampler-like), so DDP averages the gradient of the same global batch.

The trainer writes ``inr2vec_model.json`` (architecture, grid, z extent, split, reference affine)
beside the checkpoints; ``inr2vec_eval.load_trained`` rebuilds the networks from it.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.metrics import Metric
from monai.engines import Evaluator

from lgesynth.data.canonical import CanonicalGrid
from lgesynth.data.canonical_case import to_canonical
from lgesynth.data.canonical_coords import canonical_coords
from lgesynth.data.cohort import case_targets
from lgesynth.data.datalist import stratified_split
from lgesynth.engines.base import StepTrainer
from lgesynth.flags import flag
from lgesynth.inr.bank import BANK_JSON, InrBank, load_bank, load_init
from lgesynth.inr.export import bank_z_extent
from lgesynth.inr.fit import resolve_dtype
from lgesynth.inr.sampling import PointSampler, grid_shape, seed_of
from lgesynth.inr2vec.augment import augment_params
from lgesynth.inr2vec.encoder import Inr2VecEncoder
from lgesynth.inr2vec.soft_targets import soft_mask_targets
from lgesynth.inr2vec.train import Inr2VecModel, evaluate, targets_from_inr, train_step
from lgesynth.io import write_json

logger = logging.getLogger("lgesynth.inr2vec")
MODEL_JSON = "inr2vec_model.json"
MODEL_FORMAT = "lgesynth.inr2vec_model"


def split_bank(bank: InrBank, val_fraction: float = 0.2, seed: int = 0) -> dict[str, list[int]]:
    """Subject rows of the bank per role: ``{"train", "val", "test"}`` (see module doc)."""
    section = [s.get("source", {}).get("section", "training") for s in bank.subjects]
    training = [i for i, s in enumerate(section) if s == "training"]
    val = [i for i, s in enumerate(section) if s == "validation"]
    if not val and val_fraction > 0 and len(training) > 1:
        has_scar = [bank.subjects[i].get("has_scar", bank.subjects[i].get("dice_scar") is not None) for i in training]
        _, held = stratified_split([str(i) for i in training], has_scar, val_fraction, seed)
        val = [int(i) for i in held]
        training = [i for i in training if i not in set(val)]
    return {"train": training, "val": val, "test": [i for i, s in enumerate(section) if s == "test"]}


def canonical_targets(bank: InrBank, rows: list[int], grid: CanonicalGrid | None = None) -> torch.Tensor:
    """``(len(rows), X*Y*Z, 3)`` (intensity, myocardium, scar) of bank subjects from their source files."""
    grid = grid or CanonicalGrid.from_record(bank.fit.get("grid"))
    out = []
    for i in rows:
        src = bank.subjects[i]["source"]
        out.append(case_targets(to_canonical(src["image"], src["label"], grid)))
    return torch.stack(out) if out else torch.zeros(0, int(np.prod(grid.shape)), 3)


class Inr2VecData:
    """The bank, its split and the decoder targets of the train and val subjects.

    Args:
        bank_dir: the inr_fit output (folder or either bank file).
        val_fraction: share of ``training`` subjects held out for validation (if the bank has no
            ``validation`` section).
        seed: split seed.
        targets: ``"volume"`` (canonical volumes from the source files) or ``"inr"`` (rendered INRs).
        device: where the weights and targets live.
    """

    def __init__(self, bank_dir: str, val_fraction: float = 0.2, seed: int = 0, targets: str = "volume",
                 device: str | torch.device = "cpu"):
        if targets not in ("volume", "inr"):
            raise ValueError(f"targets must be 'volume' or 'inr', got {targets!r}")
        self.bank_dir, self.kind, self.device = str(bank_dir), targets, torch.device(device)
        self.bank = load_bank(bank_dir)
        self.grid = CanonicalGrid.from_record(self.bank.fit.get("grid"))
        self.z_extent = bank_z_extent(self.bank)
        self.split = split_bank(self.bank, val_fraction, seed)
        if not self.split["train"]:
            raise ValueError(f"{Path(bank_dir) / BANK_JSON}: no 'training' subjects to train on")
        self.coords = canonical_coords(self.grid.shape, self.z_extent).to(self.device)
        self.init = load_init(bank_dir, self.bank.init, self.bank.spec)  # the shared init: a siren decoder starts from it
        stacked = self.bank.stacked()
        self.params = {k: [p[rows].to(self.device) for p in stacked] for k, rows in self.split.items()}
        self.targets = {k: self._targets(k) for k in ("train", "val")}
        logger.info("bank %s: %d train, %d val, %d test subjects; targets from %s", bank_dir,
                    *(len(self.split[k]) for k in ("train", "val", "test")), targets)

    def _targets(self, role: str) -> torch.Tensor:
        if self.kind == "inr":
            return targets_from_inr(self.params[role], self.coords, self.bank.spec)
        return canonical_targets(self.bank, self.split[role], self.grid).to(self.device)

    def ids(self, role: str) -> list[str]:
        return [self.bank.ids[i] for i in self.split[role]]

    def reference_spacing(self) -> np.ndarray:
        """(3,) mm: the median canonical voxel size of the train subjects (ones without canonical affines)."""
        sizes = [np.linalg.norm(np.asarray(self.bank.subjects[i]["canonical"]["canonical_affine"])[:3, :3], axis=0)
                 for i in self.split["train"] if "canonical_affine" in self.bank.subjects[i].get("canonical", {})]
        return np.median(sizes, axis=0) if sizes else np.ones(3)

    def reference_affine(self) -> list[list[float]]:
        """A canonical affine for decoded subjects: median voxel size of the train subjects, centred at 0."""
        spacing = self.reference_spacing()
        affine = np.diag([*spacing, 1.0])
        affine[:3, 3] = -spacing * (np.asarray(self.grid.shape) - 1) / 2
        return affine.tolist()


def standardized(encoder: Inr2VecEncoder, params: list[torch.Tensor], mode: str = "per_tensor") -> Inr2VecEncoder:
    """Set the encoder's input standardisation from the train weights: ``"per_tensor"`` (scalar mean
    and std per tensor), ``"per_element"`` (bank mean of every entry; do not combine with permutation
    augmentation) or ``"init"`` (SIREN's init std, no data)."""
    if mode == "init":
        return encoder
    if mode not in ("per_tensor", "per_element"):
        raise ValueError(f"standardize must be 'per_tensor', 'per_element' or 'init', got {mode!r}")
    return encoder.fit_standardization([p.cpu() for p in params], per_element=mode == "per_element")


def architecture(encoder: Inr2VecEncoder, decoder) -> dict:
    """Constructor arguments of both networks (what ``load_trained`` needs to rebuild them); the decoder's
    (``ImplicitDecoder`` or ``SirenDecoder``) with its ``kind``, for ``build_decoder``."""
    return {"encoder": {"spec": encoder.spec.to_dict(), "latent_dim": encoder.latent_dim, "width": encoder.width,
                        "depth": len(encoder.mlp) // 3, "pool": encoder.pool,
                        "center_rows": encoder.center_rows},
            "decoder": decoder.config()}


def shard_of_rank() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` outside torch.distributed."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class DistributedInr2Vec(torch.nn.parallel.DistributedDataParallel):
    """DDP over an ``Inr2VecModel``; ``spec``, ``loss_weights``, ``encoder``, ``decoder`` pass through."""

    @property
    def spec(self):
        return self.module.spec

    @property
    def loss_weights(self):
        return self.module.loss_weights

    @property
    def encoder(self):
        return self.module.encoder

    @property
    def decoder(self):
        return self.module.decoder


class Inr2VecTrainer(StepTrainer):
    """Train encoder + decoder on the train subjects of ``data``.

    Args:
        data: ``Inr2VecData``.
        model: ``Inr2VecModel`` (or ``DistributedInr2Vec`` around it).
        optimizer: over ``model.parameters()``.
        output_dir: where ``inr2vec_model.json`` goes (beside the checkpoints).
        steps: total iterations; ``max_epochs = ceil(steps / epoch_length)``.
        epoch_length: iterations per epoch (the unit of checkpoints, validation and MLflow epochs).
        subjects_per_batch: global batch of subjects per iteration (split over ranks).
        points: grid points per subject per iteration; ``focus_fraction`` of them from the ``focus``
            (``"boundary"``: both sides of every mask edge, or ``"myocardium"``).
        importance_weights: weight each point by ``1 / (N q)`` (unbiased full-grid loss; module doc).
        mask_softness_mm: 0: {0, 1} mask targets; tau > 0: ``sigmoid(-signed distance / tau)`` targets, so the
            mask logits learn signed distances and latents between subjects decode edges between theirs
            (``inr2vec.soft_targets``). The decoded masks (p > 0.5) are unchanged.
        permute_prob, noise: weight-space augmentation (``augment_params``).
        bf16: bfloat16 autocast for the GEMMs (fp32 weights and loss); ``"auto"``: where the CPU (AVX512-BF16 /
            AMX) or GPU has fast bf16 (without them bf16 is emulated: decoding measured 7x slower than fp32).
        grad_clip: max global grad norm (None: off).
        seed: seeds the batches (with the iteration and rank).
        train_handlers: attached in order (``--tracking mlflow`` appends one).
        shard: ``(rank, world)``; default from torch.distributed.
    """

    def __init__(self, data: Inr2VecData, model, optimizer: torch.optim.Optimizer, output_dir: str, steps: int = 2000,
                 epoch_length: int = 50, subjects_per_batch: int = 16, points: int = 4096, focus_fraction: float = 0.25,
                 focus: str = "boundary", importance_weights: bool = True, mask_softness_mm: float = 0.0,
                 permute_prob: float = 0.0, noise: float = 0.0, bf16: bool | str = "auto", grad_clip: float | None = 1.0,
                 seed: int = 0, train_handlers=(), shard: tuple[int, int] | None = None, config: dict | None = None):
        super().__init__()
        self.data, self.model, self.optimizer = data, model, optimizer
        self.output_dir = Path(output_dir)
        self.steps, self.epoch_length = int(steps), int(epoch_length)
        self.subjects_per_batch, self.points = int(subjects_per_batch), int(points)
        if str(bf16).lower() == "auto":  # bf16 autocast only where the hardware has fast bf16 GEMMs (emulated it is slower)
            bf16 = resolve_dtype("auto", data.device) == torch.bfloat16
        self.permute_prob, self.noise, self.grad_clip = float(permute_prob), float(noise), grad_clip
        self.bf16 = flag(bf16, "bf16")
        self.seed = int(seed)
        self.rank, self.world = shard or shard_of_rank()
        self.config = dict(config or {})
        self.mask_softness_mm = float(mask_softness_mm)
        train_targets = data.targets["train"]
        if self.mask_softness_mm > 0:  # the grid's shape and spacing only matter for soft targets
            train_targets = soft_mask_targets(train_targets, grid_shape(data.coords), data.reference_spacing(),
                                              self.mask_softness_mm)
        self.sampler = PointSampler(data.coords, train_targets, self.points, focus_fraction, focus=focus)
        self.focus, self.focus_fraction = focus, float(focus_fraction)
        self.importance_weights = flag(importance_weights, "importance_weights")
        self.attach_handlers(train_handlers)
        self.add_event_handler(Events.STARTED, self._write_record)

    def run_params(self) -> dict:
        """What MLflow records as params (RunInfoHandler)."""
        net = self.model.module if hasattr(self.model, "module") else self.model
        return {"bank_dir": self.data.bank_dir, "targets": self.data.kind, "grid": self.data.grid.to_dict(),
                "z_extent": self.data.z_extent, "subjects": {k: len(v) for k, v in self.data.split.items()},
                **architecture(net.encoder, net.decoder), "steps": self.steps, "epoch_length": self.epoch_length,
                "subjects_per_batch": self.subjects_per_batch, "points": self.points, "focus": self.focus,
                "focus_fraction": self.focus_fraction, "importance_weights": self.importance_weights,
                "mask_softness_mm": self.mask_softness_mm, "permute_prob": self.permute_prob,
                "noise": self.noise, "bf16": self.bf16, "grad_clip": self.grad_clip, "world_size": self.world,
                "bank_init": self.data.bank.init, **self.config}

    def _write_record(self, engine: Engine) -> None:
        if self.rank != 0:
            return
        net = self.model.module if hasattr(self.model, "module") else self.model
        write_json(self.output_dir / MODEL_JSON, {
            "format": MODEL_FORMAT, **architecture(net.encoder, net.decoder),
            "loss_weights": dataclasses.asdict(net.loss_weights), "mask_softness_mm": self.mask_softness_mm,
            "bank": {"dir": self.data.bank_dir, "init": self.data.bank.init, "count": len(self.data.bank)},
            "grid": self.data.grid.to_dict(), "z_extent": self.data.z_extent, "targets": self.data.kind,
            "reference_affine": self.data.reference_affine(),
            "split": {k: self.data.ids(k) for k in ("train", "val", "test")}})

    def batch_rows(self, iteration: int) -> torch.Tensor:
        """Positions (within the train subjects) of this rank's subjects at ``iteration``."""
        n = len(self.data.split["train"])
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed_of(self.seed, iteration)))
        k = max(min(self.subjects_per_batch, n), self.world)  # every rank gets a subject
        chosen = perm.repeat(math.ceil(k / n))[:k]
        return chosen[self.rank:: self.world]

    def _process(self, engine: Engine, _batch) -> list[dict]:
        """One ``train_step``; output is a one-item list so ``from_engine(["loss"], first=True)`` finds the loss."""
        it = engine.state.iteration
        rows = self.batch_rows(it)
        self.sampler.generator = torch.Generator().manual_seed(seed_of(self.seed, it, self.rank, 1))
        coords, targets, weights = self.sampler.sample(rows.to(self.data.device), with_weights=True)
        batch = {"params": [p[rows] for p in self.data.params["train"]], "coords": coords, "targets": targets}
        if self.importance_weights:
            batch["weights"] = weights
        augment = None
        if self.permute_prob > 0 or self.noise > 0:
            g = torch.Generator().manual_seed(seed_of(self.seed, it, self.rank, 2))
            augment = functools.partial(augment_params, spec=self.data.bank.spec, permute_prob=self.permute_prob,
                                        noise=self.noise, generator=g)
        return [train_step(self.model, self.optimizer, batch, augment, self.grad_clip, self.bf16)]


class SubjectMean(Metric):
    """Mean over subjects of ``output[key]`` (per-subject values), NaN entries (undefined Dice) skipped."""

    def __init__(self, key: str, device="cpu"):
        self.key = key
        super().__init__(output_transform=lambda out: (out[key],), device=device)  # a tuple: ignite's mapping rules skipped

    def reset(self) -> None:
        self._values: list[torch.Tensor] = []

    def update(self, output) -> None:
        v = torch.as_tensor(output[0]).detach().double().flatten().cpu()
        self._values.append(v[torch.isfinite(v)])

    def compute(self) -> float:
        v = torch.cat(self._values) if self._values else torch.zeros(0)
        return float(v.mean()) if v.numel() else float("nan")


class SubjectMedian(SubjectMean):
    """Median over subjects of ``output[key]``, NaN entries skipped."""

    def compute(self) -> float:
        v = torch.cat(self._values) if self._values else torch.zeros(0)
        return float(v.median()) if v.numel() else float("nan")


class Inr2VecValidator(Evaluator):
    """Reconstruction of the val subjects on the full canonical grid; one iteration per ``batch`` subjects.

    ``state.metrics``: ``val_psnr`` (key metric), ``val_dice_myo``, ``val_dice_scar`` (over val subjects
    with scar in the target or the reconstruction, ``lgesynth.dice``): means over subjects, fp32.
    """

    def __init__(self, data: Inr2VecData, model: Inr2VecModel, device: str | torch.device = "cpu", batch: int = 4,
                 val_handlers=None, chunk: int = 32768):
        n = len(data.split["val"])
        chunks = [list(range(s, min(s + batch, n))) for s in range(0, n, batch)] or [[]]
        super().__init__(device=device, val_data_loader=chunks, epoch_length=len(chunks), decollate=False,
                         key_val_metric={"val_psnr": SubjectMean("psnr")},
                         additional_metrics={"val_dice_myo": SubjectMean("dice_myo"), "val_dice_scar": SubjectMean("dice_scar")},
                         val_handlers=val_handlers)
        self.data, self.model, self.chunk = data, model, chunk

    def _iteration(self, engine, rows: list[int]) -> dict:
        if not rows:
            return {"psnr": torch.zeros(0), "dice_myo": torch.zeros(0), "dice_scar": torch.zeros(0)}
        idx = torch.as_tensor(rows)
        params = [p[idx] for p in self.data.params["val"]]
        return evaluate(self.model, params, self.data.coords, self.data.targets["val"][idx], self.chunk)
