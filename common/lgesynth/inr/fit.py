"""Fitting many SIRENs at once: batched steps, per-subject early stopping, slots refilled from a queue.

``fit(targets, coords, init, spec, config, callback)`` fits S subjects with ``config.batch_size``
slots. Every step trains all occupied slots with one batched forward/backward (``Workspace``) and one
Adam update on the stacked weights. Every ``check_every`` steps, subjects whose training-batch metrics
are near the targets are evaluated on the full grid (fp32; at most once per ``recheck_after`` steps); a subject that meets all targets (PSNR, Dice
myocardium, Dice scar if it has scar) is finished: its weights are copied out and its slot is given
to the next queued subject (fresh Adam state, same init). So finished subjects stop changing, and
the batch stays full until the queue is empty; a subject that reaches ``max_steps`` is finished there,
with ``reached`` telling whether its full-grid metrics meet the targets at that point. One that does not
is not silent: ``fit`` logs a warning (logger ``lgesynth.inr_fit``, :func:`shortfall`) naming the subject
and what it reached against what was asked. With S <= batch_size this is "fit one batch"; an engine can
call it per batch and use the per-step ``callback`` (``StepInfo``: losses, finished subjects and their final weights) for
logging and for writing finished subjects out at once.

A subject's fit depends only on its own data, the init, the config and its ``subject_id``, not on which
subjects share its batch, chunk or rank: it draws its points from its own generator
(``seed_of(config.seed, subject_id)``), its Adam state and step count are its own, and its stopping
checks run on its own step count. What batching can change is float summation order inside the
batched GEMMs (bitwise equal on CPU with one thread; ~1e-7 relative elsewhere), so the INR fit under
torchrun gives the single-process bank within that noise (``tests/test_inr_fit_bundle.py``).

``BatchFitter`` is the step-level object (used by ``fit`` and by the Reptile meta-learner).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from lgesynth.inr.batched import Workspace
from lgesynth.inr.loss import LossWeights, fit_metrics, joint_loss_grad, psnr
from lgesynth.inr.render import CHUNK, forward_chunked
from lgesynth.inr.sampling import PointSampler, seed_of
from lgesynth.inr.siren import SirenSpec

logger = logging.getLogger("lgesynth.inr_fit")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def resolve_dtype(name: str, device: str | torch.device = "cpu") -> torch.dtype:
    """``"auto"``: bf16 on CPUs with AVX512-BF16/AMX (oneDNN bf16 GEMMs ~4x fp32 measured on the dev box) and
    on CUDA GPUs that support it; fp32 elsewhere (emulated bf16 would be slower)."""
    if name != "auto":
        return DTYPES[name]
    if torch.device(device).type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    try:
        flags = next((ln for ln in open("/proc/cpuinfo") if ln.startswith("flags")), "")
    except OSError:
        flags = ""
    return torch.bfloat16 if ("avx512_bf16" in flags or "amx_bf16" in flags) else torch.float32


@dataclass
class FitConfig:
    """Settings of a fit; defaults are the measured default method (benchmarks/inr_fit.py)."""

    max_steps: int = 1000
    batch_size: int = 8
    points: int | None = 8192  # per subject per step; None = full grid. 16384 took 1.35x fewer steps at 2x the cost
    focus: str = "boundary"  # where focus_fraction of the points come from: "boundary" (mask edges) or "myocardium"
    focus_fraction: float = 0.25  # (sampling.py); the boundary took 305 subject-steps to target against 470 (README)
    lr: float = 3e-4  # 1e-4 (paper) needs ~1.8x the steps to target; 1e-3 is noisier and not faster
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    loss_myo: float = 0.1
    loss_scar: float = 0.1
    target_psnr: float = 30.0
    target_dice_myo: float = 0.95
    target_dice_scar: float = 0.90
    early_stop: bool = True
    check_every: int = 5  # training-batch metrics (free: the step's own forward) gate a stop every N steps
    # a stop check: the training-batch metrics within these margins of the targets, then the targets met on a
    # fixed random ``precheck_fraction`` of the grid (seeded; 1.0: off), then on the full grid (fp32, ~6 training
    # steps' cost). The pre-check skips most full-grid evaluations that would fail (docs/experiments.md, inr_fit:
    # the quarter-grid pre-check). A subject that fails is not checked again for ``recheck_after`` steps.
    gate_db: float = 0.5
    gate_dice: float = 0.02
    precheck_fraction: float = 0.25
    recheck_after: int = 5
    compute_dtype: str = "auto"  # "float32", "bfloat16", or "auto": bf16 where the hardware has fast bf16 GEMMs
    eval_chunk: int = CHUNK  # points per full-grid evaluation chunk (render.CHUNK: small chunks stay in cache)
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class StepInfo:
    """What ``fit`` reports to the callback after every step."""

    step: int  # global step counter of the fit
    subjects: list[int]  # subject indices in the active slots
    subject_steps: list[int]  # steps done by each of them
    batch_psnr: list[float]  # training-batch PSNR of each
    finished: list[int] = field(default_factory=list)  # subjects finished at this step
    #: final params ``[w0, b0, ...]`` of the subjects finished at this step (views of the result: they
    #: no longer change; a caller may write them out at once, e.g. to checkpoint a partial bank)
    finished_params: dict[int, list[torch.Tensor]] = field(default_factory=dict)


@dataclass
class FitResult:
    """``params``: stacked ``[w0 (S, in, out), b0 (S, out), ...]``; per-subject lists in input order."""

    params: list[torch.Tensor]
    steps: list[int]
    psnr: list[float]
    dice_myo: list[float]
    dice_scar: list[float]  # NaN for a subject without scar whose fit shows none (lgesynth.dice)
    reached: list[bool]  # the full-grid metrics meet the targets (``_meets``); False: stopped at max_steps short of them
    seconds: float
    total_subject_steps: int
    has_scar: list[bool] = field(default_factory=list)  # the subject's label has scar


class BatchFitter:
    """Adam on a batch of SIRENs held in ``slots`` rows; rows ``[0, n)`` are active, in order.

    Args:
        spec: architecture; targets ``(S, grid, 3)`` and coords ``(grid, 3)`` (see ``PointSampler``).
        subject_ids: ``(S,)`` integers naming the subjects (default ``0..S-1``); subject s draws its
            points from a generator seeded with ``seed_of(config.seed, subject_ids[s])``.
    """

    def __init__(self, spec: SirenSpec, targets: torch.Tensor, coords: torch.Tensor, config: FitConfig, slots: int | None = None,
                 subject_ids: list[int] | None = None):
        self.spec, self.cfg = spec, config
        self.targets, self.coords = targets, coords
        self.slots = slots or config.batch_size
        ids = range(targets.shape[0]) if subject_ids is None else subject_ids
        assert len(ids) == targets.shape[0], (len(ids), targets.shape[0])
        self.generators = [torch.Generator().manual_seed(seed_of(config.seed, i)) for i in ids]
        self.sampler = PointSampler(coords, targets, config.points, config.focus_fraction, focus=config.focus)
        dev = targets.device
        self.ws = Workspace(spec, self.slots, self.sampler.points, resolve_dtype(config.compute_dtype, dev), dev)
        # parameters, gradients and Adam moments live in flat (slots, num_params) buffers, with per-layer
        # views; so Adam is a handful of large elementwise ops instead of ~100 small ones per step
        numel = spec.num_params
        self.flat_p, self.flat_g, self.flat_m, self.flat_v = (torch.zeros(self.slots, numel, device=dev) for _ in range(4))
        self.params, self.grads = self._views(self.flat_p), self._views(self.flat_g)
        self.m, self.v = self._views(self.flat_m), self._views(self.flat_v)
        self.t = torch.zeros(self.slots, device=dev)  # Adam steps per slot
        self.rows = torch.zeros(0, dtype=torch.long, device=dev)  # subject index of each active slot
        self.dout = torch.empty(self.slots, self.sampler.points, spec.out_features, device=dev)
        self.loss_w = LossWeights(config.loss_myo, config.loss_scar)
        grid = targets.shape[1]
        keep = max(1, int(round(config.precheck_fraction * grid)))
        order = torch.randperm(grid, generator=torch.Generator().manual_seed(config.seed))
        self.precheck_idx = order[:keep].sort().values.to(dev)  # the pre-check's grid points

    def _views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """``[w0 (slots, in, out), b0 (slots, out), ...]`` views of a flat ``(slots, num_params)`` buffer."""
        out, off = [], 0
        for i, o in self.spec.layer_dims:
            out.append(flat[:, off: off + i * o].view(self.slots, i, o))
            off += i * o
            out.append(flat[:, off: off + o])
            off += o
        return out

    @property
    def n(self) -> int:
        return len(self.rows)

    def view(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        return [t[: self.n] for t in tensors]

    @torch.no_grad()
    def add(self, subjects: list[int], init: list[torch.Tensor]) -> None:
        """Put ``subjects`` into free slots, starting from one subject's ``init`` params (fresh Adam)."""
        k0, k1 = self.n, self.n + len(subjects)
        assert k1 <= self.slots
        for p, p0 in zip(self.params, init):
            p[k0:k1].copy_(p0.unsqueeze(0).expand(k1 - k0, *p0.shape))
        self.flat_m[k0:k1].zero_()
        self.flat_v[k0:k1].zero_()
        self.t[k0:k1] = 0
        self.rows = torch.cat([self.rows, torch.as_tensor(subjects, dtype=torch.long, device=self.rows.device)])

    @torch.no_grad()
    def remove(self, positions: list[int]) -> None:
        """Drop active slots at ``positions`` and compact the rest to the front (order kept)."""
        keep = torch.tensor([i for i in range(self.n) if i not in set(positions)], dtype=torch.long, device=self.rows.device)
        for t in (self.flat_p, self.flat_m, self.flat_v, self.t):
            t[: len(keep)] = t[keep]
        self.rows = self.rows[keep]

    @torch.no_grad()
    def step(self, metrics: bool = False):
        """One Adam step on all active slots; returns their training-batch MSE ``(n,)``, and with
        ``metrics`` also ``fit_metrics`` on the training batch (a cheap estimate of the full-grid ones)."""
        n = self.n
        coords, target = self.sampler.sample(self.rows, [self.generators[s] for s in self.rows.tolist()])
        out = self.ws.forward(self.view(self.params), coords)
        dout = self.dout[:n]
        mse = joint_loss_grad(out, target, dout, self.loss_w)
        batch_metrics = fit_metrics(out, target) if metrics else None
        self.ws.backward(dout, self.view(self.grads))
        self._adam()
        return (mse, batch_metrics) if metrics else mse

    def _adam(self) -> None:
        """Adam (Kingma & Ba 2015) on the flat buffers, bias corrections per slot (slots start at different times)."""
        n, (b1, b2), lr, eps = self.n, self.cfg.betas, self.cfg.lr, self.cfg.eps
        p, g, m, v = self.flat_p[:n], self.flat_g[:n], self.flat_m[:n], self.flat_v[:n]
        t = self.t[:n]
        t += 1
        m.lerp_(g, 1 - b1)  # m = b1 m + (1 - b1) g
        v.mul_(b2).addcmul_(g, g, value=1 - b2)  # v = b2 v + (1 - b2) g^2
        step_size = (lr / (1 - b1 ** t)).unsqueeze(1)  # (n, 1)
        inv_bc2 = (1.0 / (1 - b2 ** t).sqrt()).unsqueeze(1)
        denom = self.flat_g[:n]  # the gradient is consumed: reuse its buffer for the denominator
        torch.sqrt(v, out=denom).mul_(inv_bc2).add_(eps).div_(step_size)
        p.addcdiv_(m, denom, value=-1.0)  # p -= lr_t * m / (sqrt(v_hat) + eps)

    @torch.no_grad()
    def evaluate(self, positions: list[int] | None = None, precheck: bool = False) -> dict[str, torch.Tensor]:
        """Full-grid fp32 metrics of active slots (all, or ``positions``); with ``precheck``, on the
        pre-check's fixed subset of the grid only."""
        dev = self.rows.device
        pos = torch.arange(self.n, device=dev) if positions is None else torch.as_tensor(positions, dtype=torch.long, device=dev)
        params = [p[pos] for p in self.view(self.params)]
        coords = self.coords[self.rows[pos]] if self.coords.dim() == 3 else self.coords
        targets = self.targets[self.rows[pos]]
        if precheck:
            coords, targets = coords[..., self.precheck_idx, :], targets[:, self.precheck_idx]
        pred = forward_chunked(params, coords, self.spec, self.cfg.eval_chunk)
        return fit_metrics(pred, targets)


