"""Anatomy of the phantom: tissue signals painted on the rendering planes (all lengths in mm).

The LV is the shell between two truncated ellipsoids (endo- and epicardium; base cut at
``u = 0``, apex at ``u = lv_length``) with a slight radial ripple; the wall thins from the base
towards the apex. RV: crescent of blood with a thin free wall wrapped around the septum. Papillary
muscles (dark, label 0), epicardial fat (thicker in the AV and interventricular grooves), LA and
aortic root above the base, chest wall with subcutaneous fat, lungs, liver (apical slices), spine
and descending aorta. Signals are relative units (fat 1, others × the remote level ``m``); blood
is painted as ``BLOOD`` (NaN), its level is solved at acquisition (``phantom_acquisition``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from lgesynth.data.phantom_acquisition import SUBSLICES, RenderPlanes

BLOOD = np.nan  # marks blood; its signal is solved for the contrast target at acquisition


def wrap_angle(angle):
    """Angle difference wrapped to [-pi, pi)."""
    return (angle + np.pi) % (2 * np.pi) - np.pi


def ellipsoid(a, b, u, axes, center=(0.0, 0.0, 0.0)):
    """Squared ellipsoidal radius of points (a, b, u) mm for semi-axes ``axes`` mm around ``center``."""
    return ((a - center[0]) / axes[0]) ** 2 + ((b - center[1]) / axes[1]) ** 2 + ((u - center[2]) / axes[2]) ** 2


def _lobe(rng, dx, dy, ax_x, ax_y, amp):
    """Squared radius of an ellipse (semi-axes mm) with a random low-order radial ripple of ``amp``."""
    ang = np.arctan2(dy / ax_y, dx / ax_x)
    wobble = 1 + sum(rng.uniform(-amp, amp) * np.cos(k * ang + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4))
    return ((dx / ax_x) ** 2 + (dy / ax_y) ** 2) / wobble ** 2


def _paint(img, mask, value):
    img[np.broadcast_to(mask, img.shape)] = value


def paint_torso(rng: np.random.Generator, img: np.ndarray, planes: RenderPlanes, p: dict) -> None:
    """Paint, in place, the chest around the heart: outline with subcutaneous fat, chest wall
    muscle, lungs, liver, tissue texture, spine and descending aorta.

    Args:
        img: (nx, ny, nz * SUBSLICES) float32 tissue signal, zeros (air) on entry.
        planes: the rendering planes; the chest is fixed to the stack (no breath-hold shift) and
            placed relative to the LV centre ``p["heart"]["center_mm"]``.
    """
    h, sig = p["heart"], p["signal"]
    m = sig["remote"]
    c = np.asarray(h["center_mm"])
    X, Y, pz = planes.x[:, None, None], planes.y[None, :, None], planes.pz
    bc = c[:2] + np.array([-rng.uniform(20, 45), -rng.uniform(35, 55)])
    bax = np.array([rng.uniform(140, 175), rng.uniform(110, 135)])
    rx, ry = X - bc[0], Y - bc[1]
    subcut, chest = rng.uniform(6, 22), rng.uniform(10, 20)
    _paint(img, _lobe(rng, rx, ry, *bax, 0.03) <= 1, sig["fat"])
    _paint(img, _lobe(rng, rx, ry, *(bax - subcut), 0.05) <= 1, sig["muscle_remote"] * m)
    thorax = _lobe(rng, rx, ry, *(bax - subcut - chest), 0.03) <= 1
    for side, dx0 in ((1, rng.uniform(50, 70)), (-1, rng.uniform(70, 95))):  # left lung (lateral to the LV), right lung
        lung = _lobe(rng, X - c[0] - side * dx0, Y - c[1] + rng.uniform(0, 30), rng.uniform(40, 55),
                     rng.uniform(60, 80), 0.06) + ((pz + 40) / rng.uniform(100, 130)) ** 2 <= 1
        _paint(img, lung & thorax, sig["lung_remote"] * m)
    liver = _lobe(rng, X - c[0] + rng.uniform(50, 80), Y - c[1] + rng.uniform(20, 50), 95, 75, 0.04) \
        + ((pz - h["lv_length_mm"] - rng.uniform(30, 55)) / 75) ** 2 <= 1
    _paint(img, liver & thorax, sig["liver_remote"] * m)
    nx, ny, nz = p["shape"]
    texture = ndimage.gaussian_filter(rng.normal(size=(nx, ny, nz)).astype(np.float32), (3, 3, 0.5))
    img *= 1 + sig["texture"] * np.repeat(texture / texture.std(), SUBSLICES, axis=2)
    spine_c = bc + np.array([0.0, -(bax[1] - subcut - rng.uniform(20, 30))])
    _paint(img, np.hypot(X - spine_c[0], Y - spine_c[1]) <= rng.uniform(15, 20), sig["spine_remote"] * m)
    aorta_c = spine_c + np.array([rng.uniform(15, 30), rng.uniform(20, 30)])
    _paint(img, np.hypot(X - aorta_c[0], Y - aorta_c[1]) <= rng.uniform(9, 13), BLOOD)


@dataclass
class HeartFrame:
    """Heart coordinates of the rendering planes inside an in-plane box around the heart.

    Attributes:
        box: (slice over x, slice over y) of the rendered volume holding the heart.
        a, b, u: (bx, by, nz * SUBSLICES) mm along e_a (septum), e_b (anterior), e_u (base → apex).
        phi: (bx, by, nz * SUBSLICES) AHA angle atan2(b, a), rad: 0 mid-septum, +pi/2 anterior.
        rho_endo, rho_epi: (bx, by, nz * SUBSLICES) rippled ellipsoidal radii of endo- and
            epicardium (1 on the surface).
    """

    box: tuple[slice, slice]
    a: np.ndarray
    b: np.ndarray
    u: np.ndarray
    phi: np.ndarray
    rho_endo: np.ndarray
    rho_epi: np.ndarray

    def to_grid(self, values: np.ndarray, shape) -> np.ndarray:
        """A box array → the whole rendered volume of ``shape``, zero outside the box."""
        out = np.zeros(shape, values.dtype)
        out[self.box] = values
        return out


def heart_frame(planes: RenderPlanes, h: dict) -> HeartFrame:
    """The heart frame of parameters ``h`` (``p["heart"]``) on the planes that move with the heart."""
    c, (e_a, e_b, e_u) = np.asarray(h["center_mm"]), np.asarray(h["axes"])
    reach = h["epi_axes_mm"][0] + 50 + np.hypot(*e_u[:2]) * (h["lv_length_mm"] + 45) + 3
    box = tuple(slice(*np.searchsorted(t, [c[i] - reach, c[i] + reach])) for i, t in enumerate((planes.x, planes.y)))
    dx, dy, dz = planes.px[box[0]] - c[0], planes.py[:, box[1]] - c[1], planes.pz - c[2]
    qa, qb, qu = (dx * e[0] + dy * e[1] + dz * e[2] for e in (e_a, e_b, e_u))
    phi = np.arctan2(qb, qa)

    def ripple(r):
        return 1.0 + r[0] * np.cos(2 * phi + r[2]) + r[1] * np.cos(3 * phi + r[3])

    u_c = h["u_center_mm"]
    rho_endo = np.sqrt(ellipsoid(qa, qb, qu, h["endo_axes_mm"], (0, 0, u_c))) / ripple(h["ripple_endo"])
    rho_epi = np.sqrt(ellipsoid(qa, qb, qu, h["epi_axes_mm"], (0, 0, u_c))) / ripple(h["ripple_epi"])
    return HeartFrame(box, qa, qb, qu, phi, rho_endo, rho_epi)


def paint_heart(rng: np.random.Generator, hv: np.ndarray, f: HeartFrame, p: dict) -> tuple[np.ndarray, np.ndarray]:
    """Paint, in place, epicardial fat, RV, LA and aortic root, LV myocardium and cavity, papillary muscles.

    Args:
        hv: (bx, by, nz * SUBSLICES) float32 view of the rendered volume at ``f.box``.

    Returns:
        myo, cavity: (bx, by, nz * SUBSLICES) bool LV myocardium and LV cavity (papillary muscles
        included) below the base plane.
    """
    h, sig = p["heart"], p["signal"]
    m = sig["remote"]
    endo, epi, u_c = h["endo_axes_mm"], h["epi_axes_mm"], h["u_center_mm"]
    qa, qb, qu, phi = f.a, f.b, f.u, f.phi
    below_base = qu >= 0
    groove = lambda deg, w: np.exp(-(wrap_angle(phi - np.radians(deg)) / np.radians(w)) ** 2)  # noqa: E731
    t_fat = (rng.uniform(0.0, 1.5) + rng.uniform(3, 10) * (groove(75, 20) + groove(-75, 20))
             + rng.uniform(3, 10) * np.exp(-np.abs(qu) / 12.0))
    fat_lv = ellipsoid(qa, qb, qu, [epi[0] + t_fat, epi[1] + t_fat, epi[2] + t_fat], (0, 0, u_c)) <= 1
    hv[fat_lv & (qu >= -10)] = sig["fat"]
    # RV: crescent on the septal side (qa > 0), wrapping a little more anteriorly
    d_rv, depth = rng.uniform(0.35, 0.5) * epi[0], rng.uniform(12, 24)
    rv_c = (d_rv, rng.uniform(0, 0.2) * epi[1], -5.0)
    rv_ax = (epi[0] + depth - d_rv, rng.uniform(0.95, 1.08) * epi[1], rng.uniform(0.75, 0.9) * h["lv_length_mm"] + 5)
    rv_wall, rv_fat = rng.uniform(3, 5), rng.uniform(0.5, 3) + rng.uniform(0, 6) * np.clip(qb / rv_ax[1], 0, 1)
    septal = qa > 0
    hv[septal & (ellipsoid(qa, qb, qu, [r + rv_wall + rv_fat for r in rv_ax], rv_c) <= 1)] = sig["fat"]
    hv[septal & (ellipsoid(qa, qb, qu, [r + rv_wall for r in rv_ax], rv_c) <= 1)] = sig["rv_remote"] * m
    hv[septal & (ellipsoid(qa, qb, qu, rv_ax, rv_c) <= 1)] = BLOOD
    above = qu < 0  # LA (posterior) and aortic root (anterior-septal) above the base
    hv[above & (ellipsoid(qa, qb, qu, (24, 20, 24), (0, -12, -22)) <= 1)] = BLOOD
    hv[above & (ellipsoid(qa, qb, qu, (13, 13, 30), (8, 12, -18)) <= 1)] = BLOOD
    myo = below_base & (f.rho_epi <= 1) & (f.rho_endo > 1)
    cavity = below_base & (f.rho_endo <= 1)
    hv[myo] = m
    hv[cavity] = BLOOD
    for deg in (rng.uniform(125, 145), rng.uniform(-120, -100)):  # anterolateral, posteromedial papillary muscles
        r_pm, u_pm = rng.uniform(4, 6), rng.uniform(0.45, 0.6) * h["lv_length_mm"]
        r_wall = endo[0] * np.sqrt(max(1 - ((u_pm - u_c) / endo[2]) ** 2, 0.1)) - r_pm
        pm_c = (r_wall * np.cos(np.radians(deg)), r_wall * np.sin(np.radians(deg)), u_pm)
        hv[cavity & (ellipsoid(qa, qb, qu, (r_pm, r_pm, 0.22 * h["lv_length_mm"]), pm_c) <= 1)] = m
    return myo, cavity
