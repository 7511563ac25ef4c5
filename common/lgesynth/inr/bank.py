"""The INR bank: N SIRENs of one architecture fitted from one shared init, plus what they came from.

Files in a bank folder (all written atomically):
- ``inr_bank.safetensors``: one tensor per parameter with a leading subject dim,
  ``layers.{i}.weight: (N, in, out)``, ``layers.{i}.bias: (N, out)`` (``siren.param_names``).
- ``inr_bank.json``: ``format``, ``version``, ``architecture`` (``SirenSpec.to_dict``), ``init``, ``fit``
  (settings), ``weights_sha256`` (of the safetensors file, so a torn pair is detected) and
  ``subjects``: per subject ``id``, ``source`` (files), ``canonical`` (the caller's canonical-grid meta,
  opaque), ``normalisation`` (intensity constants), ``psnr``, ``dice_myo``, ``dice_scar`` (None when
  undefined, ``lgesynth.dice``), ``has_scar`` (the label has scar), ``steps``, ``reached_target`` (bool: the
  fit met the targets of its config, ``fit.config``; False: it stopped at ``max_steps`` short of one) and
  ``reached`` (the same verdict under its first name, kept for older readers), in the order of the tensors'
  first dim. Read it with :func:`reached_target` / ``InrBank.reached_targets``: a bank written before the
  field gives it from ``reached`` (same rule), and one with neither None (unknown, not False). ``load_bank``
  returns the stored subject records as they are.
- ``inr_init.safetensors`` (meta-learned init only): the init's parameters (one subject); ``init`` in
  the JSON is then ``{"kind": "meta", "file": "inr_init.safetensors", "sha256": ..., ...}``, otherwise
  ``{"kind": "seed", "seed": s}``. The checksum is over parameter names, shapes and float32 bytes.

``load_bank`` verifies all of this and refuses a mismatch with a ``DataError`` naming the file;
``merge_banks`` joins partial banks (resume, one bank per rank) of the same architecture and init.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lgesynth.errors import DataError
from lgesynth.inr.siren import SirenSpec, param_names
from lgesynth.io import atomic_path, file_sha256, read_json, write_json

FORMAT = "lgesynth.inr_bank"
VERSION = 1
BANK_WEIGHTS = "inr_bank.safetensors"
BANK_JSON = "inr_bank.json"
INIT_FILE = "inr_init.safetensors"


def params_sha256(params: list[torch.Tensor], spec: SirenSpec) -> str:
    """Checksum of one set of parameters (names, shapes, float32 little-endian bytes)."""
    h = hashlib.sha256()
    for name, p in zip(param_names(spec), params, strict=True):
        t = p.detach().to(torch.float32).contiguous().cpu()
        h.update(f"{name}:{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def seed_init(seed: int) -> dict:
    """The ``init`` record of a bank fitted from the plain SIREN init of ``seed``."""
    return {"kind": "seed", "seed": int(seed)}


def _bank_dir(path: str | Path) -> Path:
    """A bank is addressed by its folder or by either of its two files."""
    path = Path(path)
    return path.parent if path.name in (BANK_WEIGHTS, BANK_JSON, INIT_FILE) else path


def save_init(directory: str | Path, params: list[torch.Tensor], spec: SirenSpec, record: dict | None = None) -> dict:
    """Write a meta-learned init as ``inr_init.safetensors``; returns the bank's ``init`` record."""
    from safetensors.torch import save_file

    path = _bank_dir(directory) / INIT_FILE
    tensors = {n: p.detach().float().contiguous().cpu() for n, p in zip(param_names(spec), params, strict=True)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "lgesynth.inr_init", "architecture": json.dumps(spec.to_dict())})
    return {"kind": "meta", "file": INIT_FILE, "sha256": params_sha256(params, spec), **({"record": record} if record else {})}


def load_init(directory: str | Path, init: dict, spec: SirenSpec) -> list[torch.Tensor]:
    """Parameters of a bank's init: re-created from the seed, or read and checksum-verified."""
    from lgesynth.inr.siren import init_params

    if init.get("kind") == "seed":
        return init_params(spec, int(init["seed"]))
    from safetensors.torch import load_file

    path = _bank_dir(directory) / init.get("file", INIT_FILE)
    if not path.exists():
        raise DataError(path, "the bank's meta-learned init is missing; copy inr_init.safetensors with the bank")
    tensors = load_file(str(path))
    try:
        params = [tensors[n] for n in param_names(spec)]
    except KeyError as exc:
        raise DataError(path, f"init has no tensor {exc}; it was made for another architecture") from None
    if params_sha256(params, spec) != init.get("sha256"):
        raise DataError(path, "init checksum differs from the one recorded in inr_bank.json; this is not the init the "
                        "bank was fitted from (do not mix banks and inits)")
    return params


