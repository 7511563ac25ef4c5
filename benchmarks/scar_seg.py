"""Benchmark scar_seg: training iterations/s and sliding-window inference seconds per volume (one pass, mirrored).

    python benchmarks/scar_seg.py --json /tmp/scar_seg.json                  # smoke, cpu, nnunet; ~1-2 min
    python benchmarks/scar_seg.py --datalist runs/phantom/datalist.json --configs cpu --steps 5
    python benchmarks/scar_seg.py --plan runs/experiment/plan.json --configs plan

Networks (``--configs``, comma-separated):
- ``smoke``, ``cpu``: the DynUNet that ``lgesynth.seg.make_plan`` plans with that preset for a cohort:
  ``--datalist`` (its training fingerprint), or by default a typical LGE cohort (median 160 x 160 x 12
  voxels at 1.47 x 1.47 x 7.3 mm, the 10-subject phantom of the bundle README);
- ``nnunet``: nnU-Net's width (32...320 filters) at patch 96 x 96 x 8, batch 2, the reference the plan's
  cost model was calibrated on (cost_model.MEASURED);
- ``plan``: the plan file given with ``--plan``.
Training step: what the bundle does per iteration: forward with deep supervision, Dice + CE on every
head (the bundle's loss), backward, SGD (Nesterov); random data of the plan's batch and patch; the
first ``--warmup`` steps are not timed; min and median of ``--steps``. Inference: MONAI's sliding
window (2D plans: slice by slice) with the bundle's settings (overlap 0.5, Gaussian) over one volume
of the cohort's median resampled shape, eval mode, no grad; min and median of ``--repeats``; once as
one pass and once with the configs' default test-time mirroring (``mirror_axes`` [0, 1]: 4 passes). Devices:
cpu, plus cuda when available (``--devices``). The machine is shared: the fp32 GEMM rate and the load
average are measured before and after in the same run; compare rows within one run, not across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

TYPICAL_COHORT = ((1.47, 1.47, 7.3), (160, 160, 12))  # median spacing (mm), median shape
NNUNET_REFERENCE = {"base_filters": 32, "patch": [96, 96, 8], "batch": 2}


# --------------------------------------------------------------------------------------- plans
def plans(configs: list[str], datalist: str | None, plan_path: str | None) -> dict[str, dict]:
    """``{name: plan in the bundle's slice-last frame}`` for the requested configurations."""
    from lgesynth.seg.data import slice_last_plan
    from lgesynth.seg.cost_model import seconds_per_iteration
    from lgesynth.seg.plan import load_plan, make_plan

    source = TYPICAL_COHORT
    if datalist:
        from lgesynth.data.fingerprint import fingerprint

        source = fingerprint(datalist, "training")
    cohort_volume = _volume_shape(make_plan(source, preset="smoke"))
    out = {}
    for name in configs:
        if name in ("smoke", "cpu"):
            plan = make_plan(source, preset=name)
            out[name] = slice_last_plan(plan) | {"volume_shape": cohort_volume}
        elif name == "nnunet":
            # a cohort whose median is the reference patch: the paper preset keeps its full width and patch
            plan = make_plan((TYPICAL_COHORT[0], NNUNET_REFERENCE["patch"]), preset="paper", dims=3)
            assert plan["patch_size"] == NNUNET_REFERENCE["patch"] and plan["network"]["filters"][0] == 32, plan["patch_size"]
            plan["batch_size"] = NNUNET_REFERENCE["batch"]
            plan["budget"]["seconds_per_iteration"] = seconds_per_iteration(2, plan["patch_size"], 32)
            out[name] = slice_last_plan(plan) | {"volume_shape": cohort_volume}
        elif name == "plan":
            if not plan_path:
                raise SystemExit("--configs plan needs --plan PATH")
            plan = load_plan(plan_path)
            out[name] = slice_last_plan(plan) | {"volume_shape": _volume_shape(plan)}
        else:
            raise SystemExit(f"unknown configuration {name!r}: choose from smoke, cpu, nnunet, plan")
    return out


def _volume_shape(plan: dict) -> list[int]:
    """The cohort's median shape at the target spacing, slice axis last (the frame the bundle infers in)."""
    shape = list(plan["median_shape_resampled"])
    axis = int(plan["slice_axis"])
    return [shape[a] for a in range(3) if a != axis] + [shape[axis]]


# --------------------------------------------------------------------------------------- timing
def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def gemm_gflops(device: str = "cpu", n: int = 1024, seconds: float = 0.5) -> float:
    """fp32 matrix-multiply rate (GFLOP/s) of this machine now."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    _sync(device)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    _sync(device)
    return 2 * n ** 3 * count / (time.perf_counter() - start) / 1e9


def train_step_seconds(plan: dict, device: str, steps: int, warmup: int, seed: int = 0) -> list[float]:
    """Wall seconds of ``steps`` bundle-like training iterations (module doc), after ``warmup``."""
    from monai.losses import DeepSupervisionLoss, DiceCELoss

    from lgesynth.seg.engine_utils import DeepSupervisionHeads
    from lgesynth.seg.network import build_dynunet

    torch.manual_seed(seed)
    net = build_dynunet(plan).to(device).train()
    loss_fn = DeepSupervisionHeads(DeepSupervisionLoss(
        DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True, smooth_nr=1e-5, smooth_dr=1e-5),
        weights=plan["deep_supervision_weights"]))
    optimiser = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.99, nesterov=True, weight_decay=3e-5)
    shape = (plan["batch_size"], 1, *plan["patch_size"])
    image = torch.randn(shape, device=device)
    label = torch.randint(0, 3, (shape[0], 1, *shape[2:]), device=device)
    times = []
    for i in range(warmup + steps):
        _sync(device)
        start = time.perf_counter()
        optimiser.zero_grad(set_to_none=True)
        loss = loss_fn(net(image), label)
        loss.backward()
        optimiser.step()
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def inference_seconds(plan: dict, device: str, repeats: int, mirror_axes=()) -> list[float]:
    """Wall seconds of sliding-window inference over one volume of ``plan["volume_shape"]``
    (with ``mirror_axes``: the mean over those flips, as the bundle's configs infer by default)."""
    from lgesynth.seg.engine_utils import plan_inferer
    from lgesynth.seg.network import build_dynunet

    net = build_dynunet(plan).to(device).eval()
    inferer = plan_inferer(plan, overlap=0.5, mode="gaussian", mirror_axes=mirror_axes)
    volume = torch.randn(1, 1, *plan["volume_shape"], device=device)
    times = []
    with torch.no_grad():
        for i in range(repeats + 1):  # the first is a warm-up
            _sync(device)
            start = time.perf_counter()
            inferer(volume, net)
            _sync(device)
            if i:
                times.append(time.perf_counter() - start)
    return times


def machine() -> dict:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "processor": platform.processor() or platform.machine(),
            "load_average": [round(x, 2) for x in load] if load else None,
            "gemm_fp32_gflops": round(gemm_gflops(), 1)}


def benchmark(plan: dict, name: str, device: str, steps: int, warmup: int, repeats: int) -> dict:
    train = train_step_seconds(plan, device, steps, warmup)
    infer = inference_seconds(plan, device, repeats)
    mirrored = inference_seconds(plan, device, repeats, mirror_axes=(0, 1))
    net = plan["network"]
    return {"config": name, "device": device, "dims": net["spatial_dims"], "patch": plan["patch_size"],
            "batch": plan["batch_size"], "filters": f"{net['filters'][0]}..{net['filters'][-1]}",
            "train_seconds_per_iteration_min": round(min(train), 4),
            "train_seconds_per_iteration_median": round(statistics.median(train), 4),
            "train_iterations_per_second": round(1.0 / statistics.median(train), 3),
            "predicted_seconds_per_iteration": round(plan["budget"]["seconds_per_iteration"], 4),
            "volume_shape": plan["volume_shape"],
            "inference_seconds_per_volume_min": round(min(infer), 4),
            "inference_seconds_per_volume_median": round(statistics.median(infer), 4),
            "inference_mirrored_seconds_per_volume_median": round(statistics.median(mirrored), 4),
            "steps": steps, "repeats": repeats}


def print_table(rows: list[dict]) -> None:
    head = f"{'config':<8}{'device':<7}{'dims':>4} {'patch':<14}{'batch':>5} {'filters':<9}" \
           f"{'s/it min':>9}{'s/it med':>9}{'it/s':>7}{'predicted':>10} {'volume':<14}{'infer s':>8}{'mirrored s':>11}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['config']:<8}{r['device']:<7}{r['dims']:>4} {'x'.join(map(str, r['patch'])):<14}{r['batch']:>5} "
              f"{r['filters']:<9}{r['train_seconds_per_iteration_min']:>9.3f}{r['train_seconds_per_iteration_median']:>9.3f}"
              f"{r['train_iterations_per_second']:>7.2f}{r['predicted_seconds_per_iteration']:>10.3f} "
              f"{'x'.join(map(str, r['volume_shape'])):<14}{r['inference_seconds_per_volume_median']:>8.3f}"
              f"{r['inference_mirrored_seconds_per_volume_median']:>11.3f}")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="smoke,cpu,nnunet", help="comma-separated: smoke, cpu, nnunet, plan")
    parser.add_argument("--datalist", help="plan smoke/cpu from this datalist's training section")
    parser.add_argument("--plan", help="a plan.json for --configs plan")
    parser.add_argument("--devices", default=None, help="comma-separated (default: cpu, and cuda when available)")
    parser.add_argument("--steps", type=int, default=3, help="timed training iterations per configuration")
    parser.add_argument("--warmup", type=int, default=1, help="untimed training iterations first")
    parser.add_argument("--repeats", type=int, default=1, help="timed inference passes per configuration")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.devices.split(",") if args.devices else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    chosen = plans([c.strip() for c in args.configs.split(",") if c.strip()], args.datalist, args.plan)
    before = machine()
    print(f"machine: {before}", flush=True)
    rows = []
    for device in devices:
        for name, plan in chosen.items():
            rows.append(benchmark(plan, name, device, args.steps, args.warmup, args.repeats))
            print(f"  {name} on {device}: {rows[-1]['train_seconds_per_iteration_median']:.3f} s/iteration, "
                  f"{rows[-1]['inference_seconds_per_volume_median']:.3f} s/volume "
                  f"({rows[-1]['inference_mirrored_seconds_per_volume_median']:.3f} mirrored)", flush=True)
    after = {k: v for k, v in machine().items() if k in ("load_average", "gemm_fp32_gflops")}
    print()
    print_table(rows)
    print(f"\nfp32 GEMM {before['gemm_fp32_gflops']} -> {after['gemm_fp32_gflops']} GFLOP/s; runnable processes "
          f"(1/5/15-min means) {before['load_average']} -> {after['load_average']} (predicted: the plan's cost model for an idle 2-core CPU)")
    result = {"machine_before": before, "machine_after": after,
              "cohort": args.datalist or {"median_spacing_mm": TYPICAL_COHORT[0], "median_shape": TYPICAL_COHORT[1]},
              "rows": rows, "argv": sys.argv[1:] if argv is None else list(argv)}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
