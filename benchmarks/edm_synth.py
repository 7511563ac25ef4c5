"""Benchmark edm_synth sampling: samples/s by number of Heun steps, latents alone and decoded volumes, and
(with a trained bundle) quality against steps.

    python benchmarks/edm_synth.py --json /tmp/edm_synth.json                  # quick: random nets, default sizes
    python benchmarks/edm_synth.py --bundle bundles/edm_synth/models --samples 64 --json /tmp/edm_q.json

Per device (CPU, and CUDA where available) and per ``--steps`` (default 8, 18, 32, 64):
- ``latents_per_s``: deterministic Heun (Algorithm 2, 2N - 1 denoiser calls) on a batch of ``--batch``
  latents, unconditional (CFG doubles the calls).
- ``volumes_per_s``: sampling + decoding on the canonical grid (decoding is timed once per device, on
  ``--decode`` latents, and does not depend on the steps): ``1 / (1 / latents_per_s + 1 / decode_per_s)``.
- ``ode_error``: RMS distance (standardised latent space) of the N-step result from a 128-step solution
  from the same noise: the discretisation error of the sampler.
With ``--bundle`` (a trained models folder): the generator's own nets, and per steps value a cohort of
``--samples`` decoded samples scored against the bundle's training-cohort stats: ``plausible_fraction``
and the KS statistic per feature (``synth.report``). Without it: random nets of the default sizes
(train.yaml: 512-d, hidden 1024, 4 blocks; inr2vec decoder 256 x 5, 7 bands) on a 96 x 96 x 12 grid.
The machine's fp32 GEMM rate is measured in the same run (``gemm_gflops``): compare ratios, not runs.
"""

from __future__ import annotations

import argparse
import time

import torch


def gemm_gflops(device, n: int = 1024, repeat: int = 10) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    _sync(device)
    t = time.perf_counter()
    for _ in range(repeat):
        a @ b
    _sync(device)
    return 2 * n ** 3 * repeat / (time.perf_counter() - t) / 1e9


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def add_machine_args(p: argparse.ArgumentParser) -> None:
    """``--threads``, ``--devices``, ``--json``: the options every benchmark here shares."""
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--devices", default=None, help="comma list; default cpu (+ cuda when available)")
    p.add_argument("--json", default=None)


def machine_devices(args) -> list[str]:
    """Set ``--threads`` and return the devices to measure on."""
    if args.threads:
        torch.set_num_threads(args.threads)
    return args.devices.split(",") if args.devices else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def random_generator(device):
    """Nets of the default sizes with random weights (output layers perturbed so F is not zero)."""
    from lgesynth.data.canonical_coords import canonical_coords
    from lgesynth.edm import EDMPrecond, LatentDenoiser
    from lgesynth.inr2vec.decoder import ImplicitDecoder

    torch.manual_seed(0)
    den = LatentDenoiser(dim=512, hidden=1024, blocks=4)
    torch.nn.init.normal_(den.output.weight, std=0.01)
    net = EDMPrecond(den, 1.0).to(device).eval()
    dec = ImplicitDecoder(512, 256, 5, 7).to(device).eval()
    shape = (96, 96, 12)
    return {"net": net, "decoder": dec, "shape": shape, "coords": canonical_coords(shape, 0.5), "gen": None}


def bundle_generator(models_dir, device):
    from lgesynth.synth.generate import Generator, canonical_grid

    gen = Generator(models_dir, device)
    shape, _, coords = canonical_grid(gen.record)
    return {"net": gen.net, "decoder": gen.decoder, "shape": shape, "coords": coords, "gen": gen}


@torch.no_grad()
def time_sampling(net, noise, steps: int, cond=None) -> tuple[float, torch.Tensor]:
    from lgesynth.edm import edm_sampler

    _sync(noise.device)
    t = time.perf_counter()
    z = edm_sampler(net, noise, num_steps=steps, cond=cond)
    _sync(noise.device)
    return time.perf_counter() - t, z