def reached_target(subject: dict) -> bool | None:
    """Whether a bank subject's fit met its targets: ``reached_target``, else the older ``reached`` (the same
    verdict), else None (unknown: the bank did not record it)."""
    for key in ("reached_target", "reached"):
        if isinstance(subject.get(key), bool):
            return subject[key]
    return None


@dataclass
class InrBank:
    """In-memory bank: ``weights[name]`` has a leading subject dim N = ``len(subjects)``."""

    spec: SirenSpec
    init: dict
    weights: dict[str, torch.Tensor]
    subjects: list[dict]
    fit: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.subjects)

    @property
    def ids(self) -> list[str]:
        return [s["id"] for s in self.subjects]

    @property
    def reached_targets(self) -> list[bool | None]:
        """Per subject, whether its fit met its targets (:func:`reached_target`; None: not recorded)."""
        return [reached_target(s) for s in self.subjects]

    def stacked(self) -> list[torch.Tensor]:
        """``[w0 (N, in, out), b0 (N, out), ...]`` for ``batched_forward`` / ``render``."""
        return [self.weights[n] for n in param_names(self.spec)]

    def params(self, index: int | str) -> list[torch.Tensor]:
        """One subject's ``[w0, b0, ...]`` by position or id."""
        i = self.ids.index(index) if isinstance(index, str) else index
        return [w[i] for w in self.stacked()]

    @classmethod
    def from_fit(cls, spec: SirenSpec, init: dict, params: list[torch.Tensor], subjects: list[dict], fit: dict | None = None) -> "InrBank":
        assert params[0].shape[0] == len(subjects), (params[0].shape, len(subjects))
        weights = {n: p.detach().float().contiguous().cpu() for n, p in zip(param_names(spec), params, strict=True)}
        return cls(spec, dict(init), weights, [dict(s) for s in subjects], dict(fit or {}))


def save_bank(bank: InrBank, directory: str | Path) -> Path:
    """Write ``inr_bank.safetensors`` then ``inr_bank.json`` (the JSON last: it commits the pair)."""
    from safetensors.torch import save_file

    d = _bank_dir(directory)
    d.mkdir(parents=True, exist_ok=True)
    with atomic_path(d / BANK_WEIGHTS) as tmp:
        save_file({k: v.contiguous() for k, v in bank.weights.items()}, str(tmp), metadata={"format": FORMAT})
        sha = file_sha256(tmp)
    doc = {"format": FORMAT, "version": VERSION, "architecture": bank.spec.to_dict(), "init": bank.init,
           "fit": bank.fit, "weights_sha256": sha, "count": len(bank), "subjects": bank.subjects}
    write_json(d / BANK_JSON, doc)
    return d


def load_bank(directory: str | Path, spec: SirenSpec | None = None, init: dict | None = None) -> InrBank:
    """Read and verify a bank.

    Args:
        spec: expected architecture (refused if different). ``init``: expected init record (compared by
            kind and seed or checksum).
    Raises:
        DataError: naming the file when files are missing or torn, the architecture or init differs,
            or tensor shapes do not match the recorded architecture and subject count.
    """
    from safetensors.torch import load_file

    d = _bank_dir(directory)
    jpath, wpath = d / BANK_JSON, d / BANK_WEIGHTS
    for p in (jpath, wpath):
        if not p.exists():
            raise DataError(p, "INR bank file not found (a bank is inr_bank.json + inr_bank.safetensors in one folder)")
    doc = read_json(jpath)
    if doc.get("format") != FORMAT:
        raise DataError(jpath, f"not an INR bank (format {doc.get('format')!r}, expected {FORMAT!r})")
    try:
        bank_spec = SirenSpec.from_dict(doc["architecture"])
    except (KeyError, TypeError) as exc:
        raise DataError(jpath, f"unreadable architecture record ({exc})") from None
    if spec is not None and bank_spec != spec:
        raise DataError(jpath, f"architecture {bank_spec.to_dict()} differs from the expected {spec.to_dict()}; "
                        "fit a new bank or use the matching configuration")
    if init is not None and not same_init(doc.get("init", {}), init):
        raise DataError(jpath, f"init {_init_str(doc.get('init', {}))} differs from the expected {_init_str(init)}; "
                        "all INRs of a bank must start from one init")
    if doc.get("weights_sha256") and file_sha256(wpath) != doc["weights_sha256"]:
        raise DataError(wpath, "does not match inr_bank.json (checksum differs): the pair is torn or mixed; refit or restore both")
    if doc.get("init", {}).get("kind") == "meta":
        load_init(d, doc["init"], bank_spec)  # verifies the stored init's checksum
    weights = load_file(str(wpath))
    n = len(doc.get("subjects", []))
    names = param_names(bank_spec)
    for name, (fan_in, fan_out) in zip(names, [dims for dims in bank_spec.layer_dims for _ in (0, 1)]):
        want = (n, fan_in, fan_out) if name.endswith("weight") else (n, fan_out)
        got = tuple(weights[name].shape) if name in weights else None
        if got != want:
            raise DataError(wpath, f"tensor {name} has shape {got}, expected {want} from inr_bank.json's architecture "
                            f"and {n} subjects")
    return InrBank(bank_spec, doc["init"], {k: weights[k] for k in names}, doc["subjects"], doc.get("fit", {}))