def _meets(cfg: FitConfig, m: dict[str, torch.Tensor], i: int, db: float = 0.0, dice: float = 0.0) -> bool:
    """Subject ``i`` of metrics ``m`` (``fit_metrics``) is at its targets, or within ``db`` / ``dice`` of them;
    the scar target only holds for a subject with scar (``m["has_scar"]``)."""
    return (float(m["psnr"][i]) >= cfg.target_psnr - db and float(m["dice_myo"][i]) >= cfg.target_dice_myo - dice
            and (not bool(m["has_scar"][i]) or float(m["dice_scar"][i]) >= cfg.target_dice_scar - dice))


def shortfall(cfg: FitConfig, steps: int, psnr_db: float, dice_myo: float, dice_scar: float, has_scar: bool) -> str:
    """What a subject reached against the targets of ``cfg``, for the warning of a fit that stopped short, e.g.
    ``stopped at max_steps 1000 at 29.3 dB (target 30.0), Dice myo 0.998 (0.95), scar 0.910 (0.80); short of PSNR``.
    The scar target counts only for a subject with scar (as ``_meets``)."""
    short = [name for name, value, target, applies in (("PSNR", psnr_db, cfg.target_psnr, True),
                                                      ("Dice myo", dice_myo, cfg.target_dice_myo, True),
                                                      ("Dice scar", dice_scar, cfg.target_dice_scar, has_scar))
             if applies and not value >= target]  # NaN counts as short
    scar = f"scar {dice_scar:.3f} ({cfg.target_dice_scar:.2f})" if has_scar else "no scar (no scar target)"
    return (f"stopped at max_steps {steps} at {psnr_db:.1f} dB (target {cfg.target_psnr:.1f}), "
            f"Dice myo {dice_myo:.3f} ({cfg.target_dice_myo:.2f}), {scar}; short of {', '.join(short) or 'nothing'}")


