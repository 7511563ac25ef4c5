"""Benchmark inr2vec: encode (INR weights -> latent) and decode (latent -> volume on the canonical grid)
throughput in subjects per second, by batch size, fp32 (and with ``--precisions fp32,bf16`` bf16 autocast).

    python benchmarks/inr2vec.py --json /tmp/inr2vec.json                       # random nets, default sizes
    python benchmarks/inr2vec.py --model_dir runs/inr2vec --bank_dir runs/inr_fit --json /tmp/inr2vec.json

- ``encode_per_s``: ``encode_bank`` (eval mode, no grad) on ``batch`` INRs at a time.
- ``decode_per_s``: ``ImplicitDecoder.decode`` of ``batch`` latents on the whole canonical grid
  (96 x 96 x 12 by default, or the trained model's grid), chunked over points as the bundle does; the
  masks' sigmoid and threshold are not timed (negligible).
Without ``--model_dir``: random nets of the train.yaml sizes (SIREN 128 x 4 bank, encoder width 512 depth 3,
decoder 256 x 5, 7 bands) on random SIREN-init weights. Per device (CPU, and CUDA where available). The
machine's fp32 GEMM rate is measured in the same run (``gemm_gflops``): compare ratios, not runs.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
from edm_synth import _sync, add_machine_args, gemm_gflops, machine_devices  # the sibling benchmark's helpers


def random_model(device):
    """Default-size encoder + decoder with random weights, a random bank of 16 SIREN-init INRs, the default grid."""
    from lgesynth.inr.siren import SirenSpec
    from lgesynth.inr2vec import ImplicitDecoder, Inr2VecEncoder, Inr2VecModel, init_std

    torch.manual_seed(0)
    spec = SirenSpec()
    model = Inr2VecModel(Inr2VecEncoder(spec), ImplicitDecoder()).to(device).eval()
    params = [torch.randn(16, *([i, o] if k % 2 == 0 else [o])) * s
              for k, ((i, o), s) in enumerate(zip([d for d in spec.layer_dims for _ in (0, 1)], init_std(spec)))]
    return model, [p.to(device) for p in params], (96, 96, 12), 0.5


def trained_model(model_dir, bank_dir, device):
    from lgesynth.engines.inr2vec_eval import load_trained
    from lgesynth.inr.bank import load_bank

    model = load_trained(model_dir, device=device)
    params = [p.to(device) for p in load_bank(bank_dir).stacked()]
    return model, params, tuple(model.record["grid"]["shape"]), float(model.record["z_extent"])


def timed(fn, repeat: int, device) -> float:
    """Seconds per call (one warm-up call first)."""
    fn()
    _sync(device)
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    _sync(device)
    return (time.perf_counter() - t) / repeat


def throughput(model, params, shape, z_extent: float, batch: int, bf16: bool, device, repeat: int) -> dict:
    from lgesynth.data.canonical_coords import canonical_coords
    from lgesynth.inr2vec import encode_bank

    n = params[0].shape[0]
    rows = torch.arange(batch) % n
    bank = [p[rows] for p in params]
    coords = canonical_coords(shape, z_extent).to(device)
    autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with torch.no_grad(), autocast:
        z = encode_bank(model.encoder, bank, batch_size=batch)
        t_enc = timed(lambda: encode_bank(model.encoder, bank, batch_size=batch), repeat, device)
        t_dec = timed(lambda: model.decoder.decode(coords, z), 1, device)
    return {"batch": batch, "bf16": bf16, "encode_per_s": batch / t_enc, "decode_per_s": batch / t_dec}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model_dir", default=None, help="a trained inr2vec output (needs --bank_dir too)")
    p.add_argument("--bank_dir", default=None)
    p.add_argument("--batches", default="1,8,32", help="subjects per call")
    p.add_argument("--precisions", default="fp32", help="comma list of fp32, bf16 (autocast); the bundle decodes in fp32")
    p.add_argument("--repeat", type=int, default=3, help="timed encode calls per setting")
    add_machine_args(p)
    args = p.parse_args(argv)
    devices = machine_devices(args)
    out = {"model_dir": args.model_dir, "bank_dir": args.bank_dir, "threads": torch.get_num_threads(), "devices": {}}
    for device in devices:
        model, params, shape, z_extent = (trained_model(args.model_dir, args.bank_dir, device) if args.model_dir
                                          else random_model(device))
        rows = [throughput(model, params, shape, z_extent, int(b), bf16, device, args.repeat)
                for b in args.batches.split(",") for bf16 in [x == "bf16" for x in args.precisions.split(",")]]
        out["devices"][device] = {"gemm_gflops": gemm_gflops(device), "grid": list(shape), "rows": rows}
        print(f"\n{device}: GEMM {out['devices'][device]['gemm_gflops']:.0f} GFLOP/s, grid {'x'.join(map(str, shape))}")
        print(f"{'batch':>5} {'precision':>9} {'encode subjects/s':>18} {'decode subjects/s':>18}")
        for r in rows:
            print(f"{r['batch']:5d} {'bf16' if r['bf16'] else 'fp32':>9} {r['encode_per_s']:18.1f} {r['decode_per_s']:18.3f}")
    if args.json:
        from lgesynth.io import write_json

        write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
