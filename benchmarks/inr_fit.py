"""Benchmark INR fitting: the paper's per-subject loop vs batched vs the default method, in one run.

    python benchmarks/inr_fit.py --quick --json /tmp/inr_fit.json
    python benchmarks/inr_fit.py --data ../shared/data/emidec50 --subjects 8 --json out.json

Same subjects, same quality target (PSNR >= 30 dB on [-1, 1], Dice myocardium >= 0.95, Dice scar >= 0.90
for subjects with scar), three ways:
- ``loop``: one ``nn.Module`` SIREN per subject (``nn.Linear`` + ``torch.sin``, the reference formulation)
  from the standard init, plain ``torch.optim.Adam`` (lr 1e-4), autograd, 16 384 uniform points per step,
  full-grid check every 25 steps.
- ``batched``: the same maths (standard init, lr 1e-4, uniform points, fp32) with all subjects in one
  batched model (``lgesynth.inr.fit`` with ``compute_dtype=float32``, ``focus_fraction=0``).
- ``default``: ``FitConfig()`` defaults (8192 points per step, a quarter of them on the mask edges, bf16 hidden GEMMs, tuned lr,
  early stop + slot refill) from a Reptile init meta-learned on *other* subjects of the cohort
  (its time is amortised over the whole cohort, as one init serves one bank).
Each method runs in its own process (clean peak RSS); the fp32 (and bf16) GEMM rate of matching sizes
is measured right before each method, because the machine is shared and its speed drifts.
``--quick``: 4 timed subjects of a 50-subject bank (the meta-learning cost is charged per bank subject),
the loop capped at ``--loop-steps`` steps per subject; its steps-to-target are then taken from the
batched run (identical maths and hyper-parameters) and its time extrapolated from its measured time per step; the JSON says so (``loop.extrapolated``).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

GRID = (96, 96, 12)
LOOP_LR = 1e-4
CHECK_EVERY = 25


# ----------------------------------------------------------------------------------------- cohorts
def grid_coords(shape=GRID, z_extent: float = 1.0) -> torch.Tensor:
    """Canonical voxel centres, C-order flattened ``(X*Y*Z, 3)`` (``canonical.canonical_coords``)."""
    from lgesynth.data.canonical_coords import canonical_coords

    return torch.as_tensor(canonical_coords(shape, z_extent), dtype=torch.float32)


def synthetic_cohort(n: int, shape=GRID, seed: int = 0) -> tuple[list[str], torch.Tensor]:
    """Phantom-like cases on the canonical grid: blood pool, myocardial ring varying per slice, scar
    wedges of varying depth in every other case, smooth background, noise. Targets ``(n, X*Y*Z, 3)``."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    X, Y, Z = shape
    x, y = np.meshgrid(np.linspace(-1, 1, X), np.linspace(-1, 1, Y), indexing="ij")
    ids, targets = [], []
    for i in range(n):
        img = np.zeros(shape, np.float32)
        myo = np.zeros(shape, bool)
        scar = np.zeros(shape, bool)
        cx, cy = rng.uniform(-0.1, 0.1, 2)
        r0, thick = rng.uniform(0.3, 0.45), rng.uniform(0.09, 0.14)
        a0, width = rng.uniform(0, 2 * np.pi), rng.uniform(0.6, 1.4)
        bg = sum(rng.uniform(0.1, 0.3) * np.sin(rng.uniform(1, 4) * x + rng.uniform(1, 4) * y + rng.uniform(0, 6))
                 for _ in range(4))
        for k in range(Z):
            f = 1 - 0.5 * (k / max(Z - 1, 1)) ** 2  # smaller towards the apex
            ex = 1 + 0.1 * np.sin(k + i)
            r = np.sqrt(((x - cx) / ex) ** 2 + ((y - cy) * ex) ** 2)
            theta = np.arctan2(y - cy, x - cx)
            ri, ro = r0 * f, r0 * f + thick * (1 + 0.3 * np.cos(2 * theta + i))
            ring, pool = (r >= ri) & (r < ro), r < ri
            myo[..., k] = ring
            if i % 2 == 0:
                d = np.angle(np.exp(1j * (theta - a0 - 0.1 * k)))
                depth = ri + (ro - ri) * (0.5 + 0.5 * np.cos(3 * theta))
                scar[..., k] = ring & (np.abs(d) < width / 2) & (r < depth + 0.02)
            sl = np.where(pool, 0.6, bg * 0.5 - 0.2)
            sl = np.where(ring, -0.7, sl)
            img[..., k] = np.where(scar[..., k], 0.8, sl)
        img += rng.normal(0, 0.03, shape).astype(np.float32)
        img = np.clip(gaussian_filter(img, (0.7, 0.7, 0)), -1, 1)
        ids.append(f"syn{seed:02d}_{i:03d}")
        targets.append(np.stack([img.reshape(-1), myo.reshape(-1), scar.reshape(-1)], -1))
    return ids, torch.as_tensor(np.stack(targets), dtype=torch.float32)