def time_decoding(g, n: int, device) -> float:
    from lgesynth.synth.generate import decode_latents

    w = torch.randn(n, 512 if g["gen"] is None else g["gen"].dim, device=device) * 0.1
    list(decode_latents(g["decoder"], w[:1], g["coords"], g["shape"], 1))  # warm-up
    _sync(device)
    t = time.perf_counter()
    for _ in decode_latents(g["decoder"], w, g["coords"], g["shape"], batch=min(n, 4)):
        pass
    _sync(device)
    return n / (time.perf_counter() - t)


def quality(g, steps: int, samples: int, seed: int = 0) -> dict:
    """plausible_fraction and KS statistics of ``samples`` decoded samples at ``steps`` (bundle only)."""
    from lgesynth.io import spacing_from_affine
    from lgesynth.synth.generate import canonical_grid, decode_latents
    from lgesynth.synth.report import CohortStats, quality_report

    gen = g["gen"]
    cond, _ = gen.conditions(samples, seed=seed)
    w = gen.sample(samples, seed=seed, num_steps=steps, cond=cond)
    shape, affine, coords = canonical_grid(gen.record)
    stats = CohortStats(shape, latents=w)
    for rows, images, labels in decode_latents(gen.decoder, w, coords, shape):
        for r, image, label in zip(rows, images, labels):
            stats.add(f"s{r}", image, label, spacing_from_affine(affine))
    report = quality_report(stats, CohortStats.load(gen.models_dir), gen.standardizer.cpu())
    return {"plausible_fraction": report["plausible_fraction"], "copies_flagged": report["copies_flagged"],
            **{f"ks_{k}": v["ks_statistic"] for k, v in report["features"].items()}}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", default="8,18,32,64")
    p.add_argument("--batch", type=int, default=64, help="latents sampled together for the timing")
    p.add_argument("--decode", type=int, default=2, help="latents decoded for the timing")
    p.add_argument("--bundle", default=None, help="a trained edm_synth models folder: its nets, and quality vs steps")
    p.add_argument("--samples", type=int, default=32, help="decoded samples per steps value for quality (--bundle)")
    add_machine_args(p)
    args = p.parse_args(argv)
    devices = machine_devices(args)
    steps_list = [int(s) for s in args.steps.split(",")]
    out = {"steps": steps_list, "batch": args.batch, "bundle": args.bundle, "threads": torch.get_num_threads(), "devices": {}}
    for device in devices:
        g = bundle_generator(args.bundle, device) if args.bundle else random_generator(device)
        dim = g["gen"].dim if g["gen"] else 512
        noise = torch.randn(args.batch, dim, generator=torch.Generator().manual_seed(0)).to(device)
        cond = None
        if g["gen"] is not None and g["gen"].cond_dim:
            cond = g["gen"].conditions(args.batch)[0].to(device)
        res = {"gemm_gflops": gemm_gflops(device)}
        time_sampling(g["net"], noise[:2], 2, None if cond is None else cond[:2])  # warm-up
        _, z_ref = time_sampling(g["net"], noise, 128, cond)
        res["decode_per_s"] = time_decoding(g, args.decode, device)
        rows = []
        for steps in steps_list:
            seconds, z = time_sampling(g["net"], noise, steps, cond)
            lat = args.batch / seconds
            row = {"steps": steps, "latents_per_s": lat, "volumes_per_s": 1 / (1 / lat + 1 / res["decode_per_s"]),
                   "ode_error": float((z - z_ref).pow(2).mean().sqrt())}
            if g["gen"] is not None and device == devices[0]:
                row.update(quality(g, steps, args.samples))
            rows.append(row)
        res["rows"] = rows
        out["devices"][device] = res
        print(f"\n{device}: GEMM {res['gemm_gflops']:.0f} GFLOP/s, decode {res['decode_per_s']:.2f} volumes/s "
              f"({'x'.join(map(str, g['shape']))})")
        keys = [k for k in rows[0] if k != "steps"]
        print("steps " + " ".join(f"{k:>22}" for k in keys))
        for r in rows:
            print(f"{r['steps']:5d} " + " ".join(f"{r[k]:22.4g}" if isinstance(r[k], (int, float)) and r[k] is not None
                                                 else f"{str(r[k]):>22}" for k in keys))
    if args.json:
        from lgesynth.io import write_json

        write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
