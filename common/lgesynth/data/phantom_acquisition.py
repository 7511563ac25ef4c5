"""Acquisition of the phantom: rendering planes, slice averaging, PSF, coil field, contrast, noise.

Tissue is rendered on ``SUBSLICES`` planes per slice and averaged over the slice thickness
(through-plane partial volume), then blurred in plane by a Gaussian point-spread function,
multiplied by a smooth coil bias field and a per-slice gain (breath-holds), and given Rician noise.
Every slice has its own small in-plane shift (breath-hold misregistration) of the anatomy that
moves with the heart. The blood and scar signal levels are solved so that the label means of the
acquired image hit the subject's sampled contrast targets (``phantom_params``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from lgesynth.data.labels import compose_label

SUBSLICES = 4                      # rendering planes per slice (through-plane partial volume)


@dataclass
class RenderPlanes:
    """World coordinates (mm, stack frame) of the rendering planes, ``SUBSLICES`` per slice.

    Attributes:
        x: (nx,) and y: (ny,) in-plane voxel centres, centred on the field of view.
        px: (nx, 1, nz * SUBSLICES) and py: (1, ny, nz * SUBSLICES): x and y minus each plane's
            breath-hold shift (the frame of the anatomy that moves with the heart).
        pz: (1, 1, nz * SUBSLICES) plane heights, from 0 at the first slice's lower face.
    """

    x: np.ndarray
    y: np.ndarray
    px: np.ndarray
    py: np.ndarray
    pz: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        """(nx, ny, nz * SUBSLICES) of the rendered tissue volume."""
        return self.x.size, self.y.size, self.pz.shape[2]


def rendering_planes(p: dict) -> RenderPlanes:
    """The planes of subject parameters ``p`` (``shape``, ``spacing_mm``, ``heart.shift_mm``)."""
    nx, ny, nz = p["shape"]
    dxy, _, dz = p["spacing_mm"]
    x = (np.arange(nx) - (nx - 1) / 2) * dxy
    y = (np.arange(ny) - (ny - 1) / 2) * dxy
    zf = (np.arange(nz * SUBSLICES) + 0.5) * dz / SUBSLICES
    shift = np.repeat(np.asarray(p["heart"]["shift_mm"]), SUBSLICES, axis=0)
    px = x[:, None, None] - shift[None, None, :, 0]
    py = y[None, :, None] - shift[None, None, :, 1]
    return RenderPlanes(x, y, px, py, zf[None, None, :])


def stack_affine(planes: RenderPlanes, p: dict) -> np.ndarray:
    """(4, 4) voxel → world (mm) of the acquired stack: diagonal spacing, translation to voxel 0."""
    dxy, _, dz = p["spacing_mm"]
    affine = np.diag([dxy, dxy, dz, 1.0])
    affine[:3, 3] = [planes.x[0], planes.y[0], dz / 2]
    return affine


def slab_average(a: np.ndarray) -> np.ndarray:
    """(nx, ny, nz * SUBSLICES) planes → (nx, ny, nz) float32 mean over each slice's planes."""
    nx, ny, n = a.shape
    return a.reshape(nx, ny, n // SUBSLICES, SUBSLICES).mean(axis=3, dtype=np.float32)


def coil_bias(rng: np.random.Generator, nx: int, ny: int, nz: int) -> np.ndarray:
    """(nx, ny, nz) float32 multiplicative field: smooth receive-coil field (brighter anteriorly,
    +y) times a per-slice gain (breath-holds, ~3 % sd)."""
    xn, yn, zn = (np.linspace(-1, 1, n).reshape(s) for n, s in ((nx, (-1, 1, 1)), (ny, (1, -1, 1)), (nz, (1, 1, -1))))
    log_bias = rng.uniform(0.1, 0.3) * yn + rng.uniform(-0.1, 0.1) * xn + rng.uniform(0, 0.25) * yn ** 2  # anterior coil
    log_bias = log_bias + rng.uniform(-0.1, 0.1) * zn + rng.uniform(0.03, 0.08) * np.cos(
        rng.uniform(1, 3) * xn + rng.uniform(1, 3) * yn + rng.uniform(0, 2 * np.pi))
    return (np.exp(log_bias) * rng.normal(1.0, 0.03, nz)[None, None, :]).astype(np.float32)


def solve_contrast(base, blood_part, scar_part, label, cavity, sig, m):
    """Blood and scar signal levels so that the label means hit the sampled contrast targets.

    The acquired image is linear in them: ``image = base + b * blood_part + s * scar_part``, so the
    mean over a mask M is ``A_M + b B_M + s S_M``; two ratio targets give a 2 x 2 linear system.
    All arrays are (nx, ny, nz); ``m`` is the remote myocardium level. The levels (clipped to
    [1.1, 4] m for blood, [1.1, 6] m for scar) and their ratios to ``m`` are recorded in ``sig``.

    Returns:
        (blood level, scar level), in the units of ``base``.
    """
    remote, scar = label == 1, label == 2
    r_b, r_s = sig["target_blood_remote"], sig["target_scar_remote"]
    mean = lambda a, mask: float(a[mask].mean()) if mask.any() else 0.0  # noqa: E731
    A, B, S = ([mean(a, k) for k in (remote, cavity, scar)] for a in (base, blood_part, scar_part))
    if not scar.any():
        b, s = (r_b * A[0] - A[1]) / (B[1] - r_b * B[0]), 0.0
    else:
        lhs = np.array([[B[1] - r_b * B[0], S[1] - r_b * S[0]], [B[2] - r_s * B[0], S[2] - r_s * S[0]]])
        b, s = np.linalg.solve(lhs, [r_b * A[0] - A[1], r_s * A[0] - A[2]])
    b, s = float(np.clip(b, 1.1 * m, 4.0 * m)), float(np.clip(s, 1.1 * m, 6.0 * m))
    sig.update(blood=b, scar=s, blood_remote=b / m, scar_remote=s / m)
    return b, s


def acquire(rng: np.random.Generator, tissue: np.ndarray, myo: np.ndarray, cavity: np.ndarray,
            scar: np.ndarray, scar_weight: np.ndarray, p: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Turn the rendered planes into the acquired stack and its label.

    Args:
        tissue: (nx, ny, nz * SUBSLICES) float32 signal relative units, NaN where blood; blood
            voxels are set to 0 in place (their level is solved here).
        myo, cavity, scar: (nx, ny, nz * SUBSLICES) bool masks of myocardium, LV cavity and scar.
        scar_weight: (nx, ny, nz * SUBSLICES) float32 scar signal per unit of the solved scar level.
        p: subject parameters; ``p["signal"]`` receives the solved levels.

    Returns:
        image: (nx, ny, nz) float32 magnitude, scanner units (``signal.gain``).
        label: (nx, ny, nz) uint8 in {0, 1, 2}: myocardium where at least half of the slab is
            myocardium, scar where the scar share is at least half of the myocardium share.
        myo_frac: (nx, ny, nz) float32 share of each voxel's slab that is myocardium.
    """
    nx, ny, nz = p["shape"]
    sig = p["signal"]
    is_blood = np.isnan(tissue)
    tissue[is_blood] = 0.0
    myo_frac, scar_frac = slab_average(myo), slab_average(scar)
    label = compose_label(myo_frac >= 0.5, (scar_frac > 0) & (scar_frac >= 0.5 * myo_frac))
    psf = (sig["psf_voxels"], sig["psf_voxels"], 0)
    bias = coil_bias(rng, nx, ny, nz)
    base, blood_part, scar_part = (bias * ndimage.gaussian_filter(slab_average(a), psf)
                                   for a in (tissue, is_blood, scar_weight))
    level_b, level_s = solve_contrast(base, blood_part, scar_part, label, slab_average(cavity) >= 0.5,
                                      sig, sig["remote"])
    image = base + level_b * blood_part + level_s * scar_part
    noise = rng.normal(0.0, sig["noise"], (2,) + image.shape)
    image = (sig["gain"] * np.sqrt((image + noise[0]) ** 2 + noise[1] ** 2)).astype(np.float32)
    return image, label, myo_frac