def _load_pair(image_path: Path, label_path: Path, emidec: bool, shape=GRID):
    from lgesynth.data.canonical import CanonicalGrid
    from lgesynth.data.canonical_case import to_canonical_arrays
    from lgesynth.data.canonical_coords import physical_aspect
    from lgesynth.io import load_nifti

    image, affine = load_nifti(image_path)
    label, _ = load_nifti(label_path)
    label = np.asarray(label).astype(np.int16)
    if emidec:  # 1 cavity, 2 myocardium, 3 infarct, 4 no-reflow -> 0 bg, 1 healthy, 2 scar
        label = np.select([label == 2, np.isin(label, (3, 4))], [1, 2], 0).astype(np.uint8)
    case = to_canonical_arrays(np.asarray(image, dtype=np.float32), label, affine, CanonicalGrid(shape=shape),
                               image_name=image_path, label_name=label_path)
    lab = np.asarray(case.label)
    case.meta.setdefault("source", {"image": str(image_path), "label": str(label_path)})
    return np.asarray(case.image), lab >= 1, lab == 2, physical_aspect(case.meta), case.meta


def load_cohort(data: str, limit: int | None = None, shape=GRID):
    """An EMIDEC folder (``Case_*/Images``, ``Case_*/Contours``) or an MSD-style datalist (labels 0/1/2).

    Returns ``(ids, targets (S, X*Y*Z, 3), coords (S, X*Y*Z, 3), metas)``; coords per subject (own z extent).
    """
    path = Path(data)
    if path.is_dir():
        cases = sorted(p for p in path.glob("Case_*") if p.is_dir())[:limit]
        pairs = [(c.name, c / "Images" / f"{c.name}.nii.gz", c / "Contours" / f"{c.name}.nii.gz", True) for c in cases]
    else:
        from lgesynth.data.datalist import load_datalist

        pairs = [(e["id"], Path(e["image"]), Path(e["label"]), False) for e in load_datalist(path)[:limit]]
    ids, targets, coords, metas = [], [], [], []
    for cid, img_p, lab_p, emidec in pairs:
        img, m, s, z_ext, meta = _load_pair(img_p, lab_p, emidec, shape)
        ids.append(cid)
        targets.append(np.stack([img.reshape(-1), m.reshape(-1), s.reshape(-1)], -1))
        coords.append(grid_coords(shape, z_ext))
        metas.append(meta)
    return ids, torch.as_tensor(np.stack(targets), dtype=torch.float32), torch.stack(coords), metas