def same_init(a: dict, b: dict) -> bool:
    if a.get("kind") != b.get("kind"):
        return False
    return a.get("seed") == b.get("seed") if a.get("kind") == "seed" else a.get("sha256") == b.get("sha256")


def _init_str(init: dict) -> str:
    return f"seed {init.get('seed')}" if init.get("kind") == "seed" else f"meta sha256 {str(init.get('sha256'))[:12]}…"


def merge_banks(banks: list[InrBank], on_duplicate: str = "error") -> InrBank:
    """Join banks of one architecture and init (resume, per-rank shards), keeping their order.

    Args:
        on_duplicate: ``"error"`` (refuse a subject id present twice), ``"keep_last"`` or ``"keep_first"``.
    """
    if not banks:
        raise ValueError("nothing to merge")
    first = banks[0]
    for b in banks[1:]:
        if b.spec != first.spec:
            raise DataError(None, f"cannot merge banks of different architectures: {first.spec.to_dict()} vs {b.spec.to_dict()}")
        if not same_init(b.init, first.init):
            raise DataError(None, f"cannot merge banks fitted from different inits: {_init_str(first.init)} vs {_init_str(b.init)}")
    rows: dict[str, tuple[int, int]] = {}
    for bi, b in enumerate(banks):
        for si, sid in enumerate(b.ids):
            if sid in rows and on_duplicate == "error":
                raise DataError(None, f"subject {sid!r} is in two of the banks being merged (pass on_duplicate='keep_last')")
            if sid not in rows or on_duplicate == "keep_last":
                rows[sid] = (bi, si)
    order = list(rows.values())
    names = param_names(first.spec)
    weights = {n: torch.stack([banks[bi].weights[n][si] for bi, si in order]) if order else first.weights[n][:0] for n in names}
    subjects = [banks[bi].subjects[si] for bi, si in order]
    return InrBank(first.spec, first.init, weights, subjects, first.fit)


def bank_from_fit(spec: SirenSpec, init: dict, result, ids: list[str], sources: list[dict] | None = None,
                  canonical: list[dict] | None = None, normalisation: list[dict] | None = None,
                  fit_config: dict | None = None) -> InrBank:
    """Assemble a bank from a ``fit.FitResult`` and per-subject records (all lists in subject order).

    ``canonical`` is the caller's canonical-grid meta per subject (opaque, stored as is);
    ``normalisation`` the intensity constants (e.g. the percentiles mapped to -1 and +1).
    """
    n = len(ids)

    def nan_to_none(x: float):
        return None if x != x else float(x)

    subjects = [{"id": ids[i], "source": (sources or [{}] * n)[i], "canonical": (canonical or [{}] * n)[i],
                 "normalisation": (normalisation or [{}] * n)[i], "psnr": float(result.psnr[i]),
                 "dice_myo": float(result.dice_myo[i]), "dice_scar": nan_to_none(result.dice_scar[i]),
                 **({"has_scar": bool(result.has_scar[i])} if result.has_scar else {}),
                 "steps": int(result.steps[i]), "reached_target": bool(result.reached[i]),
                 "reached": bool(result.reached[i])} for i in range(n)]
    return InrBank.from_fit(spec, init, result.params, subjects, fit_config)
