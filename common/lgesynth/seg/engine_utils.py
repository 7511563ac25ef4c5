"""Small pieces the scar_seg configs wire into MONAI's engines where MONAI has no ready one.

- :class:`DeepSupervisionHeads`: DynUNet stacks its deep-supervision outputs in training,
  ``(batch, 1 + heads, classes, *spatial)``; MONAI's ``DeepSupervisionLoss`` wants them as a list.
- :class:`GlobalBatchDiceCELoss`: MONAI's ``DiceCELoss`` with batch Dice, the Dice sums taken over the
  batches of all torchrun ranks (as nnU-Net's DDP trainer does), so DDP trains on the loss of the
  global batch rather than on the mean of per-rank batch Dice losses.
- :class:`StructureMasksd` and :func:`structure_output`: Dice on our structures (the README's data
  contract), myocardium = label in {1, 2} and scar = label 2, rather than on the classes 1 and 2.
- :func:`plan_inferer`: sliding-window inference with the plan's patch: MONAI's
  ``SlidingWindowInferer`` for 3D plans, ``SliceInferer`` (the same windows, slice by slice along the
  last axis) for 2D plans; with ``mirror_axes``, wrapped in :class:`MirroredInferer`; a plan with the
  cavity class folds its fourth output into background (:mod:`lgesynth.seg.cavity`).
- :class:`MirroredInferer`: nnU-Net's test-time mirroring, the mean of the logits over every
  combination of flips along the axes that training mirrored.
- :class:`LogitMeanEnsemble` and :func:`ensemble_network`: nnU-Net's ensemble of several trainings
  (folds, seeds) of one plan, the mean of the members' logits.
- ``ResumeCheckpointLoader``, ``TrainerCheckpointSaver``: moved to :mod:`lgesynth.engines.checkpoints` (every
  bundle resumes with them); imported here too, for the train.yaml of bundles packed before the move.
- :class:`TrainLog`: per epoch, loss, learning rate, wall time and seconds per iteration (validation
  excluded) and the validator's metrics, to ``train_log.json``, rewritten atomically each epoch.
- :class:`ModelExporter`: at the end of training, the network as MONAI's model zoo ships it,
  ``models/model.pt`` (weights only), with the ``plan.json`` that builds it.
"""

from __future__ import annotations

import itertools
import json
import pickle
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from monai.inferers import Inferer
from monai.transforms import MapTransform

from lgesynth.data.labels import MYOCARDIUM, SCAR
from lgesynth.engines import checkpoints
from lgesynth.errors import DataError
from lgesynth.io import atomic_path, write_json
from lgesynth.seg.cavity import CavityFoldingInferer, has_cavity_class
from lgesynth.seg.data import slice_last_plan
from lgesynth.seg.network import build_dynunet
from lgesynth.seg.plan import load_plan, write_plan

STRUCTURES = ("myo", "scar")


class DeepSupervisionHeads(torch.nn.Module):
    """Unstack DynUNet's training output before a ``DeepSupervisionLoss``.

    ``pred``: (batch, 1 + heads, classes, *spatial), every head already upsampled to full size by
    DynUNet, or (batch, classes, *spatial) (eval mode); ``target``: (batch, 1, *spatial).
    """

    def __init__(self, loss: torch.nn.Module):
        super().__init__()
        self.loss = loss

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.dim() == target.dim() + 1:
            pred = list(torch.unbind(pred, dim=1))
        return self.loss(pred, target)


