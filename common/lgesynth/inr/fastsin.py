"""A fused sin + cos kernel for the fitting path: one pass over the pre-activations.

Profiling the bf16 fitting step showed the elementwise work (``torch.sin`` and ``torch.cos`` at ~1-2 ns
per element and core, then a multiply) costing about three times the GEMMs. This kernel computes both
in one pass: Cody-Waite reduction by pi/2 and minimax polynomials on [-pi/4, pi/4] (abs. error ~1e-7,
far below bf16's 4e-3), fp32 or bf16 in and out. It is a few lines of C compiled once with the system
compiler into ``~/.cache/lgesynth`` (keyed by source and CPU) and called through ctypes, which releases
the GIL, so the two halves of a tensor run on two threads. No compiler, or ``LGESYNTH_FASTSIN=0``:
``available()`` is False and callers use torch's sin/cos.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

_SOURCE = r"""
#include <stdint.h>
#include <string.h>
static inline float bf2f(uint16_t b) { uint32_t u = ((uint32_t)b) << 16; float f; memcpy(&f, &u, 4); return f; }
static inline uint16_t f2bf(float f) { uint32_t u; memcpy(&u, &f, 4); u += 0x7FFFu + ((u >> 16) & 1u); return (uint16_t)(u >> 16); }
static inline uint32_t bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float from_bits(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
/* Branch-free, so that GCC vectorises the loops below (AVX2: 8 lanes); quadrant swaps and signs are bit masks. */
static inline void sc(float x, float *s, float *c) {
    float k = (x * 0.63661977236758134f + 12582912.0f) - 12582912.0f;  /* round(x / (pi/2)), |x| < 2^22 */
    float r = x - k * 1.5707963705062866f;                           /* Cody-Waite, two parts of pi/2 */
    r = r - k * (-4.3711388286737929e-08f);
    float r2 = r * r;
    float sr = r + r * r2 * (-1.6666654611e-1f + r2 * (8.3321608736e-3f + r2 * (-1.9515295891e-4f)));
    float cr = 1.0f + r2 * (-0.5f + r2 * (4.166664568298827e-2f + r2 * (-1.388731625493765e-3f + r2 * 2.443315711809948e-5f)));
    uint32_t q = (uint32_t)(int32_t)k;
    uint32_t odd = 0u - (q & 1u);                                    /* all ones in odd quadrants */
    uint32_t su = bits(sr), cu = bits(cr);
    uint32_t s0 = (su & ~odd) | (cu & odd), c0 = (cu & ~odd) | (su & odd);
    *s = from_bits(s0 ^ ((q & 2u) << 30));
    *c = from_bits(c0 ^ (((q + 1u) & 2u) << 30));
}
#define LD_0(p, i) (((const float *)(p))[i])
#define LD_1(p, i) bf2f(((const uint16_t *)(p))[i])
#define ST_0(p, i, v) (((float *)(p))[i] = (v))
#define ST_1(p, i, v) (((uint16_t *)(p))[i] = f2bf(v))
/* Per block of a row: load (+ bias) into a local array, sin/cos into local arrays, then store; the locals do not
   alias, so every loop vectorises, and c_out may be z (a block is read completely before it is written). */
#define BLK 256
#define LOOP(ZT, ST, CT) \
    static void loop_##ZT##ST##CT(const void *z, void *s_out, void *c_out, int64_t r0, int64_t r1, int64_t w, \
                                  const float *bias, int64_t rows_per_bias, float scale) { \
        float xs[BLK], ss[BLK], cs[BLK]; \
        for (int64_t r = r0; r < r1; ++r) { \
            const float *b = bias + (r / rows_per_bias) * w; \
            for (int64_t k0 = 0; k0 < w; k0 += BLK) { \
                const int64_t j0 = r * w + k0, n = (w - k0) < BLK ? (w - k0) : BLK; \
                for (int64_t k = 0; k < n; ++k) xs[k] = LD_##ZT(z, j0 + k) + scale * b[k0 + k]; \
                for (int64_t k = 0; k < n; ++k) sc(xs[k], &ss[k], &cs[k]); \
                for (int64_t k = 0; k < n; ++k) ST_##ST(s_out, j0 + k, ss[k]); \
                for (int64_t k = 0; k < n; ++k) ST_##CT(c_out, j0 + k, cs[k]); } } }
LOOP(0,0,0) LOOP(0,0,1) LOOP(0,1,0) LOOP(0,1,1) LOOP(1,0,0) LOOP(1,0,1) LOOP(1,1,0) LOOP(1,1,1)
/* Rows [r0, r1) of width w: x = z + scale * bias[row / rows_per_bias] (bias fp32 (groups, w));
   s_out = sin(x); c_out = cos(x) (c_out may alias z: each element is read before it is written).
   dtype flags: 0 float32, 1 bfloat16. */
void sincos(const void *z, void *s_out, void *c_out, int64_t r0, int64_t r1, int64_t w, const float *bias,
            int64_t rows_per_bias, float scale, int zt, int st, int ct) {
    static void (*const f[8])(const void *, void *, void *, int64_t, int64_t, int64_t, const float *, int64_t, float) = {
        loop_000, loop_001, loop_010, loop_011, loop_100, loop_101, loop_110, loop_111};
    f[zt * 4 + st * 2 + ct](z, s_out, c_out, r0, r1, w, bias, rows_per_bias, scale);
}
"""

_DTYPES = {torch.float32: 0, torch.bfloat16: 1}
_lib = None
_tried = False
_pool: ThreadPoolExecutor | None = None
_pool_threads = 0  # workers of _pool


def _cpu_key() -> str:
    try:
        flags = next((ln for ln in open("/proc/cpuinfo") if ln.startswith("flags")), "")
    except OSError:
        flags = ""
    return hashlib.sha256((_SOURCE + platform.machine() + flags).encode()).hexdigest()[:16]


def _load():
    global _lib, _tried
    if _tried:
        return _lib
    _tried = True
    if os.environ.get("LGESYNTH_FASTSIN", "1") == "0":
        return None
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        return None
    cache = Path(os.environ.get("LGESYNTH_CACHE", Path.home() / ".cache" / "lgesynth"))
    so = cache / f"fastsin_{_cpu_key()}.so"
    try:
        if not so.exists():
            cache.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=cache) as tmp:
                src = Path(tmp) / "fastsin.c"
                src.write_text(_SOURCE)
                out = Path(tmp) / so.name
                subprocess.run([cc, "-O3", "-march=native", "-fno-math-errno", "-shared", "-fPIC", str(src), "-o", str(out)],
                               check=True, capture_output=True, timeout=120)
                os.replace(out, so)
        lib = ctypes.CDLL(str(so))
        lib.sincos.argtypes = ([ctypes.c_void_p] * 3 + [ctypes.c_int64] * 3 + [ctypes.c_void_p, ctypes.c_int64, ctypes.c_float]
                               + [ctypes.c_int] * 3)
        lib.sincos.restype = None
        _lib = lib
    except (OSError, subprocess.SubprocessError):
        _lib = None
    return _lib


def available() -> bool:
    """True when the compiled kernel can be used (CPU tensors only)."""
    return _load() is not None


def sincos(z: torch.Tensor, s_out: torch.Tensor, c_out: torch.Tensor, bias: torch.Tensor | None = None,
           scale: float = 1.0) -> None:
    """``x = z + scale * bias``; ``s_out = sin(x)``, ``c_out = cos(x)`` in one pass; ``c_out`` may be ``z``.

    Args:
        z, s_out, c_out: ``(subjects, points, width)`` contiguous CPU tensors, fp32 or bf16 (independently).
        bias: ``(subjects, width)`` fp32 or None.
    Falls back to torch when the kernel is unavailable or the tensors do not fit its contract.
    """
    lib = _load()
    tensors = (z, s_out, c_out)
    ok = (lib is not None and z.device.type == "cpu" and z.dim() == 3
          and all(t.is_contiguous() and t.dtype in _DTYPES and t.shape == z.shape for t in tensors)
          and (bias is None or (bias.dtype == torch.float32 and bias.is_contiguous() and bias.shape == (z.shape[0], z.shape[2]))))
    if not ok:
        x = z if bias is None else z.float() + scale * bias.float().unsqueeze(1)
        torch.sin(x, out=s_out)
        torch.cos(x, out=c_out)
        return
    B, P, W = z.shape
    rows = B * P
    if bias is None:
        bias = torch.zeros(B, W)
    args = [W, bias.data_ptr(), P, float(scale)] + [_DTYPES[t.dtype] for t in tensors]
    ptrs = [t.data_ptr() for t in tensors]
    threads = max(1, torch.get_num_threads())
    if threads == 1 or rows * W < 1 << 16:
        lib.sincos(*ptrs, 0, rows, *args)
        return
    global _pool, _pool_threads
    if _pool is None or _pool_threads != threads:
        _pool, _pool_threads = ThreadPoolExecutor(threads), threads
    step = -(-rows // threads)
    futures = [_pool.submit(lib.sincos, *ptrs, r0, min(r0 + step, rows), *args) for r0 in range(0, rows, step)]
    for f in futures:
        f.result()
