"""InrFitTrainer: the ignite engine of the inr_fit bundle (``train#trainer``).

One iteration = one chunk of subjects fitted together (``lgesynth.inr.fit``: batched SIRENs,
per-subject early stopping, slots refilled from the chunk's queue); one epoch = one iteration, so
MONAI's MLFlowHandler (``--tracking mlflow``) logs the chunk's PSNR / Dice as metrics per chunk.

Resume: the bank itself is the checkpoint. After every chunk the bank in ``output_dir`` is
rewritten atomically with the new subjects merged in; a restarted run loads it, checks that it
was made with the same architecture, init and fit settings, and fits only the missing subjects.
The shared init (plain SIREN from ``seed`` or meta-learned by Reptile on *training* subjects only)
is made once and stored beside the bank as ``inr_init.safetensors``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events

from lgesynth.data.canonical import CanonicalGrid
from lgesynth.data.cohort import CanonicalCohort, load_canonical_cohort
from lgesynth.engines.base import BundleEngine
from lgesynth.errors import DataError
from lgesynth.inr.bank import BANK_JSON, INIT_FILE, bank_from_fit, load_bank, load_init, merge_banks, save_bank, save_init, seed_init
from lgesynth.inr.fit import FitConfig, fit
from lgesynth.inr.meta_init import MetaConfig, meta_learn_init
from lgesynth.inr.siren import SirenSpec, init_params
from lgesynth.io import read_json, write_json

logger = logging.getLogger("lgesynth.inr_fit")


def settings_digest(spec: SirenSpec, grid: CanonicalGrid, fit_config: FitConfig, z_extent: float) -> str:
    """Checksum of everything that makes two fits of one subject interchangeable."""
    doc = {"spec": spec.to_dict(), "grid": grid.to_dict(), "fit": fit_config.to_dict(), "z_extent": z_extent}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def shard_of_rank() -> tuple[int, int] | None:
    """``(rank, world_size)`` under torch.distributed, else None (configs pass it as ``shard``)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return None


