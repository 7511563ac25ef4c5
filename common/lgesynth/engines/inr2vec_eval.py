"""inr2vec after training: load the networks, encode a bank, decode latents, evaluate the round trip.

    load_trained(model_dir, checkpoint)   networks rebuilt from ``inr2vec_model.json`` + a checkpoint
    bank_latents(model, bank, refine)     encoder latents of a bank, optionally refined (``inr2vec.refine``)
    encode_to_file(model, bank_dir, ...)  bank -> ``latents.safetensors`` + ``latents.json``
    decode_to_nifti(model, latents, ...)  latents -> NIfTI image + label pairs + ``datalist.json``
    Inr2VecEvaluator                      bank -> latent -> decoded volume vs canonical volume, per subject

A bank is only encoded by an encoder trained on banks of its architecture *and* init (the shared
init aligns the neurons the encoder reads); anything else is refused with a ``DataError`` naming
the bank file. Latents remember the checksum of the encoder that made them; a decoder whose
encoder has another checksum refuses them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine

from lgesynth.data.canonical import CanonicalGrid
from lgesynth.data.canonical_case import to_canonical
from lgesynth.data.canonical_coords import canonical_coords
from lgesynth.data.datalist import load_datalist, write_datalist
from lgesynth.data.validate import label_problems
from lgesynth.dice import dice
from lgesynth.engines.base import BundleEngine
from lgesynth.errors import DataError
from lgesynth.inr.bank import BANK_JSON, InrBank, load_bank, same_init
from lgesynth.inr.loss import decode
from lgesynth.inr.siren import SirenSpec
from lgesynth.inr2vec.decoder import build_decoder
from lgesynth.inr2vec.encoder import Inr2VecEncoder
from lgesynth.inr2vec.fidelity import COLUMNS as FIDELITY_COLUMNS
from lgesynth.inr2vec.fidelity import cohort_fidelity, mask_fidelity, save_fidelity_figure
from lgesynth.inr2vec.latents import LATENTS_JSON, Latents, load_latents, save_latents, scar_record, state_sha256
from lgesynth.inr2vec.probe import linear_probe_accuracy
from lgesynth.inr2vec.refine import refine_latents
from lgesynth.inr2vec.train import Inr2VecModel, encode_bank
from lgesynth.engines.inr2vec import MODEL_FORMAT, MODEL_JSON
from lgesynth.io import save_nifti, spacing_from_affine, write_csv, write_json

COLUMNS = ("id", "section", "role", "psnr", "ssim", "dice_myo", "dice_scar", *FIDELITY_COLUMNS)
_ROLE = {"training": "train", "validation": "val", "test": "test"}  # role of a subject the model's split does not list
# The generator decodes samples drawn from the *training* latents' distribution, so what every sample looks
# like is how the decoder renders the training subjects: the final decoder renders them best. model_best.pt
# (best held-out validation PSNR) peaks early, while held-out PSNR is flat and the training fit still
# improves (EMIDEC, cpu preset: step 500 of 1500, training subjects 18 dB and dilated instead of 22.5 dB).
CHECKPOINT_ORDER = ("model_final.pt", "model_best.pt")


def find_checkpoint(model_dir: str | Path) -> Path:
    """``model_final.pt``, else ``model_best.pt`` (best val PSNR), else the newest ``checkpoint_epoch=N.pt``."""
    from lgesynth.engines.checkpoints import latest_checkpoint

    d = Path(model_dir)
    for name in CHECKPOINT_ORDER:
        if (d / name).is_file():
            return d / name
    latest = latest_checkpoint(d)
    if not latest:
        raise DataError(d, "no inr2vec checkpoint (model_final.pt, model_best.pt or checkpoint_epoch=N.pt); train first "
                        "(bundles/inr2vec/configs/train.yaml) or pass --checkpoint")
    return Path(latest)


def load_trained(model_dir: str | Path, checkpoint: str | Path | None = None, device: str | torch.device = "cpu") -> Inr2VecModel:
    """Encoder + decoder from ``model_dir/inr2vec_model.json`` and a checkpoint (default ``find_checkpoint``).

    The returned model carries ``record`` (the JSON) and ``checkpoint`` (its path) as attributes.
    """
    record_path = Path(model_dir) / MODEL_JSON
    if not record_path.is_file():
        raise DataError(record_path, "not found: model_dir must be the inr2vec train output (it writes this file)")
    record = json.loads(record_path.read_text())
    if record.get("format") != MODEL_FORMAT:
        raise DataError(record_path, f"not an inr2vec model record (format {record.get('format')!r})")
    enc = dict(record["encoder"])
    encoder = Inr2VecEncoder(SirenSpec.from_dict(enc.pop("spec")), **enc)
    decoder = build_decoder(record["decoder"])  # a siren decoder's base weights come from the checkpoint
    path = Path(checkpoint) if checkpoint else find_checkpoint(model_dir)
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key, net in (("encoder", encoder), ("decoder", decoder)):
        if key not in state:
            raise DataError(path, f"checkpoint has no {key!r} (keys: {sorted(state)}); use an inr2vec checkpoint")
        net.load_state_dict(state[key])
    model = Inr2VecModel(encoder, decoder).to(device).eval()
    model.record, model.checkpoint = record, str(path)
    return model


def check_bank(model: Inr2VecModel, bank: InrBank, bank_dir: str | Path) -> None:
    """Refuse (``DataError`` naming the bank's JSON) a bank of another architecture or init."""
    where = Path(bank_dir)
    where = where.parent / BANK_JSON if where.suffix else where / BANK_JSON
    model.encoder.check_spec(bank.spec, where)
    trained_on = model.record.get("bank", {}).get("init")
    if trained_on and not same_init(bank.init, trained_on):
        raise DataError(where, f"INRs fitted from init {bank.init.get('kind')} {bank.init.get('seed', str(bank.init.get('sha256'))[:12])}, "
                        "but the encoder was trained on a bank of another init; the encoder only reads INRs of its "
                        "training bank's init: fit this cohort with that init (inr_fit, same output_dir) or retrain")


def _patterns(datalist: str | None) -> dict[str, str]:
    if not datalist:
        return {}
    return {e["id"]: e["pattern"] for e in load_datalist(datalist, absolute=False) if e.get("pattern") is not None}


def subject_records(bank: InrBank, datalist: str | None = None, grid: CanonicalGrid | None = None) -> list[dict]:
    """Per bank subject: ``id``, ``section``, ``has_scar``, ``scar_burden`` (canonical label), ``pattern`` if known,
    and from the bank's canonical meta (else the label's): ``canonical_spacing_mm`` (3,) the canonical
    voxel size (column norms of ``canonical_affine``; the subject's physical size) and ``source_spacing_mm``
    (3,) the original voxel size in canonical axis order (slice spacing last)."""
    grid = grid or CanonicalGrid.from_record(bank.fit.get("grid"))
    patterns = _patterns(datalist)
    out = []
    for s in bank.subjects:
        src = s.get("source", {})
        case = to_canonical(None, src["label"], grid)
        meta = s.get("canonical") or case.meta
        rec = {"id": s["id"], "section": src.get("section", ""), **scar_record(case.label)}
        if "canonical_affine" in meta:
            rec["canonical_spacing_mm"] = [float(v) for v in spacing_from_affine(np.asarray(meta["canonical_affine"]))]
        if "original_affine" in meta and "perm" in meta:
            original = spacing_from_affine(np.asarray(meta["original_affine"]))
            rec["source_spacing_mm"] = [float(original[int(a)]) for a in meta["perm"]]
        pattern = patterns.get(s["id"], src.get("pattern"))
        if pattern is not None:
            rec["pattern"] = pattern
        out.append(rec)
    return out


def bank_latents(model: Inr2VecModel, bank: InrBank, refine: dict | None = None, progress: bool = False) -> torch.Tensor:
    """``(subjects, latent_dim)`` on the model's device: the encoder's latents, then, when ``refine`` has
    ``steps`` > 0, :func:`lgesynth.inr2vec.refine.refine_latents` with its ``steps``, ``lr``, ``points``."""
    device = next(model.parameters()).device
    z = encode_bank(model.encoder, [p.to(device) for p in bank.stacked()])
    return refine_rows(model, bank, z, range(len(bank)), refine, progress)


def refine_rows(model: Inr2VecModel, bank: InrBank, z: torch.Tensor, rows, refine: dict | None = None,
                progress: bool = False) -> torch.Tensor:
    """``z (subjects, latent_dim)`` with the latents of bank subjects ``rows`` refined by ``refine`` (when its
    ``steps`` > 0, :func:`lgesynth.inr2vec.refine.refine_latents`), the others unchanged."""
    rows = list(rows)
    if not refine or int(refine.get("steps", 0)) <= 0 or not rows:
        return z
    device = next(model.parameters()).device
    params = [p[rows].to(device) for p in bank.stacked()]
    grid = CanonicalGrid.from_record(bank.fit.get("grid"))
    coords = canonical_coords(grid.shape, float(bank.fit.get("z_extent", 1.0))).to(device)
    z = z.to(device).clone()
    z[rows] = refine_latents(model, params, z[rows], coords, progress=progress, **refine)
    return z


def encode_to_file(model: Inr2VecModel, bank_dir: str, output_dir: str, datalist: str | None = None,
                   refine: dict | None = None, progress: bool = True) -> Latents:
    """Encode (and refine, see :func:`bank_latents`) every subject of a bank; write ``output_dir/latents.{safetensors,json}``."""
    bank = load_bank(bank_dir)
    check_bank(model, bank, bank_dir)
    z = bank_latents(model, bank, refine, progress).cpu()
    latents = Latents(z, subject_records(bank, datalist), state_sha256(model.encoder),
                      {"bank_dir": str(bank_dir), "bank_init": bank.init, "checkpoint": getattr(model, "checkpoint", None),
                       "refine": dict(refine or {"steps": 0})})
    save_latents(output_dir, latents)
    return latents


def load_latents_of(model: Inr2VecModel, latents_path: str | Path) -> tuple[Latents, Path]:
    """``(latents, their latents.json path)``, refused with a ``DataError`` naming that file when another
    encoder made them (``encoder_sha256``) or their size is not the decoder's ``latent_dim``."""
    lat = load_latents(latents_path)
    where = Path(latents_path)
    where = where.parent / LATENTS_JSON if where.suffix else where / LATENTS_JSON
    if lat.encoder_sha256 and lat.encoder_sha256 != state_sha256(model.encoder):
        raise DataError(where, "was made by another encoder than the one paired with this decoder (encoder_sha256 "
                        f"differs; checkpoint {getattr(model, 'checkpoint', '?')}); use the checkpoint that encoded them")
    if lat.latents.shape[1] != model.decoder.latent_dim:
        raise DataError(where, f"latent_dim {lat.latents.shape[1]} differs from the decoder's {model.decoder.latent_dim}")
    return lat, where


def latents_for_bank(model: Inr2VecModel, bank: InrBank, latents_path: str | Path) -> torch.Tensor:
    """Latents from a file made by ``encode_to_file`` for this bank and this encoder, in bank order.

    Raises:
        DataError: naming the latents file when its encoder or its subjects differ.
    """
    lat, where = load_latents_of(model, latents_path)
    rows = {sid: i for i, sid in enumerate(lat.ids)}
    missing = [sid for sid in bank.ids if sid not in rows]
    if missing:
        raise DataError(where, f"has no latent for {len(missing)} bank subject(s) (e.g. {missing[0]}); encode the bank again")
    return lat.latents[[rows[sid] for sid in bank.ids]].to(next(model.parameters()).device)


def _decode_volumes(model: Inr2VecModel, z: torch.Tensor, grid_shape, z_extent: float, chunk: int = 32768):
    """``(images (S, X, Y, Z) float32, labels (S, X, Y, Z) uint8)`` on the canonical grid."""
    coords = canonical_coords(grid_shape, z_extent).to(z.device)
    pred = model.decoder.decode(coords, z, chunk).float()
    myo, scar = decode(torch.sigmoid(pred[..., 1]), torch.sigmoid(pred[..., 2]))
    label = myo.to(torch.uint8) + scar.to(torch.uint8)
    shape = (z.shape[0], *grid_shape)
    return pred[..., 0].reshape(shape).cpu().numpy().astype(np.float32), label.reshape(shape).cpu().numpy()


def decode_to_nifti(model: Inr2VecModel, latents_path: str, output_dir: str, affine=None, ids=None,
                    batch_size: int = 8, chunk: int = 32768) -> Path:
    """Decode latents to ``imagesTr/<id>.nii.gz`` + ``labelsTr/<id>.nii.gz`` on the canonical grid.

    Args:
        affine: (4, 4) voxel -> world of the written volumes; default the training bank's reference
            (median canonical voxel size, centred at the origin).
        ids: decode only these latent ids.
    Returns:
        ``output_dir/datalist.json``: decoded pairs under ``"training"`` (``synthetic: true``); a decode
        whose label would fail ``check_datalist`` (e.g. no myocardium) is written but listed under
        ``"rejected"`` with the reason instead.
    """
    lat, _ = load_latents_of(model, latents_path)
    rows = [i for i, sid in enumerate(lat.ids) if ids is None or sid in set(ids)]
    record, out = model.record, Path(output_dir)
    grid_shape = tuple(record["grid"]["shape"])
    affine = np.asarray(affine if affine is not None else record["reference_affine"], dtype=np.float64)
    device = next(model.parameters()).device
    kept, rejected = [], []
    for s in range(0, len(rows), batch_size):
        part = rows[s: s + batch_size]
        images, labels = _decode_volumes(model, lat.latents[part].to(device), grid_shape, record["z_extent"], chunk)
        for i, image, label in zip(part, images, labels):
            sid = lat.ids[i]
            img_p = save_nifti(out / "imagesTr" / f"{sid}.nii.gz", image, affine, dtype=np.float32)
            lab_p = save_nifti(out / "labelsTr" / f"{sid}.nii.gz", label, affine, dtype=np.uint8)
            entry = {"id": sid, "image": str(img_p), "label": str(lab_p), "synthetic": True,
                     "scar": bool((label == 2).any())}
            problems = label_problems(label, affine)
            (rejected.append({**entry, "reason": "; ".join(problems)}) if problems else kept.append(entry))
    rel = [{**e, "image": f"imagesTr/{e['id']}.nii.gz", "label": f"labelsTr/{e['id']}.nii.gz"} for e in rejected]
    return write_datalist(out / "datalist.json", kept, [], rejected=rel,
                          source={"latents": str(latents_path), "checkpoint": getattr(model, "checkpoint", None)})


def _nanmean(values) -> float:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


class Inr2VecEvaluator(BundleEngine):
    """Round trip of every bank subject; one iteration per subject.

    Writes ``inr2vec_metrics.csv`` (``id, section, role, psnr, ssim, dice_myo, dice_scar`` and the mask
    fidelity columns of ``inr2vec.fidelity``: decoded / true myocardium and scar voxels, wall thickness; ``role`` is
    train / val / test in the model's split, so validation subjects held out of the datalist's training
    section are not counted as trained on), the summary ``inr2vec_metrics.json`` (``psnr_test``,
    ``ssim_test``, ``dice_myo_test``, ``dice_scar_test`` (means over the subjects whose Dice is defined,
    :mod:`lgesynth.dice`; ``dice_scar_undefined_test``: how many were not), ``probe_accuracy``, their ``_train``
    and ``_val`` twins; the probe is a scar / no-scar logistic regression on
    the training-section latents, scored on the test latents, ``_train`` on its own training data) and
    ``inr2vec_montage.png`` (mid slices, source vs reconstruction, ``montage_subjects`` subjects). The summary
    also holds, per role, the medians and 10th / 90th percentiles of the decoded / true ratios and the
    cohort's coefficients of variation (``inr2vec.fidelity.cohort_fidelity``), drawn in ``inr2vec_fidelity.png``.
    The summary becomes ``state.metrics`` for MLflow (``--tracking mlflow``).

    Latents: ``latents`` (a ``latents.json`` of an encode run of this bank and encoder) when given, else
    encoded here; then the held-out subjects' (every role but ``train``) refined with ``refine``
    (:func:`refine_rows`): the training subjects keep the latents the generator learns from, held-out ones
    are scored as a test-time-refined code would render them. The summary records which.
    """

    def __init__(self, model: Inr2VecModel, bank_dir: str, output_dir: str, montage_subjects: int = 4,
                 val_handlers=(), progress: bool = True, refine: dict | None = None, latents: str | None = None):
        super().__init__()
        self.model, self.output_dir, self.montage_subjects = model, Path(output_dir), int(montage_subjects)
        self.bank_dir = str(bank_dir)
        self.bank = load_bank(bank_dir)
        split = getattr(model, "record", {}).get("split", {})
        self.roles = {sid: role for role, ids in split.items() for sid in ids}  # id -> train | val | test
        check_bank(model, self.bank, bank_dir)
        self.grid = CanonicalGrid.from_record(self.bank.fit.get("grid"))
        # latents: those of an encode run (--latents), else encoded here; the held-out ones refined
        z = latents_for_bank(model, self.bank, latents) if latents else bank_latents(model, self.bank)
        held_out = [i for i, s in enumerate(self.bank.subjects) if self._role(s) != "train"]
        self.latents = refine_rows(model, self.bank, z, held_out, refine, progress)
        self.latent_source = {"latents": str(latents) if latents else "encoded", "refine": dict(refine or {"steps": 0}),
                              "refined": "held-out subjects" if refine and int(refine.get("steps", 0)) > 0 else "none"}
        win = min(7, *[s if s % 2 else s - 1 for s in self.grid.shape])
        from monai.metrics import SSIMMetric

        self.ssim = SSIMMetric(spatial_dims=3, data_range=2.0, win_size=max(win, 3))
        self.rows: list[dict] = []
        self.panels: list[tuple] = []
        self._bar = None
        if progress:
            from tqdm import tqdm

            self._bar = tqdm(total=len(self.bank), desc="inr2vec evaluate", unit="subject")
        self.attach_handlers(val_handlers, finish=self._finish)  # MLFlowHandler's epoch log sees the summary

    def _role(self, subject: dict) -> str:
        section = subject.get("source", {}).get("section", "")
        return self.roles.get(subject["id"], _ROLE.get(section, section))

    def run_data(self) -> list[int]:
        """All subjects in one epoch; the files and metrics are written at its end."""
        return list(range(len(self.bank)))

    def run_params(self) -> dict:
        return {"bank_dir": self.bank_dir, "checkpoint": getattr(self.model, "checkpoint", None), "subjects": len(self.bank),
                "latents": str(self.latent_source)}

    def _process(self, engine: Engine, index: int) -> list[dict]:
        subject = self.bank.subjects[index]
        src = subject["source"]
        case = to_canonical(src["image"], src["label"], self.grid)
        images, labels = _decode_volumes(self.model, self.latents[index: index + 1], self.grid.shape,
                                         float(self.bank.fit.get("z_extent", 1.0)))
        image, label = images[0], labels[0]
        mse = float(np.mean((image - case.image) ** 2))
        ssim = float(self.ssim(torch.from_numpy(image)[None, None], torch.from_numpy(case.image)[None, None]).item())
        row = {"id": subject["id"], "section": src.get("section", ""), "role": self._role(subject),
               "psnr": 10 * np.log10(4 / max(mse, 1e-12)),
               "ssim": ssim, "dice_myo": dice(label > 0, case.label > 0), "dice_scar": dice(label == 2, case.label == 2),
               **mask_fidelity(label, case.label, spacing_from_affine(case.affine), image, case.image),
               **scar_record(case.label)}
        self.rows.append(row)
        if len(self.panels) < self.montage_subjects:
            from lgesynth.viz import mid_slice

            k = mid_slice(case.label)
            self.panels.append((subject["id"], case.image[..., k], case.label[..., k], image[..., k], label[..., k]))
        if self._bar is not None:
            self._bar.update(1)
        return [dict(row, loss=mse)]

    def summary(self) -> dict:
        out: dict = {"subjects": len(self.rows), "checkpoint": getattr(self.model, "checkpoint", None),
                     "latents": self.latent_source}
        for tag in ("train", "val", "test"):
            rows = [r for r in self.rows if r["role"] == tag]
            if not rows and tag == "val":
                continue
            out[f"n_{tag}"] = len(rows)
            for key in ("psnr", "ssim", "dice_myo", "dice_scar"):
                out[f"{key}_{tag}"] = _nanmean([r[key] for r in rows])
            for key in ("dice_myo", "dice_scar"):
                out[f"{key}_undefined_{tag}"] = int(sum(r[key] != r[key] for r in rows))
            out.update(cohort_fidelity(rows, tag))
        index = {sid: i for i, sid in enumerate(self.bank.ids)}
        y = {r["id"]: int(r["has_scar"]) for r in self.rows}
        tr = [r["id"] for r in self.rows if r["section"] == "training"]
        te = [r["id"] for r in self.rows if r["section"] == "test"]
        out["probe_accuracy"] = out["probe_accuracy_train"] = float("nan")
        if tr and len({y[i] for i in tr}) == 2:
            z_tr = self.latents[[index[i] for i in tr]].cpu()
            y_tr = torch.tensor([y[i] for i in tr])
            out["probe_accuracy_train"] = linear_probe_accuracy(z_tr, y_tr, z_tr, y_tr)
            if te:
                out["probe_accuracy"] = linear_probe_accuracy(z_tr, y_tr, self.latents[[index[i] for i in te]].cpu(),
                                                              torch.tensor([y[i] for i in te]))
        return out

    def write(self) -> dict:
        """CSV, summary JSON and montage, each written atomically; returns the summary."""
        write_csv(self.output_dir / "inr2vec_metrics.csv", self.rows, COLUMNS)
        summary = self.summary()
        write_json(self.output_dir / "inr2vec_metrics.json", {k: (None if isinstance(v, float) and v != v else v)
                                                              for k, v in summary.items()})
        if self.panels:
            from lgesynth.viz import save_montage

            images, labels, titles = [], [], []
            for sid, si, sl, ri, rl in self.panels:
                images += [si, ri]
                labels += [sl, rl]
                titles += [f"{sid} source", f"{sid} inr2vec"]
            save_montage(self.output_dir / "inr2vec_montage.png", images, labels, titles, ncols=4)
        if self.rows:
            save_fidelity_figure(self.output_dir / "inr2vec_fidelity.png", self.rows)
        return summary

    def _finish(self, engine: Engine) -> None:
        """Write the files and expose the summary as ``engine.state.metrics``."""
        summary = self.write()
        engine.state.metrics = {k: v for k, v in summary.items()
                                if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)}
        if self._bar is not None:
            self._bar.close()