class SumOverRanks(torch.autograd.Function):
    """``all_reduce(SUM)`` with autograd: every rank's loss uses the sum, so the gradient of a rank's
    summand is the sum of all ranks' gradients of the sum (nnU-Net's ``AllGatherGrad``, for a sum)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        torch.distributed.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        torch.distributed.all_reduce(grad)
        return grad


class GlobalBatchDiceCELoss(torch.nn.Module):
    """``DiceCELoss(to_onehot_y=True, softmax=True, batch=True)`` over the global batch of all ranks.

    With softmax p and one-hot y of the classes scored (background dropped unless
    ``include_background``), summed over batch and space:

        Dice_c = 1 - (2 sum p_c y_c + smooth_nr) / (sum p_c + sum y_c + smooth_dr)
        L = mean_c Dice_c + CE(logits, y)    (CE: mean over this rank's voxels)                 (1)

    Under torch.distributed the three sums are all-reduced (``SumOverRanks``: its backward all-reduces the
    gradient too), so every rank computes the Dice of the global batch.
    Gradients then match one process with the whole batch: the backward of the sum adds the W ranks'
    identical Dice gradients (factor W), DDP's gradient mean divides by W again, and DDP's mean of the
    per-rank CE means is the global CE mean (equal batches). Without torch.distributed: MONAI's
    ``DiceCELoss`` with these settings (``tests/test_scar_seg_bundle.py`` checks both).

    Args: ``logits: (batch, classes, *spatial)``, ``target: (batch, 1, *spatial)`` class indices.
    """

    def __init__(self, include_background: bool = False, smooth_nr: float = 1e-5, smooth_dr: float = 1e-5):
        super().__init__()
        self.include_background, self.smooth_nr, self.smooth_dr = include_background, smooth_nr, smooth_dr

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist
        import torch.nn.functional as F

        labels = target[:, 0].long()
        p = torch.softmax(logits, 1)
        y = F.one_hot(labels, logits.shape[1]).movedim(-1, 1).to(p)
        if not self.include_background:
            p, y = p[:, 1:], y[:, 1:]
        dims = [0, *range(2, p.dim())]
        sums = torch.stack([(p * y).sum(dims), p.sum(dims), y.sum(dims)])  # (3, classes): tp, sum p, sum y
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            sums = SumOverRanks.apply(sums)
        tp, pred, ref = sums
        dice = 1 - (2 * tp + self.smooth_nr) / (pred + ref + self.smooth_dr)
        return dice.mean() + F.cross_entropy(logits, labels)


class StructureMasksd(MapTransform):
    """Label map (1, *spatial) or one-hot (3, *spatial) -> (2, *spatial) float: [myocardium, scar]."""

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            x = d[key]
            label = x.argmax(0, keepdim=True) if x.shape[0] > 1 else x
            d[key] = torch.cat([(label == MYOCARDIUM) | (label == SCAR), label == SCAR], dim=0).float()
        return d


def structure_output(index: int):
    """Ignite ``output_transform`` that keeps channel ``index`` (0 myocardium, 1 scar) of the
    decollated ``pred`` and ``label`` (after :class:`StructureMasksd`), for a per-structure Dice."""

    def select(output):
        return [o["pred"][index : index + 1] for o in output], [o["label"][index : index + 1] for o in output]

    return select


def mean_of(outputs) -> torch.Tensor:
    """Mean of tensors made one at a time (a running sum: only the total and the newest are held), for
    the passes of :class:`MirroredInferer` and the members of :class:`LogitMeanEnsemble`."""
    total, count = None, 0
    for y in outputs:
        total = y if total is None else total + y
        count += 1
    return total / count


class MirroredInferer(Inferer):
    """nnU-Net's test-time mirroring around another inferer.

    The network runs once per subset of ``spatial_axes`` (2^len of them), on the input flipped along
    that subset; each output is flipped back and the logits are averaged (as nnU-Net v2 does).
    Inputs and outputs are ``(batch, channels, *spatial)``; ``spatial_axes`` count from the first
    spatial axis. Mirror only along axes that training augmented with flips.
    """

    def __init__(self, inferer: Inferer, spatial_axes=(0, 1)):
        super().__init__()
        self.inferer = inferer
        self.spatial_axes = tuple(int(a) for a in spatial_axes)
        # tensor dims (batch and channel first) of every flip combination, the empty one included
        self.flip_dims = [[a + 2 for a in axes] for k in range(len(self.spatial_axes) + 1)
                          for axes in itertools.combinations(self.spatial_axes, k)]

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs) -> torch.Tensor:
        return mean_of(self._flipped_back(inputs, dims, network, *args, **kwargs) for dims in self.flip_dims)

    def _flipped_back(self, inputs: torch.Tensor, dims: list[int], network, *args, **kwargs) -> torch.Tensor:
        x = torch.flip(inputs, dims) if dims else inputs
        y = self.inferer(x, network, *args, **kwargs)
        return torch.flip(y, dims) if dims else y


def plan_inferer(plan: dict, overlap: float = 0.5, mode: str = "gaussian", sw_batch_size: int = 4,
                 mirror_axes=()):
    """Sliding-window inferer over the plan's patch (``plan`` in the slice-last frame).

    ``mirror_axes``: spatial axes (slice-last frame; ``(0, 1)`` = in plane, the flips train.yaml
    augments with) to average mirrored predictions over (:class:`MirroredInferer`, 2^n passes);
    empty for none. A plan trained with the LV cavity class (:mod:`lgesynth.seg.cavity`) gets its logits
    folded back to the three classes.
    """
    from monai.inferers import SliceInferer, SlidingWindowInferer

    roi = list(plan["patch_size"])
    if plan["network"]["spatial_dims"] == 2:
        base = SliceInferer(spatial_dim=2, roi_size=roi, sw_batch_size=sw_batch_size, overlap=overlap, mode=mode)
    else:
        base = SlidingWindowInferer(roi_size=roi, sw_batch_size=sw_batch_size, overlap=overlap, mode=mode)
    inferer = MirroredInferer(base, mirror_axes) if mirror_axes else base
    return CavityFoldingInferer(inferer) if has_cavity_class(plan) else inferer


class LogitMeanEnsemble(torch.nn.Module):
    """Several networks of one plan as one: ``(batch, in, *spatial) -> (batch, classes, *spatial)``, the
    mean of the members' logits (nnU-Net v2 averages its folds' logits; softmax and argmax come after).
    Meant for evaluation mode, where DynUNet returns the full-resolution head alone."""

    def __init__(self, members):
        super().__init__()
        self.members = torch.nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mean_of(member(x) for member in self.members)


def _same_network(a: dict, b: dict) -> bool:
    keys = ("network", "patch_size", "target_spacing_mm")
    return all(a.get(k) == b.get(k) for k in keys)


def load_weights(network: torch.nn.Module, weights: str | Path | None) -> torch.nn.Module:
    """``network`` with the state dict of ``weights`` loaded (a ``model.pt`` as ModelExporter writes it,
    or a training checkpoint with a ``"model"`` entry); ``network`` unchanged when ``weights`` is None.

    Raises:
        DataError: naming ``weights`` when it is missing, unreadable, or made for another network.
    """
    if weights in (None, ""):
        return network
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise DataError(weights, f"cannot read the weights ({exc})") from None
    try:
        network.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
    except (RuntimeError, AttributeError, TypeError) as exc:
        raise DataError(weights, f"weights do not fit the plan's network ({str(exc).splitlines()[0]})") from None
    return network


def ensemble_network(network: torch.nn.Module, plan: dict, train_dirs=(), device=None) -> torch.nn.Module:
    """``network`` alone, or with the models of ``train_dirs`` a :class:`LogitMeanEnsemble`.

    ``network``: built from ``plan`` (its weights are loaded by the config's ``CheckpointLoader``);
    ``train_dirs``: train.yaml output_dirs (or bundle folders) of trainings of the same plan, each with
    ``models/model.pt`` and ``models/plan.json``.

    Raises:
        DataError: naming the file when a member's plan or weights are missing, unreadable, or belong
        to another network (the inferer has one patch and spacing for all members).
    """
    members = [network]
    for folder in train_dirs or ():
        models = Path(folder) / "models"
        member_plan = slice_last_plan(load_plan(models / "plan.json"))
        if not _same_network(member_plan, plan):
            raise DataError(models / "plan.json", "describes another network, patch or spacing than the ensemble's "
                            "first model; an ensemble needs trainings of one plan (train.yaml --plan_path)")
        member = load_weights(build_dynunet(member_plan), models / "model.pt")
        members.append(member.to(device) if device is not None else member)
    return network if len(members) == 1 else LogitMeanEnsemble(members)


# the train.yaml of bundles packed before the move name them here
ResumeCheckpointLoader, TrainerCheckpointSaver = checkpoints.ResumeCheckpointLoader, checkpoints.TrainerCheckpointSaver


def every(n: int):
    """Ignite event filter: true every ``n`` iterations (for StatsHandler's ``iteration_log``)."""
    n = max(1, int(n))
    return lambda engine, event: event % n == 0


class TrainLog:
    """Per-epoch record of a training run in ``path`` (JSON list, appended across resumed runs).

    Each entry: ``epoch``, ``iteration`` (global, continues after a resume), ``loss`` (mean over the
    epoch), ``lr``, ``seconds`` (the epoch's training iterations), ``seconds_per_iteration`` and the
    validator's metrics when it ran this epoch, and ``last_epoch`` (the run's last epoch as planned now: a time
    budget, :mod:`lgesynth.seg.time_budget`, re-plans it). Attach after the ValidationHandler so they are ready.
    """

    def __init__(self, path: str | Path, validator=None, optimizer=None):
        self.path, self.validator, self.optimizer = Path(path), validator, optimizer
        self._losses: list[float] = []
        self._start = self._last = 0.0

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, self.epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def epoch_started(self, engine) -> None:
        self._losses, self._start = [], time.perf_counter()
        self._last = self._start

    def iteration_completed(self, engine) -> None:
        output = engine.state.output
        items = output if isinstance(output, list) else [output]
        self._losses.append(float(np.mean([float(o["loss"]) for o in items])))
        self._last = time.perf_counter()

    def epoch_completed(self, engine) -> None:
        entries = json.loads(self.path.read_text()) if self.path.exists() else []
        seconds = self._last - self._start
        entry = {"epoch": engine.state.epoch, "iteration": engine.state.iteration,
                 "loss": float(np.mean(self._losses)) if self._losses else None,
                 "lr": self.optimizer.param_groups[0]["lr"] if self.optimizer is not None else None,
                 "seconds": round(seconds, 3),
                 "seconds_per_iteration": round(seconds / len(self._losses), 4) if self._losses else None,
                 "last_epoch": engine.state.max_epochs}
        state = getattr(self.validator, "state", None)
        if state is not None and state.metrics and state.epoch == engine.state.epoch:  # validated this epoch
            entry.update({k: float(v) for k, v in state.metrics.items() if isinstance(v, (int, float))})
        entries.append(entry)
        write_json(self.path, entries)


class ModelExporter:
    """At the end of training (``Events.COMPLETED``; rank 0 only under torchrun), the trained network as the
    bundle ships it, in ``models_dir``:

    - ``model.pt``: the network's weights alone (a plain state dict on the CPU), the file MONAI's
      ``monai.bundle.load`` and ``ckpt_export`` read (``model_final.pt`` also holds the optimiser,
      LR schedule and trainer state, for resuming);
    - ``plan.json``: the plan the network was built from; without it the weights have no network.

    ``network`` is the bare network (``@network_def``), also under DDP, so the keys carry no ``module.``.
    ``extra_files`` ``{name: source path}`` are copied in too (a cascade's localizer,
    :func:`lgesynth.seg.cascade.localizer_files`).
    Written only when a run completes: a run that raised keeps no ``model.pt`` from before it.
    """

    def __init__(self, models_dir: str | Path, network: torch.nn.Module, plan: dict, extra_files: dict | None = None):
        self.models_dir, self.network, self.plan = Path(models_dir), network, plan
        self.extra_files = dict(extra_files or {})

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine) -> None:
        weights = {k: v.detach().cpu() for k, v in self.network.state_dict().items()}
        with atomic_path(self.models_dir / "model.pt") as tmp:
            torch.save(weights, tmp)
        write_plan(self.models_dir / "plan.json", self.plan)
        for name, source in self.extra_files.items():
            with atomic_path(self.models_dir / name) as tmp:
                shutil.copyfile(source, tmp)