class InrFitTrainer(BundleEngine):
    """Fit the INR bank of a datalist.

    Args:
        datalist: MSD-style datalist; all sections are fitted (inr2vec needs test INRs to encode),
            but the meta-learned init only ever sees the ``training`` section.
        output_dir: where ``inr_bank.{safetensors,json}`` and ``inr_init.safetensors`` go.
        grid: canonical grid (dict or ``CanonicalGrid``).
        spec: SIREN architecture (dict or ``SirenSpec``).
        fit: ``FitConfig`` fields (targets, steps, batch size, points, lr ...).
        init: ``{"kind": "meta", "seed": 0, ...MetaConfig fields}``, ``{"kind": "seed", "seed": 0}``, or
            ``{"kind": "bank", "path": DIR}``: the init of the bank in DIR (copied here), so that new
            subjects (new scans, augmented copies) join that bank and the inr2vec encoder trained on it.
        chunk_subjects: subjects per iteration (and per bank checkpoint).
        sections: datalist sections to fit (default all).
        device: torch device.
        train_handlers: handlers to attach (MONAI convention; ``--tracking mlflow`` appends one).
        progress: show a tqdm bar over subjects.
    """

    def __init__(self, datalist: str, output_dir: str, grid: dict | CanonicalGrid | None = None,
                 spec: dict | SirenSpec | None = None, fit: dict | None = None, init: dict | None = None,
                 chunk_subjects: int = 16, sections=None, device: str | torch.device = "cpu",
                 train_handlers=(), progress: bool = True, shard: tuple[int, int] | None = None):
        super().__init__()
        self.datalist, self.output_dir = str(datalist), Path(output_dir)
        self.grid = grid if isinstance(grid, CanonicalGrid) else CanonicalGrid.from_dict(grid)
        self.spec = spec if isinstance(spec, SirenSpec) else SirenSpec(**dict(spec or {}))
        self.fit_config = FitConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in dict(fit or {}).items()})
        self.init_config = {"kind": "meta", "seed": 0, **dict(init or {})}
        self.chunk_subjects, self.device, self.progress = int(chunk_subjects), torch.device(device), progress
        self.shard = shard  # (rank, world): fit only subjects rank::world (multi_gpu_train.yaml)
        self.cohort: CanonicalCohort = load_canonical_cohort(self.datalist, self.grid, sections=sections, progress=progress)
        self.coords = self.cohort.coords().to(self.device)  # (X*Y*Z, 3), shared by every subject and chunk
        self.digest = settings_digest(self.spec, self.grid, self.fit_config, self.cohort.z_extent)
        self.init_record, self.init_params = None, None
        self.pending: list[list[int]] = []
        self.chunks = 1
        self.fell_short: list[str] = []  # ids of the subjects fitted in this run that stopped short of a target
        self.fitted = 0
        self._bar = None
        self.attach_handlers(train_handlers)
        self.add_event_handler(Events.COMPLETED, self._close)

    # -- set-up ---------------------------------------------------------------------------------
    def run_params(self) -> dict:
        """What MLflow records as params of the run."""
        return {"datalist": self.datalist, "subjects": len(self.cohort), "z_extent": self.cohort.z_extent,
                "grid": self.grid.to_dict(), "spec": self.spec.to_dict(), "fit": self.fit_config.to_dict(),
                "init": self.init_config, "chunk_subjects": self.chunk_subjects, "settings_digest": self.digest}

    def _shared_init(self) -> tuple[list[torch.Tensor], dict]:
        """The bank's init: re-used from ``output_dir`` when present, else made (and stored)."""
        cfg = self.init_config
        if cfg["kind"] == "seed":
            record = seed_init(cfg["seed"])
            return init_params(self.spec, record["seed"]), record
        if cfg["kind"] == "bank":
            return self._init_of_bank(Path(cfg["path"]))
        meta_cfg = MetaConfig(**{k: v for k, v in cfg.items() if k in MetaConfig.__dataclass_fields__})
        record_path = self.output_dir / "inr_init.json"
        if (self.output_dir / INIT_FILE).exists() and record_path.exists():
            record = read_json(record_path)
            if record.get("made_with") == {"meta": meta_cfg.to_dict(), "digest": self.digest}:
                return load_init(self.output_dir, record, self.spec), record
        train_idx = [i for i, e in enumerate(self.cohort.entries) if e.get("section") == "training"] or list(range(len(self.cohort)))
        logger.info("meta-learning the shared init (Reptile) on %d training subjects", len(train_idx))
        t0 = time.perf_counter()
        theta, meta_record = meta_learn_init(self.cohort.targets(train_idx).to(self.device), self.coords,
                                             init_params(self.spec, meta_cfg.seed), self.spec, self.fit_config, meta_cfg)
        record = save_init(self.output_dir, theta, self.spec, meta_record)
        record["made_with"] = {"meta": meta_cfg.to_dict(), "digest": self.digest}
        write_json(record_path, record)
        logger.info("shared init ready in %.1f s", time.perf_counter() - t0)
        return theta, record

    def _init_of_bank(self, source: Path) -> tuple[list[torch.Tensor], dict]:
        """The init another bank was fitted from (its ``inr_bank.json`` record), checked against this
        architecture and copied into ``output_dir`` so that this bank is complete on its own."""
        bank_json = source / BANK_JSON
        if not bank_json.exists():
            raise DataError(bank_json, "not found: init kind 'bank' needs the folder of an inr_fit bank")
        doc = read_json(bank_json)
        if SirenSpec.from_dict(doc["architecture"]) != self.spec:
            raise DataError(bank_json, f"architecture {doc['architecture']} differs from this fit's {self.spec.to_dict()}; "
                            "a bank's init only serves its own architecture")
        record = doc["init"]
        if record.get("kind") == "seed":
            return init_params(self.spec, int(record["seed"])), record
        params = load_init(source, record, self.spec)
        copied = save_init(self.output_dir, params, self.spec, record.get("record"))
        write_json(self.output_dir / "inr_init.json", {**copied, "copied_from": str(source)})
        return params, copied

    def _load_checked(self, folder: Path):
        bank = load_bank(folder, spec=self.spec, init=self.init_record)
        if bank.fit.get("settings_digest") != self.digest:
            raise DataError(folder / BANK_JSON, "was fitted with other settings (grid, architecture, fit config or "
                            "cohort z extent); use another output_dir or delete the bank to refit")
        return bank

    def _done_ids(self) -> set[str]:
        """Subjects already in the bank or in a rank's shard of it (an interrupted multi-rank run)."""
        folders = [self.output_dir] + sorted(self.output_dir.glob("rank*"))
        return {sid for f in folders if (f / BANK_JSON).exists() for sid in self._load_checked(f).ids}

    def prepare(self) -> None:
        """Make (or load) the shared init and queue the subjects not yet in the bank, ``chunk_subjects`` per chunk."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if self.shard is not None and self.shard[0] != 0:
            _barrier()  # rank 0 makes the shared init first; the others then load it
        self.init_params, self.init_record = self._shared_init()
        if self.shard is not None and self.shard[0] == 0:
            _barrier()
        done = self._done_ids()
        todo = [i for i, sid in enumerate(self.cohort.ids) if sid not in done]
        if self.shard is not None:
            rank, world = self.shard
            todo = todo[rank::world]
        self.pending = [todo[i: i + self.chunk_subjects] for i in range(0, len(todo), self.chunk_subjects)]
        self.chunks = max(1, len(self.pending))
        logger.info("%d subjects in the bank already, %d to fit in %d chunk(s)", len(done), len(todo), len(self.pending))
        if self.progress:
            from tqdm import tqdm

            self._bar = tqdm(total=len(todo), desc="inr_fit", unit="subject")

    def _close(self, engine: Engine) -> None:
        if self._bar is not None:
            self._bar.close()
        if self.fell_short:
            logger.warning("inr_fit: %d of %d subjects fitted in this run stopped at max_steps short of their targets "
                           "(reached_target false in inr_bank.json): %s", len(self.fell_short), self.fitted,
                           ", ".join(self.fell_short))

    # -- one chunk ------------------------------------------------------------------------------
    def _process(self, engine: Engine, _batch) -> list[dict]:
        """Fit the next chunk; output is a one-item list like MONAI's decollated outputs, so that
        ``from_engine(["loss"], first=True)`` (the tracking default) finds the loss."""
        if not self.pending:
            return [{"loss": float("nan")}]
        idx = self.pending.pop(0)
        t0 = time.perf_counter()
        targets = self.cohort.targets(idx).to(self.device)

        def on_step(info):
            if self._bar is not None and info.finished:
                self._bar.update(len(info.finished))

        cases = [self.cohort.cases[i] for i in idx]
        entries = [self.cohort.entries[i] for i in idx]
        # a subject stopped at max_steps short of a target is logged by fit (a warning naming its id)
        result = fit(targets, self.coords, self.init_params, self.spec, self.fit_config, on_step, subject_ids=idx,
                     names=[e["id"] for e in entries])
        self.fell_short += [e["id"] for e, ok in zip(entries, result.reached) if not ok]
        self.fitted += len(idx)
        part = bank_from_fit(
            self.spec, self.init_record, result, [e["id"] for e in entries],
            sources=[{"image": e["image"], "label": e["label"], "section": e["section"]} for e in entries],
            canonical=[c.meta for c in cases],
            normalisation=[{"intensity_lo": c.meta.get("intensity_lo"), "intensity_hi": c.meta.get("intensity_hi")} for c in cases],
            fit_config={"settings_digest": self.digest, "z_extent": self.cohort.z_extent, "grid": self.grid.to_dict(),
                        "config": self.fit_config.to_dict()},
        )
        self._save(part)
        seconds = time.perf_counter() - t0
        scar = [d for d in result.dice_scar if d == d]
        out = {
            "loss": float(np.mean([10 ** (-p / 10) * 4 for p in result.psnr])),  # mean intensity MSE on the full grid
            "psnr_mean": float(np.mean(result.psnr)), "psnr_min": float(np.min(result.psnr)),
            "dice_myo_mean": float(np.mean(result.dice_myo)), "dice_myo_min": float(np.min(result.dice_myo)),
            "dice_scar_mean": float(np.mean(scar)) if scar else float("nan"),
            "dice_scar_min": float(np.min(scar)) if scar else float("nan"),
            "steps_mean": float(np.mean(result.steps)), "reached_fraction": float(np.mean(result.reached)),
            "fell_short": int(len(idx) - sum(result.reached)),
            "subjects_per_minute": 60.0 * len(idx) / seconds,
        }
        engine.state.metrics = {k: v for k, v in out.items() if v == v}
        if self._bar is not None:
            self._bar.set_postfix(psnr=f"{out['psnr_mean']:.1f}", dice_myo=f"{out['dice_myo_mean']:.3f}")
        return [out]

    def _save(self, part) -> None:
        """Merge a finished chunk into the bank on disk (atomic: weights, then the JSON that commits them)."""
        target = self.output_dir if self.shard is None else self.output_dir / f"rank{self.shard[0]}"
        existing = None
        if (target / BANK_JSON).exists():
            existing = load_bank(target, spec=self.spec, init=self.init_record)
        bank = part if existing is None else merge_banks([existing, part], on_duplicate="keep_last")
        if self.init_record.get("kind") == "meta" and target != self.output_dir:
            import shutil

            target.mkdir(parents=True, exist_ok=True)
            shutil.copy2(self.output_dir / INIT_FILE, target / INIT_FILE)
        save_bank(bank, target)

    def merge_shards(self) -> None:
        """After a multi-rank fit: rank 0 merges ``rank*/`` shard banks into ``output_dir`` (others wait)."""
        _barrier()
        if self.shard is None or self.shard[0] == 0:
            folders = [self.output_dir] + sorted(self.output_dir.glob("rank*"))
            banks = [self._load_checked(f) for f in folders if (f / BANK_JSON).exists()]
            if banks:
                merged = merge_banks(banks, on_duplicate="keep_last")
                order = {sid: i for i, sid in enumerate(self.cohort.ids)}
                keep = sorted(range(len(merged)), key=lambda i: order.get(merged.ids[i], len(order)))
                merged.weights = {k: v[keep] for k, v in merged.weights.items()}
                merged.subjects = [merged.subjects[i] for i in keep]
                save_bank(merged, self.output_dir)
                import shutil

                for f in folders[1:]:
                    shutil.rmtree(f, ignore_errors=True)
        _barrier()

    # -- the run (``run_all``): one epoch per chunk, so the chunk metrics are epoch metrics for MLflow
    epoch_length = 1

    @property
    def max_epochs(self) -> int:
        return self.chunks

    def run_data(self) -> range:
        return range(self.chunks)