# ----------------------------------------------------------------------------------------- GEMM rate
def gemm_gflops(points: int, width: int, dtype=torch.float32, device="cpu", seconds: float = 1.0) -> float:
    """torch.mm rate for the fit's shapes: (points, width) @ (width, width), its transposed weight-grad
    form (width, points) @ (points, width), and the input-grad form; median over repeats."""
    a = torch.randn(points, width, dtype=dtype, device=device)
    w = torch.randn(width, width, dtype=dtype, device=device)
    g = torch.randn(points, width, dtype=dtype, device=device)
    o, ow = torch.empty_like(a), torch.empty(width, width, dtype=dtype, device=device)
    flop = 3 * 2 * points * width * width
    rates, t_end = [], time.perf_counter() + seconds

    def once():
        torch.mm(a, w, out=o)
        torch.mm(a.t(), g, out=ow)
        torch.mm(g, w.t(), out=o)

    once()
    while time.perf_counter() < t_end or len(rates) < 5:
        _sync(device)
        t = time.perf_counter()
        once()
        _sync(device)
        rates.append(flop / (time.perf_counter() - t) / 1e9)
    return float(np.median(rates))


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def _sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------------------- methods
class PaperSiren(torch.nn.Module):
    """The reference formulation of the per-subject loop: ``nn.Linear`` layers and ``torch.sin(omega * x)``
    under plain autograd (no fused sine), loaded with the same init as the other methods."""

    def __init__(self, spec, params: list[torch.Tensor]):
        super().__init__()
        self.omegas = spec.omegas
        self.layers = torch.nn.ModuleList(torch.nn.Linear(i, o) for i, o in spec.layer_dims)
        with torch.no_grad():
            for k, layer in enumerate(self.layers):
                layer.weight.copy_(params[2 * k].t())  # ours: (in, out); nn.Linear: (out, in)
                layer.bias.copy_(params[2 * k + 1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer, omega in zip(self.layers[:-1], self.omegas):
            x = torch.sin(omega * layer(x))
        return self.layers[-1](x)

    def params(self) -> list[torch.Tensor]:
        return [t for layer in self.layers for t in (layer.weight.t(), layer.bias)]


def _loop_method(targets, coords, spec, cap: int, device: str, points: int, seed: int) -> dict:
    """The paper's per-subject loop: nn.Module, autograd, plain Adam, uniform points; checks every 25 steps."""
    from lgesynth.inr import fit_metrics, forward_chunked, init_params, joint_loss

    g = torch.Generator(device="cpu").manual_seed(seed)
    out = {"steps": [], "reached": [], "psnr": [], "dice_myo": [], "dice_scar": [], "step_seconds": []}
    t0 = time.perf_counter()
    for s in range(targets.shape[0]):
        tgt = targets[s].to(device)
        c = (coords[s] if coords.dim() == 3 else coords).to(device)
        net = PaperSiren(spec, init_params(spec, 0)).to(device)
        opt = torch.optim.Adam(net.parameters(), lr=LOOP_LR)
        n = tgt.shape[0]
        ts = time.perf_counter()
        step, m = 0, None
        while step < cap:
            idx = torch.randint(n, (points,), generator=g).to(device)
            loss = joint_loss(net(c[idx]), tgt[idx]).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step % CHECK_EVERY == 0 or step == cap:
                with torch.no_grad():
                    m = fit_metrics(forward_chunked([p.detach().unsqueeze(0) for p in net.params()], c, spec), tgt.unsqueeze(0))
                if _reached(m):
                    break
        _sync(device)
        out["step_seconds"].append((time.perf_counter() - ts) / step)
        out["steps"].append(step)
        out["reached"].append(_reached(m))
        for k in ("psnr", "dice_myo", "dice_scar"):
            out[k].append(float(m[k][0]))
    out["seconds"] = time.perf_counter() - t0
    out["subject_steps"] = sum(out["steps"])
    return out


def _reached(m, psnr_t=30.0, myo_t=0.95, scar_t=0.90) -> bool:
    """``fit_metrics`` ``m`` of one subject at the targets (the scar target only with scar, as ``inr.fit``)."""
    return (float(m["psnr"][0]) >= psnr_t and float(m["dice_myo"][0]) >= myo_t
            and (not bool(m["has_scar"][0]) or float(m["dice_scar"][0]) >= scar_t))


def _fit_method(targets, coords, spec, cfg, init) -> dict:
    from lgesynth.inr import fit

    res = fit(targets, coords, init, spec, cfg)
    return {"steps": res.steps, "reached": res.reached, "psnr": res.psnr, "dice_myo": res.dice_myo,
            "dice_scar": res.dice_scar, "seconds": res.seconds, "subject_steps": res.total_subject_steps}


def _worker(args: dict, queue) -> None:
    """One method in a fresh process: GEMM rate first, then the fit; reports peak RSS."""
    torch.set_num_threads(args["threads"])
    from lgesynth.inr import FitConfig, SirenSpec, init_params, meta_learn_init, MetaConfig

    data = torch.load(args["data_file"])
    spec = SirenSpec(**args["spec"])
    device, method = args["device"], args["method"]
    res = {"method": method,
           "gemm_fp32_gflops": gemm_gflops(args["points"], spec.hidden_features, torch.float32, device)}
    if method == "default":
        res["gemm_bf16_gflops"] = gemm_gflops(args["points"], spec.hidden_features, torch.bfloat16, device)
    cpu0 = _cpu()
    t, c = data["targets"].to(device), data["coords"].to(device)
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True  # allowed by the brief where PSNR holds (checked: metrics are fp32)
    if method == "loop":
        res.update(_loop_method(t, c, spec, args["loop_cap"], device, args["points"], args["seed"]))
    elif method == "batched":
        cfg = FitConfig(lr=LOOP_LR, compute_dtype="float32", focus_fraction=0.0, points=args["points"],
                        max_steps=args["max_steps"], batch_size=args["batch_size"], check_every=CHECK_EVERY,
                        precheck_fraction=1.0)  # full-grid checks every 25 steps, as the loop
        res.update(_fit_method(t, c, spec, cfg, init_params(spec, 0)))
    else:
        cfg = replace(FitConfig(), max_steps=args["max_steps"], batch_size=args["batch_size"])
        mt, mc = data["meta_targets"].to(device), data["meta_coords"].to(device)
        t0, c0 = time.perf_counter(), _cpu()
        theta, record = meta_learn_init(mt, mc, init_params(spec, 0), spec, cfg, MetaConfig(**args["meta"]))
        res["meta_seconds"], res["meta_cpu_seconds"] = time.perf_counter() - t0, _cpu() - c0
        res["meta_subject_steps"] = record["outer_steps"] * record["inner_steps"] * min(record["meta_batch"], mt.shape[0])
        res["meta_points"] = record["points"]
        res.update(_fit_method(t, c, spec, cfg, theta))
    res["points"] = cfg.points if method != "loop" else args["points"]  # the default draws FitConfig's (8192)
    res["cpu_seconds"] = _cpu() - cpu0 - res.get("meta_cpu_seconds", 0.0)  # user + system of the fit
    # the machine is shared: GEMM rate before and after the method, averaged
    res["gemm_fp32_gflops"] = 0.5 * (res["gemm_fp32_gflops"] + gemm_gflops(args["points"], spec.hidden_features, torch.float32, device))
    res["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put(res)


def run_method(args: dict) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_worker, args=(args, q))
    p.start()
    res = q.get()
    p.join()
    return res


def fit_all(data: str, out_dir: Path | None, threads: int, limit: int | None = None) -> dict:
    """The default pipeline on a whole cohort: meta-learn the init on all its subjects (they are the
    bank's training subjects), fit every subject, write the bank; wall times per stage."""
    from lgesynth.inr import FitConfig, MetaConfig, SirenSpec, bank_from_fit, fit, init_params, meta_learn_init
    from lgesynth.inr import save_bank, save_init

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    ids, targets, coords, metas = load_cohort(data, limit=limit)
    t_load = time.perf_counter() - t0
    spec, cfg, mcfg = SirenSpec(), FitConfig(), MetaConfig()
    c1, t1 = _cpu(), time.perf_counter()
    theta, record = meta_learn_init(targets, coords, init_params(spec, 0), spec, cfg, mcfg)
    c2, t2 = _cpu(), time.perf_counter()
    t_meta = t2 - t1
    res = fit(targets, coords, theta, spec, cfg)
    c3, t_fit = _cpu(), time.perf_counter() - t2
    if out_dir is not None:
        init = save_init(out_dir, theta, spec, record)
        sources = [m.get("source", {}) for m in metas]
        norm = [{k: m[k] for k in m if "percentile" in k or k in ("intensity_lo", "intensity_hi")} for m in metas]
        save_bank(bank_from_fit(spec, init, res, ids, sources, metas, norm, cfg.to_dict()), out_dir)
    scar = [d for d in res.dice_scar if not math.isnan(d)]
    summary = {"cohort": data, "subjects": len(ids), "load_seconds": t_load, "meta_seconds": t_meta,
               "fit_seconds": t_fit, "total_seconds_excl_load": t_meta + t_fit, "threads": threads,
               "meta_cpu_seconds": c2 - c1, "fit_cpu_seconds": c3 - c2,
               "cpu_share": (c3 - c1) / (threads * (t_meta + t_fit)),  # < 1: the machine was shared
               "reached": sum(res.reached), "steps": res.steps, "psnr": res.psnr, "dice_myo": res.dice_myo,
               "dice_scar": res.dice_scar, "min_psnr": min(res.psnr), "min_dice_myo": min(res.dice_myo),
               "min_dice_scar": min(scar) if scar else None, "bank": None if out_dir is None else str(out_dir)}
    print(f"{len(ids)} subjects: load {t_load:.0f} s, meta-init {t_meta:.0f} s, fit {t_fit:.0f} s "
          f"(meta + fit {(t_meta + t_fit) / 60:.1f} min); reached {sum(res.reached)}/{len(ids)}")
    print(f"CPU share of {threads} threads during meta + fit: {summary['cpu_share']:.0%} (other users of the machine)")
    print(f"steps {_dist(res.steps)}  PSNR {_dist(res.psnr)}  Dice myo {_dist(res.dice_myo)}  "
          f"Dice scar {_dist(res.dice_scar)} (min/median/max)")
    return summary


# ----------------------------------------------------------------------------------------- report
def summarise(res: dict, spec, points: int, n_bank: int) -> dict:
    n = len(res["steps"])
    flop = spec.flops_per_point() * res.get("points", points) * res["subject_steps"]
    seconds = res["seconds"]
    if res["method"] == "default":
        meta_flop = spec.flops_per_point() * res["meta_points"] * res["meta_subject_steps"]
        res["seconds_incl_meta_amortised"] = seconds + res["meta_seconds"] * n / n_bank
        res["meta_gflops"] = meta_flop / res["meta_seconds"] / 1e9
    res["gflops"] = flop / seconds / 1e9
    res["cpu_seconds_per_subject"] = (res["cpu_seconds"] + res.get("meta_cpu_seconds", 0.0) * n / n_bank) / n
    res["subjects_per_min"] = n / seconds * 60
    res["subjects_per_min_amortised"] = n / res.get("seconds_incl_meta_amortised", seconds) * 60
    res["gemm_fraction"] = res["gflops"] / res["gemm_fp32_gflops"]
    return res


def _dist(x) -> str:
    x = np.asarray([v for v in x if not (isinstance(v, float) and math.isnan(v))], dtype=float)
    return "n/a" if not len(x) else f"{x.min():.3g}/{np.median(x):.3g}/{x.max():.3g}"


def print_table(rows: list[dict]) -> None:
    head = f"{'method':9} {'subj/min':>9} {'steps min/med/max':>18} {'PSNR min/med/max':>18} {'Dice myo':>17} {'Dice scar':>17} {'reached':>8} {'GFLOP/s':>8} {'GEMM fp32':>9} {'frac':>5} {'RSS MB':>7}"
    print(head)
    print("-" * len(head))
    for r in rows:
        spm = r["subjects_per_min_amortised"]
        print(f"{r['method']:9} {spm:9.2f} {_dist(r['steps']):>18} {_dist(r['psnr']):>18} {_dist(r['dice_myo']):>17} "
              f"{_dist(r['dice_scar']):>17} {sum(r['reached']):>3}/{len(r['reached']):<4} {r['gflops']:8.1f} "
              f"{r['gemm_fp32_gflops']:9.1f} {r['gemm_fraction']:5.2f} {r['maxrss_mb']:7.0f}")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="few subjects, loop capped and extrapolated (minutes)")
    ap.add_argument("--json", type=Path, default=None, help="write results here")
    ap.add_argument("--data", default=None, help="datalist JSON or EMIDEC folder (default: built-in synthetic cohort)")
    ap.add_argument("--subjects", type=int, default=None, help="subjects to time (default 4 quick, 8 otherwise)")
    ap.add_argument("--meta-subjects", type=int, default=None, help="other subjects to meta-learn the init on "
                    "(default: the rest of a 50-subject bank)")
    ap.add_argument("--loop-steps", type=int, default=None, help="cap of loop steps per subject (quick: 50)")
    ap.add_argument("--max-steps", type=int, default=1000)
    ap.add_argument("--points", type=int, default=16384)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--methods", default="loop,batched,default")
    ap.add_argument("--fit-all", action="store_true", help="default pipeline on the whole --data cohort (meta-init + "
                    "fit + bank), timed; no comparison")
    ap.add_argument("--out", type=Path, default=None, help="with --fit-all: write the bank here")
    args = ap.parse_args(argv)
    if args.fit_all:
        if not args.data:
            sys.exit("--fit-all needs --data")
        out = {"fit_all": fit_all(args.data, args.out, args.threads, args.subjects)}
        if args.json:
            from lgesynth.io import write_json

            write_json(args.json, out)
        return out
    n = args.subjects or (4 if args.quick else 8)
    # one init serves one bank: the bank is 50 subjects (the size of the EMIDEC set), the timed ones included
    n_meta = args.meta_subjects or max(50 - n, 2)
    loop_cap = args.loop_steps or (50 if args.quick else args.max_steps)
    from lgesynth.inr import MetaConfig, SirenSpec

    spec = SirenSpec()
    t0 = time.perf_counter()
    if args.data:
        ids, targets, coords, _ = load_cohort(args.data, limit=n + n_meta)
        if len(ids) < n + 2:
            sys.exit(f"{args.data}: need at least {n + 2} cases")
        # timed subjects spread over the cohort (EMIDEC is sorted normal-then-infarct); the rest meta-train
        timed = sorted(set(np.linspace(0, len(ids) - 1, n).round().astype(int).tolist()))
        rest = [i for i in range(len(ids)) if i not in timed]
        data = {"targets": targets[timed], "coords": coords[timed], "meta_targets": targets[rest], "meta_coords": coords[rest]}
        ids = [ids[i] for i in timed]
    else:
        ids, targets = synthetic_cohort(n, seed=0)
        _, meta_targets = synthetic_cohort(n_meta, seed=1)
        data = {"targets": targets, "coords": grid_coords(), "meta_targets": meta_targets, "meta_coords": grid_coords()}
    n_bank = n + data["meta_targets"].shape[0]
    print(f"cohort: {len(ids)} timed subjects + {data['meta_targets'].shape[0]} meta-training subjects "
          f"({args.data or 'synthetic'}), loaded in {time.perf_counter() - t0:.0f} s; threads {args.threads}", flush=True)
    meta = MetaConfig()
    with tempfile.TemporaryDirectory() as tmp:
        data_file = os.path.join(tmp, "cohort.pt")
        torch.save(data, data_file)
        spec_kwargs = {k: v for k, v in spec.to_dict().items() if k != "name"}
        common = {"data_file": data_file, "spec": spec_kwargs, "device": args.device, "points": args.points,
                  "threads": args.threads, "seed": 0, "max_steps": args.max_steps, "batch_size": 8,
                  "loop_cap": loop_cap, "meta": meta.to_dict()}
        rows = {}
        for method in args.methods.split(","):
            t = time.perf_counter()
            rows[method] = summarise(run_method(common | {"method": method}), spec, args.points, n_bank)
            print(f"  {method}: {time.perf_counter() - t:.0f} s wall", flush=True)
    loop = rows.get("loop")
    if loop is not None and "batched" in rows and not all(loop["reached"]):
        # capped loop: same maths as 'batched', so take its steps and extrapolate the loop's time
        loop["extrapolated"] = (f"loop capped at {loop_cap} steps/subject; steps to target taken from the batched run "
                                "(same init, optimiser, lr, sampling), time = measured s/step x those steps")
        loop["measured_steps"] = loop["steps"]
        loop["steps"] = rows["batched"]["steps"]
        loop["psnr"], loop["dice_myo"], loop["dice_scar"] = (rows["batched"][k] for k in ("psnr", "dice_myo", "dice_scar"))
        loop["reached"] = rows["batched"]["reached"]
        measured = loop["seconds"]
        loop["seconds"] = float(sum(s * k for s, k in zip(loop["step_seconds"], loop["steps"])))
        loop["cpu_seconds"] *= loop["seconds"] / measured
        loop["subject_steps"] = sum(loop["steps"])
        summarise(loop, spec, args.points, n_bank)
    print_table(list(rows.values()))
    out = {"cohort": args.data or "synthetic", "subjects": ids, "quick": args.quick, "device": args.device,
           "threads": args.threads, "architecture": spec.to_dict(), "points": args.points,
           "target": {"psnr": 30.0, "dice_myo": 0.95, "dice_scar": 0.90}, "methods": rows}
    if loop is not None:
        for m in ("default", "batched"):
            if m in rows:
                key = "speedup_vs_loop" if m == "default" else "speedup_batched_vs_loop"
                out[key] = rows[m]["subjects_per_min_amortised"] / loop["subjects_per_min"]
                out[key + "_cpu_time"] = loop["cpu_seconds_per_subject"] / rows[m]["cpu_seconds_per_subject"]
                # the machine is shared: wall-time ratio corrected by the GEMM rate measured around each method
                out[key + "_gemm_normalised"] = out[key] * loop["gemm_fp32_gflops"] / rows[m]["gemm_fp32_gflops"]
    if "batched" in rows:
        out["gemm_fraction"] = rows["batched"]["gemm_fraction"]
    if "default" in rows:
        d = rows["default"]
        out["default_gemm_fraction_bf16"] = d["gflops"] / d["gemm_bf16_gflops"]
        out["default_speedup_note"] = (f"default subj/min includes meta-learning ({d['meta_seconds']:.0f} s) amortised "
                                       f"over the {n_bank}-subject cohort it serves; without it: {d['subjects_per_min']:.2f}")
        if loop is not None:
            # meta-learning costs the same for any cohort size (fixed outer x inner x meta-batch steps)
            n = len(d["steps"])
            spm50 = n / (d["seconds"] + d["meta_seconds"] * n / max(50, n_bank)) * 60
            out["speedup_vs_loop_fit_only"] = d["subjects_per_min"] / loop["subjects_per_min"]
            out["speedup_vs_loop_bank50"] = spm50 / loop["subjects_per_min"]
    keys = ("speedup_vs_loop", "speedup_batched_vs_loop", "gemm_fraction", "speedup_vs_loop_cpu_time",
            "speedup_batched_vs_loop_cpu_time", "speedup_vs_loop_fit_only", "speedup_vs_loop_bank50",
            "speedup_vs_loop_gemm_normalised", "speedup_batched_vs_loop_gemm_normalised")
    print(json.dumps({k: round(out[k], 3) for k in keys if k in out}))
    if args.json:
        from lgesynth.io import write_json

        write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