def fit(targets: torch.Tensor, coords: torch.Tensor, init: list[torch.Tensor], spec: SirenSpec = SirenSpec(),
        config: FitConfig = FitConfig(), callback: Callable[[StepInfo], None] | None = None,
        subject_ids: list[int] | None = None, names: list[str] | None = None) -> FitResult:
    """Fit one SIREN per subject, all from the same ``init``.

    Args:
        targets: ``(subjects, grid_points, 3)`` fp32: intensity in [-1, 1], myocardium {0, 1}, scar {0, 1},
            flattened in the same order as ``coords``.
        coords: ``(grid_points, 3)`` canonical coordinates, or ``(subjects, grid_points, 3)`` per subject.
        init: one subject's initial params ``[w0, b0, ...]`` (``siren.init_params`` or a meta-learned init).
        callback: called after every step with a ``StepInfo``.
        subject_ids: ``(subjects,)`` integers that seed each subject's point draws (``BatchFitter``), e.g.
            the subjects' positions in the datalist; default ``0..subjects-1``.
        names: ``(subjects,)`` names (e.g. datalist ids) for the warning logged when a subject stops at
            ``max_steps`` short of a target (default: its ``subject_ids`` entry).
    Returns:
        ``FitResult`` with stacked fp32 params in subject order and per-subject steps and metrics.
    """
    cfg = config
    t0 = time.perf_counter()
    S = targets.shape[0]
    fitter = BatchFitter(spec, targets, coords, cfg, slots=min(cfg.batch_size, S), subject_ids=subject_ids)
    queue = list(range(S))
    init = [p.to(targets.device) for p in init]
    out = [torch.empty(S, *p.shape, device=targets.device) for p in init]
    steps, reached = [0] * S, [False] * S
    metrics = {k: [float("nan")] * S for k in ("psnr", "dice_myo", "dice_scar", "has_scar")}
    fitter.add(queue[: fitter.slots], init)
    queue = queue[fitter.slots:]
    step, total = 0, 0
    not_before = [0] * S  # per subject: the step count before which no full-grid evaluation is repeated

    def finish(positions: list[int], m: dict[str, torch.Tensor], ok: bool) -> list[int]:
        done = []
        for j, pos in enumerate(positions):
            s = int(fitter.rows[pos])
            for o, p in zip(out, fitter.params):
                o[s].copy_(p[pos])
            steps[s], reached[s] = int(fitter.t[pos]), ok
            for k in metrics:
                metrics[k][s] = float(m[k][j])
            done.append(s)
        fitter.remove(positions)
        return done

    def passing(positions: list[int], m: dict[str, torch.Tensor]) -> list[int]:
        """Indices into ``positions`` of the slots whose metrics ``m`` meet the targets; the others wait
        ``recheck_after`` steps before their next check."""
        ok = [j for j in range(len(positions)) if _meets(cfg, m, j)]
        for j in set(range(len(positions))) - set(ok):
            not_before[int(fitter.rows[positions[j]])] = int(fitter.t[positions[j]]) + cfg.recheck_after
        return ok

    while fitter.n:
        t_next = fitter.t[: fitter.n] + 1
        check = bool(((t_next % cfg.check_every == 0) | (t_next >= cfg.max_steps)).any())
        mse, batch_m = fitter.step(metrics=True) if check else (fitter.step(), None)
        step += 1
        info = StepInfo(step, fitter.rows.tolist(), [int(x) for x in fitter.t[: fitter.n]], psnr(mse).tolist())
        total += fitter.n
        finished: list[int] = []
        t = fitter.t[: fitter.n]
        due = (t % cfg.check_every == 0) | (t >= cfg.max_steps)
        if check:
            capped = [i for i in range(fitter.n) if t[i] >= cfg.max_steps]
            gated = [i for i in range(fitter.n) if due[i] and cfg.early_stop and i not in capped
                     and int(t[i]) >= not_before[int(fitter.rows[i])] and _meets(cfg, batch_m, i, cfg.gate_db, cfg.gate_dice)]
            if gated and cfg.precheck_fraction < 1:
                gated = [gated[j] for j in passing(gated, fitter.evaluate(gated, precheck=True))]
            if gated:
                m = fitter.evaluate(gated)
                ok = passing(gated, m)
                if ok:
                    finished += finish([gated[j] for j in ok], {k: v[ok] for k, v in m.items()}, True)
            capped = [i for i in range(fitter.n) if fitter.t[i] >= cfg.max_steps]
            if capped:
                m = fitter.evaluate(capped)
                finished += finish(capped, m, False)
                for s in finished[-len(capped):]:
                    reached[s] = _meets(cfg, {k: torch.tensor([metrics[k][s]]) for k in metrics}, 0)
                    if not reached[s]:
                        name = names[s] if names is not None else (subject_ids[s] if subject_ids is not None else s)
                        logger.warning("inr_fit: subject %s %s", name, shortfall(
                            cfg, steps[s], metrics["psnr"][s], metrics["dice_myo"][s], metrics["dice_scar"][s],
                            bool(metrics["has_scar"][s])))
            if finished and queue:
                take = queue[: fitter.slots - fitter.n]
                queue = queue[len(take):]
                fitter.add(take, init)
        if callback is not None:
            info.finished = finished
            info.finished_params = {s: [o[s] for o in out] for s in finished}
            callback(info)
    return FitResult(out, steps, metrics["psnr"], metrics["dice_myo"], metrics["dice_scar"], reached,
                     time.perf_counter() - t0, total, [bool(h) for h in metrics["has_scar"]])
