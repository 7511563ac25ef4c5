"""Procedural LGE phantom cohort: short-axis stacks with myocardium and scar labels.

The embedded default data set of lgesynth (no downloads at run time). Each subject is drawn from
its own generator seeded by ``(seed, index)``, so subject k is identical whatever the cohort size,
and the same seed gives the same bytes.

Generation (per subject, all in mm):

1. **Acquisition**: matrix, in-plane spacing, slice thickness and slice count; the LV is placed off
   centre. Tissue is rendered on ``SUBSLICES`` planes per slice and averaged over the slice
   thickness (through-plane partial volume), then blurred in plane by a Gaussian point-spread
   function, multiplied by a smooth coil bias field and a per-slice gain (breath-holds), and given
   Rician noise. Every slice has its own small in-plane shift (breath-hold misregistration).
2. **Anatomy**: the LV is the shell between two truncated ellipsoids (endo- and epicardium; base
   cut at ``u = 0``, apex at ``u = lv_length``) with a slight radial ripple; the wall thins from the
   base towards the apex. RV: crescent of blood with a thin free wall wrapped around the septum.
   Papillary muscles (dark, label 0), epicardial fat (thicker in the AV and interventricular
   grooves), LA and aortic root above the base, chest wall with subcutaneous fat, lungs, liver
   (apical slices), spine and descending aorta.
3. **Scar**, drawn as the top quantile of a smooth score over the myocardium so that the infarct
   burden hits a sampled target: *ischemic* scar grows from the subendocardium (wave-front) inside
   one coronary territory of the AHA 17-segment model (LAD: anterior / anteroseptal / apical, RCA:
   inferior / inferoseptal, LCx: lateral), sometimes with a dark no-reflow core (still label 2);
   *non-ischemic* scar is 1-3 mid-wall or epicardial patches that spare the subendocardium.

Heart frame (``params["heart"]``): ``center_mm`` is the LV centre on the base plane in stack world
coordinates, ``axes`` the rows ``e_a`` (towards the septum / RV), ``e_b = e_a x e_u`` (anterior),
``e_u`` (base -> apex); a point p of slice k has ``(a, b, u) = axes @ (p - center_mm - shift_mm[k])``
(in-plane shift only). AHA angle ``phi = atan2(b, a)``: 0 mid-septum, +90 deg anterior, 180 deg
lateral, -90 deg inferior. The myocardium is ``rho_endo > 1, rho_epi <= 1, u >= 0`` with
``rho = sqrt((a/A)^2 + (b/B)^2 + ((u - u_c)/L)^2) / (1 + ripple(phi))``. Displayed with x to the right
and y up, a slice looks like a standard short-axis view (anterior up, RV on the left).

Parameters and their sources (typical clinical ranges, named loosely: SCMR normal reference values
for CMR, e.g. Kawel-Borgie et al. JCMR 2015; SCMR LGE protocol recommendations; EMIDEC challenge
statistics, Lalande et al. MedIA 2022):

=============================  ========================  ==========================================
parameter                      phantom                   typical clinical range (source)
=============================  ========================  ==========================================
LV endocardial diameter        42-58 mm, minor/major     LV end-diastolic diameter 45-60 mm (SCMR)
                               0.85-1
LV length base -> endo apex    68-90 mm                  LV long axis ~75-95 mm (SCMR)
wall thickness base / apex     7-12 mm / 4.5-7 mm        8-12 mm thinning to 5-7 mm apically (SCMR)
RV crescent depth / free wall  12-24 mm / 3-5 mm         RV free wall 3-5 mm (SCMR)
long-axis tilt, LV offset      0-12 deg, <= 15 % of FOV  short-axis planning; heart rarely centred
in-plane spacing, matrix       1.25-1.6 mm, 128-192      LGE 1.2-1.8 mm in plane (SCMR protocols)
slice thickness, slices        6-10 mm, 8-14             LGE 6-10 mm slices covering the LV
scar pattern                   ``PATTERN_PROBS``:        post-MI cohorts; non-ischemic LGE in
                               60 % ischemic, 15 %       myocarditis / DCM
                               non-ischemic, 25 % none
ischemic territory             LAD 45 %, RCA 35 %,       culprit-artery shares in STEMI series
                               LCx 20 %
infarct burden (ischemic)      Beta(2.3, 8.7) in 4-45 %  5-40 % of the LV myocardium (EMIDEC: 20 %)
non-ischemic burden            3-15 %, 1-3 patches       patchy mid-wall / epicardial, small
no-reflow (MVO), label 2       59 % of ischemic; ~10 %   EMIDEC: 59 % of infarcts, median 10 % of
                               of the scar (Beta)        the infarct
blood / remote, scar / remote  targets measured on the   scar >= blood or close to it; remote
                               labels, see below         myocardium nulled (darkest tissue but lung)
other tissue / remote          fat 2-3x, liver 1.2-1.8,  short-T1 fat brightest; lung darkest
                               muscle 1-1.4, lung < 0.3
noise, PSF, coil field         Rician sigma 3.5-7 % of   SNR of blood ~10; smooth receive-coil
                               fat; 0.4-0.8 vx; +-30 %   field brighter anteriorly
=============================  ========================  ==========================================

Calibration against the 50 real EMIDEC cases in ``../shared/data/emidec50`` (never copied into the
repository). That copy is 8-bit with its own scaling per slice and an offset (air sits at ~40 % of
the 99th percentile), so ratios after dividing by p99 only are compressed (real blood/remote 1.08,
scar/remote 1.12; the phantom, air ~ 0 as in magnitude LGE: 1.33 and 1.37). The figures below use
the offset-free robust normalisation ``(x - p1) / (p99 - p1)`` over non-zero voxels, like the
canonical grid; blood = LV cavity label (EMIDEC) or the holes of the myocardium ring (phantom).
Median [p10-p90], phantom: the first 200 subjects of seed 0 (minimum over them: blood/remote 1.14,
scar/remote 1.23, hence the tested ``MIN_*_RATIO``):

==============================  =====================  =====================
figure                          EMIDEC50               phantom
==============================  =====================  =====================
blood / remote                  1.31 [1.20-1.49]       1.34 [1.19-1.49]
scar (label 2) / remote         1.42 [1.26-1.54]       1.38 [1.25-1.66]
(scar - remote)/(blood - rem.)  1.21 [0.72-2.08]       1.22 [0.80-1.71]
remote level                    0.39 [0.25-0.48]       0.36 [0.28-0.44]
blood sd / (blood - remote)     0.54 [0.42-1.02]       0.48 [0.34-0.86]
infarct burden (of myocardium)  20 % [6-36 %]          21 % [7-36 %] (ischemic)
cases with MVO / MVO of scar    59 % / 10 % [2-21 %]   58 % / 9 % [3-25 %]
cavity / epicardial diameter    0.72 [0.60-0.76]       0.72 [0.67-0.77]
slices with myocardium          100 %, 5-9 slices      99 %, 8-14 slices
==============================  =====================  =====================

(The slice count follows the spec's 8-14 rather than this copy's 4-10 slices of nominal 10 mm.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from lgesynth.data.datalist import stratified_split, write_datalist
from lgesynth.data.labels import compose_label
from lgesynth.io import save_nifti, write_json

PATTERN_PROBS = {"ischemic": 0.60, "non_ischemic": 0.15, "none": 0.25}
TERRITORY_PROBS = {"LAD": 0.45, "RCA": 0.35, "LCx": 0.20}
# territory centres: AHA angle range (deg) and relative level range (0 base, 1 apex)
TERRITORIES = {"LAD": ((15.0, 110.0), (0.45, 0.95)), "RCA": ((-110.0, -15.0), (0.15, 0.65)),
               "LCx": ((125.0, 235.0), (0.15, 0.70))}
MVO_PROBABILITY = 0.59
SLICES_RANGE = (8, 14)
INPLANE_SPACING_MM = (1.25, 1.6)
SLICE_THICKNESS_MM = (6.0, 10.0)
MATRIX_SIZES = (128, 144, 160, 176, 192)
SUBSLICES = 4                      # rendering planes per slice (through-plane partial volume)
# Contrast targets are ratios of mean intensities over the label voxels of the acquired image
# (after partial volume and PSF, before bias and noise), as measured on EMIDEC; the blood and scar
# signals are solved for them. Blood = the LV cavity inside the myocardium (papillary muscles incl.).
BLOOD_REMOTE_TARGET = (1.31, 0.085, 1.18, 1.6)  # lognormal median, log-sd, clip range
SCAR_KAPPA_TARGET = (1.22, 0.38)                # (scar - remote) / (blood - remote): median, log-sd
SCAR_REMOTE_TARGET_RANGE = (1.25, 1.65)
# guaranteed on the finished image (label means, with bias and noise): tested
MIN_BLOOD_REMOTE_RATIO = 1.1
MIN_SCAR_REMOTE_RATIO = 1.2
MONTAGE_MAX_SUBJECTS = 40


@dataclass
class PhantomSubject:
    """One phantom stack: ``image`` (x, y, z) float32, ``label`` (x, y, z) uint8 in {0, 1, 2},
    ``affine`` (4, 4) diagonal (spacing) with translation, ``params`` (JSON-serialisable), and
    ``myocardium_fraction`` (x, y, z) float32: the share of each voxel's slab that is myocardium
    (through-plane partial volume; ``label > 0`` is ``myocardium_fraction >= 0.5``)."""

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    params: dict = field(default_factory=dict)
    myocardium_fraction: np.ndarray | None = None


def _wrap(angle):
    """Angle difference wrapped to [-pi, pi)."""
    return (angle + np.pi) % (2 * np.pi) - np.pi


def _ellipsoid(a, b, u, axes, center=(0.0, 0.0, 0.0)):
    """Squared ellipsoidal radius of points (a, b, u) for semi-axes ``axes`` around ``center``."""
    return ((a - center[0]) / axes[0]) ** 2 + ((b - center[1]) / axes[1]) ** 2 + ((u - center[2]) / axes[2]) ** 2


def _sample_params(rng: np.random.Generator, pattern: str | None) -> dict:
    u = rng.uniform
    spacing = u(*INPLANE_SPACING_MM)
    nx = int(rng.choice(MATRIX_SIZES))
    ny = max(128, nx - 16 * int(rng.integers(0, 3)))
    thickness = u(*SLICE_THICKNESS_MM)
    # LV geometry (end-diastole-like)
    lv_length = u(68.0, 90.0)
    r_endo = u(21.0, 29.0)
    ecc = u(0.85, 1.0)
    wall, wall_apex = u(7.0, 12.0), u(4.5, 7.0)
    u_c = u(0.0, 0.15) * lv_length      # ellipsoid centre below the base plane: base a little narrower
    endo = (r_endo, r_endo * ecc, lv_length - u_c)
    epi = (r_endo + wall, r_endo * ecc + wall, lv_length - u_c + wall_apex)
    base_z = u(-0.3, 0.4) * thickness
    n_slices = int(np.clip(round((lv_length + wall_apex - base_z) / thickness + u(-0.4, 0.6)), *SLICES_RANGE))
    # orientation: septum towards -x (RV on the left), long axis tilted slightly off +z
    theta = np.radians(180.0 + u(-25.0, 25.0))
    tilt, tilt_dir = np.radians(u(0.0, 12.0)), u(0.0, 2 * np.pi)
    e_u = np.array([np.sin(tilt) * np.cos(tilt_dir), np.sin(tilt) * np.sin(tilt_dir), np.cos(tilt)])
    e_a = np.array([np.cos(theta), np.sin(theta), 0.0])
    e_a = e_a - e_a.dot(e_u) * e_u
    e_a /= np.linalg.norm(e_a)
    e_b = np.cross(e_a, e_u)
    fov = np.array([nx, ny]) * spacing
    reach = epi[0] + 45.0
    off = np.array([u(-0.15, 0.15), u(-0.15, 0.15)]) * fov
    off = np.clip(off, -(fov / 2 - reach).clip(0), (fov / 2 - reach).clip(0))
    center = np.array([off[0], off[1], base_z])
    drawn = str(rng.choice(list(PATTERN_PROBS), p=list(PATTERN_PROBS.values())))  # always drawn: same stream
    pattern = pattern or drawn
    b_median, b_logsd, *b_range = BLOOD_REMOTE_TARGET
    blood_remote = float(np.clip(np.exp(rng.normal(np.log(b_median), b_logsd)), *b_range))
    kappa = float(np.exp(rng.normal(np.log(SCAR_KAPPA_TARGET[0]), SCAR_KAPPA_TARGET[1])))
    p = {
        "shape": [nx, ny, n_slices], "spacing_mm": [spacing, spacing, thickness],
        "heart": {"center_mm": center.tolist(), "axes": [e_a.tolist(), e_b.tolist(), e_u.tolist()],
                  "endo_axes_mm": list(endo), "epi_axes_mm": list(epi), "u_center_mm": u_c,
                  "lv_length_mm": lv_length, "wall_mm": wall, "wall_apex_mm": wall_apex,
                  "ripple_endo": [u(-0.03, 0.03), u(-0.02, 0.02), u(0, 2 * np.pi), u(0, 2 * np.pi)],
                  "ripple_epi": [u(-0.025, 0.025), u(-0.015, 0.015), u(0, 2 * np.pi), u(0, 2 * np.pi)],
                  "shift_mm": np.clip(rng.normal(0.0, 1.0, (n_slices, 2)), -3, 3).tolist()},
        "pattern": pattern,
        "signal": {"remote": u(0.3, 0.52), "target_blood_remote": blood_remote,
                   "target_scar_remote": float(np.clip(1.0 + kappa * (blood_remote - 1.0), *SCAR_REMOTE_TARGET_RANGE)),
                   "mvo_remote": u(0.8, 1.2), "grey_zone": u(0.2, 0.6), "fat": 1.0,
                   "muscle_remote": u(1.0, 1.4), "liver_remote": u(1.2, 1.8), "lung_remote": u(0.1, 0.3),
                   "spine_remote": u(1.2, 2.0), "rv_remote": u(1.0, 1.2),
                   "noise": u(0.035, 0.07), "texture": u(0.03, 0.08), "psf_voxels": u(0.4, 0.8), "gain": u(700.0, 1300.0)},
    }
    return p


def _score_scar(rng, pattern, phi, level, tau, p):
    """Score over myocardium points (phi rad, level 0 base..1 apex, tau 0 endo..1 epi): scar = top quantile."""
    arc = np.sqrt(np.clip(1.0 - np.minimum(level, 1.0) ** 2, 0.02, 1.0))  # circumference shrinks to the apex
    waves = sum(rng.uniform(0.05, 0.15) * np.cos(rng.uniform(1, 4) * phi + rng.uniform(2, 8) * level
                                                   + rng.uniform(0, 3) * tau + rng.uniform(0, 2 * np.pi)) for _ in range(4))
    if pattern == "ischemic":
        territory = str(rng.choice(list(TERRITORY_PROBS), p=list(TERRITORY_PROBS.values())))
        (phi_lo, phi_hi), (lev_lo, lev_hi) = TERRITORIES[territory]
        phi0, lev0 = np.radians(rng.uniform(phi_lo, phi_hi)), rng.uniform(lev_lo, lev_hi)
        s_phi, s_lev = np.radians(rng.uniform(25, 50)), rng.uniform(0.2, 0.45)
        beta = np.exp(rng.uniform(np.log(0.3), np.log(3.0)))  # large: subendocardial band, small: transmural core
        dphi = _wrap(phi - phi0) * arc
        score = -np.hypot(dphi / s_phi, (level - lev0) / s_lev) - beta * tau + waves
        burden = float(np.clip(rng.beta(2.3, 8.7), 0.04, 0.45 if territory == "LAD" else 0.35))
        p.update(territory=territory, target_burden=burden, aha_center_deg=float(np.degrees(phi0)), level_center=lev0)
        return score, burden
    patches = []
    for _ in range(int(rng.integers(1, 4))):
        epicardial = rng.random() < 0.5
        centre = rng.uniform(120, 240) if epicardial else rng.uniform(-60, 60)  # lateral epi / septal mid-wall
        lev_k, tau_k = rng.uniform(0.1, 0.7), rng.uniform(0.72, 0.88) if epicardial else rng.uniform(0.4, 0.6)
        patches.append((np.radians(centre), lev_k, tau_k,
                        np.radians(rng.uniform(15, 40)), rng.uniform(0.1, 0.3), rng.uniform(0.1, 0.16)))
    score = np.max([-np.sqrt((_wrap(phi - c) * arc / sp) ** 2 + ((level - lv) / sl) ** 2
                             + ((tau - t) / st) ** 2) for c, lv, t, sp, sl, st in patches], axis=0) + waves
    burden = rng.uniform(0.03, 0.15)
    p.update(territory=None, target_burden=burden, patches=[[float(np.degrees(c)), lv, t] for c, lv, t, *_ in patches])
    return score, burden


def _solve_contrast(base, blood_part, scar_part, label, cavity, sig, m):
    """Blood and scar signal levels so that the label means hit the sampled contrast targets.

    The acquired image is linear in them: ``image = base + b * blood_part + s * scar_part``, so the
    mean over a mask M is ``A_M + b B_M + s S_M``; two ratio targets give a 2 x 2 linear system.
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


def sample_subject(rng: np.random.Generator, pattern: str | None = None) -> PhantomSubject:
    """Draw one phantom subject from ``rng``.

    Args:
        rng: the subject's generator (e.g. ``np.random.default_rng([seed, index])``).
        pattern: force ``"ischemic"``, ``"non_ischemic"`` or ``"none"``; default: drawn with
            ``PATTERN_PROBS``.
    Returns:
        :class:`PhantomSubject`; ``params`` holds the drawn parameters (module docstring) plus the
        measured ``scar_burden`` (scar / myocardium voxels of the label) and ``mvo_fraction``.
    """
    if pattern is not None and pattern not in PATTERN_PROBS:
        raise ValueError(f"pattern must be one of {list(PATTERN_PROBS)}, got {pattern!r}")
    p = _sample_params(rng, pattern)
    h, sig = p["heart"], p["signal"]
    nx, ny, nz = p["shape"]
    dxy, _, dz = p["spacing_mm"]
    m = sig["remote"]
    # world coordinates of the rendering planes; per-slice breath-hold shift of the anatomy
    x = (np.arange(nx) - (nx - 1) / 2) * dxy
    y = (np.arange(ny) - (ny - 1) / 2) * dxy
    zf = (np.arange(nz * SUBSLICES) + 0.5) * dz / SUBSLICES
    shift = np.repeat(np.asarray(h["shift_mm"]), SUBSLICES, axis=0)
    px = x[:, None, None] - shift[None, None, :, 0]
    py = y[None, :, None] - shift[None, None, :, 1]
    pz = zf[None, None, :]
    c, (e_a, e_b, e_u) = np.asarray(h["center_mm"]), np.asarray(h["axes"])

    # --- torso (fixed to the chest, relative to the LV centre): outline, fat, lungs, liver, spine, aorta ---
    def lobe(dx_, dy_, ax_x, ax_y, amp):  # squared radius of an ellipse with a low-order radial ripple
        ang = np.arctan2(dy_ / ax_y, dx_ / ax_x)
        wobble = 1 + sum(rng.uniform(-amp, amp) * np.cos(k * ang + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4))
        return ((dx_ / ax_x) ** 2 + (dy_ / ax_y) ** 2) / wobble ** 2

    img = np.zeros((nx, ny, nz * SUBSLICES), dtype=np.float32)

    def paint(mask, value):
        img[np.broadcast_to(mask, img.shape)] = value

    X, Y = x[:, None, None], y[None, :, None]  # the chest wall does not follow the breath-hold shift
    bc = c[:2] + np.array([-rng.uniform(20, 45), -rng.uniform(35, 55)])
    bax = np.array([rng.uniform(140, 175), rng.uniform(110, 135)])
    rx, ry = X - bc[0], Y - bc[1]
    subcut, chest = rng.uniform(6, 22), rng.uniform(10, 20)
    paint(lobe(rx, ry, *bax, 0.03) <= 1, sig["fat"])
    paint(lobe(rx, ry, *(bax - subcut), 0.05) <= 1, sig["muscle_remote"] * m)
    thorax = lobe(rx, ry, *(bax - subcut - chest), 0.03) <= 1
    for side, dx0 in ((1, rng.uniform(50, 70)), (-1, rng.uniform(70, 95))):  # left lung (lateral to the LV), right lung
        lung = lobe(X - c[0] - side * dx0, Y - c[1] + rng.uniform(0, 30), rng.uniform(40, 55), rng.uniform(60, 80), 0.06) \
            + ((pz + 40) / rng.uniform(100, 130)) ** 2 <= 1
        paint(lung & thorax, sig["lung_remote"] * m)
    liver = lobe(X - c[0] + rng.uniform(50, 80), Y - c[1] + rng.uniform(20, 50), 95, 75, 0.04) \
        + ((pz - h["lv_length_mm"] - rng.uniform(30, 55)) / 75) ** 2 <= 1
    paint(liver & thorax, sig["liver_remote"] * m)
    texture = ndimage.gaussian_filter(rng.normal(size=(nx, ny, nz)).astype(np.float32), (3, 3, 0.5))
    img *= 1 + sig["texture"] * np.repeat(texture / texture.std(), SUBSLICES, axis=2)
    spine_c = bc + np.array([0.0, -(bax[1] - subcut - rng.uniform(20, 30))])
    paint(np.hypot(X - spine_c[0], Y - spine_c[1]) <= rng.uniform(15, 20), sig["spine_remote"] * m)
    aorta_c = spine_c + np.array([rng.uniform(15, 30), rng.uniform(20, 30)])
    blood = np.nan  # marks blood; its signal is solved for the contrast target below
    paint(np.hypot(X - aorta_c[0], Y - aorta_c[1]) <= rng.uniform(9, 13), blood)

    # --- heart, in a box around it: heart frame (a, b, u) and AHA angle phi ---
    endo, epi, u_c = h["endo_axes_mm"], h["epi_axes_mm"], h["u_center_mm"]
    reach = epi[0] + 50 + np.hypot(*e_u[:2]) * (h["lv_length_mm"] + 45) + 3
    box = tuple(slice(*np.searchsorted(t, [c[i] - reach, c[i] + reach])) for i, t in enumerate((x, y)))
    hv = img[box]  # a view: painting it paints img
    dx_, dy_, dz_ = px[box[0]] - c[0], py[:, box[1]] - c[1], pz - c[2]
    qa, qb, qu = (dx_ * e[0] + dy_ * e[1] + dz_ * e[2] for e in (e_a, e_b, e_u))
    phi = np.arctan2(qb, qa)

    def ripple(r):
        return 1.0 + r[0] * np.cos(2 * phi + r[2]) + r[1] * np.cos(3 * phi + r[3])

    rho_endo = np.sqrt(_ellipsoid(qa, qb, qu, endo, (0, 0, u_c))) / ripple(h["ripple_endo"])
    rho_epi = np.sqrt(_ellipsoid(qa, qb, qu, epi, (0, 0, u_c))) / ripple(h["ripple_epi"])
    below_base = qu >= 0
    groove = lambda deg, w: np.exp(-(_wrap(phi - np.radians(deg)) / np.radians(w)) ** 2)  # noqa: E731
    t_fat = (rng.uniform(0.0, 1.5) + rng.uniform(3, 10) * (groove(75, 20) + groove(-75, 20))
             + rng.uniform(3, 10) * np.exp(-np.abs(qu) / 12.0))
    fat_lv = _ellipsoid(qa, qb, qu, [epi[0] + t_fat, epi[1] + t_fat, epi[2] + t_fat], (0, 0, u_c)) <= 1
    hv[fat_lv & (qu >= -10)] = sig["fat"]
    # RV: crescent on the septal side (qa > 0), wrapping a little more anteriorly
    d_rv, depth = rng.uniform(0.35, 0.5) * epi[0], rng.uniform(12, 24)
    rv_c = (d_rv, rng.uniform(0, 0.2) * epi[1], -5.0)
    rv_ax = (epi[0] + depth - d_rv, rng.uniform(0.95, 1.08) * epi[1], rng.uniform(0.75, 0.9) * h["lv_length_mm"] + 5)
    rv_wall, rv_fat = rng.uniform(3, 5), rng.uniform(0.5, 3) + rng.uniform(0, 6) * np.clip(qb / rv_ax[1], 0, 1)
    septal = qa > 0
    hv[septal & (_ellipsoid(qa, qb, qu, [r + rv_wall + rv_fat for r in rv_ax], rv_c) <= 1)] = sig["fat"]
    hv[septal & (_ellipsoid(qa, qb, qu, [r + rv_wall for r in rv_ax], rv_c) <= 1)] = sig["rv_remote"] * m
    hv[septal & (_ellipsoid(qa, qb, qu, rv_ax, rv_c) <= 1)] = blood
    above = qu < 0  # LA (posterior) and aortic root (anterior-septal) above the base
    hv[above & (_ellipsoid(qa, qb, qu, (24, 20, 24), (0, -12, -22)) <= 1)] = blood
    hv[above & (_ellipsoid(qa, qb, qu, (13, 13, 30), (8, 12, -18)) <= 1)] = blood
    myo = below_base & (rho_epi <= 1) & (rho_endo > 1)
    cavity = below_base & (rho_endo <= 1)
    hv[myo] = m
    hv[cavity] = blood
    for deg in (rng.uniform(125, 145), rng.uniform(-120, -100)):  # anterolateral, posteromedial papillary muscles
        r_pm, u_pm = rng.uniform(4, 6), rng.uniform(0.45, 0.6) * h["lv_length_mm"]
        r_wall = endo[0] * np.sqrt(max(1 - ((u_pm - u_c) / endo[2]) ** 2, 0.1)) - r_pm
        pm_c = (r_wall * np.cos(np.radians(deg)), r_wall * np.sin(np.radians(deg)), u_pm)
        hv[cavity & (_ellipsoid(qa, qb, qu, (r_pm, r_pm, 0.22 * h["lv_length_mm"]), pm_c) <= 1)] = m

    # --- scar on the myocardium points ---
    scar = np.zeros(qa.shape, dtype=bool)
    scar_weight = np.zeros(qa.shape, dtype=np.float32)  # scar signal = scar_weight * (solved scar level)
    mvo_fraction = 0.0
    if p["pattern"] != "none":
        re, rp = rho_endo[myo], rho_epi[myo]
        tau = (re - 1) / np.maximum((re - 1) + (1 - rp), 1e-6)
        score, burden = _score_scar(rng, p["pattern"], phi[myo], qu[myo] / h["lv_length_mm"], tau, p)
        in_scar = score >= np.quantile(score, 1.0 - burden)
        rank = np.argsort(np.argsort(score[in_scar])) / max(in_scar.sum() - 1, 1)  # 0 border .. 1 core
        w = 1 + sig["grey_zone"] * (rank - 0.5)  # grey zone: dimmer at the border
        mvo = np.zeros_like(w, dtype=bool)
        if p["pattern"] == "ischemic" and rng.random() < MVO_PROBABILITY:
            mvo_fraction = float(np.clip(rng.beta(1.6, 12.0), 0.02, 0.3))
            mvo = rank >= 1 - mvo_fraction
        w[mvo] = 0.0
        scar[myo] = in_scar
        weight, vals = np.zeros(int(myo.sum()), np.float32), hv[myo]
        weight[in_scar] = w
        vals[in_scar] = np.where(mvo, sig["mvo_remote"] * m, 0.0)
        scar_weight[myo], hv[myo] = weight, vals

    def full(a):  # box -> whole grid
        out = np.zeros(img.shape, a.dtype)
        out[box] = a
        return out

    myo, cavity, scar, scar_weight = full(myo), full(cavity), full(scar), full(scar_weight)

    # --- acquisition: slice averaging, PSF, bias, gain, Rician noise ---
    def slab(a):
        return a.reshape(nx, ny, nz, SUBSLICES).mean(axis=3, dtype=np.float32)

    is_blood = np.isnan(img)
    img[is_blood] = 0.0
    myo_frac, scar_frac = slab(myo), slab(scar)
    label = compose_label(myo_frac >= 0.5, (scar_frac > 0) & (scar_frac >= 0.5 * myo_frac))
    psf = (sig["psf_voxels"], sig["psf_voxels"], 0)
    xn, yn, zn = (np.linspace(-1, 1, n).reshape(s) for n, s in ((nx, (-1, 1, 1)), (ny, (1, -1, 1)), (nz, (1, 1, -1))))
    log_bias = rng.uniform(0.1, 0.3) * yn + rng.uniform(-0.1, 0.1) * xn + rng.uniform(0, 0.25) * yn ** 2  # anterior coil
    log_bias = log_bias + rng.uniform(-0.1, 0.1) * zn + rng.uniform(0.03, 0.08) * np.cos(
        rng.uniform(1, 3) * xn + rng.uniform(1, 3) * yn + rng.uniform(0, 2 * np.pi))
    bias = (np.exp(log_bias) * rng.normal(1.0, 0.03, nz)[None, None, :]).astype(np.float32)  # coil field, per-slice gain
    base, blood_part, scar_part = (bias * ndimage.gaussian_filter(slab(a), psf) for a in (img, is_blood, scar_weight))
    level_b, level_s = _solve_contrast(base, blood_part, scar_part, label, slab(cavity) >= 0.5, sig, m)
    image = base + level_b * blood_part + level_s * scar_part
    noise = rng.normal(0.0, sig["noise"], (2,) + image.shape)
    image = (sig["gain"] * np.sqrt((image + noise[0]) ** 2 + noise[1] ** 2)).astype(np.float32)

    affine = np.diag([dxy, dxy, dz, 1.0])
    affine[:3, 3] = [x[0], y[0], dz / 2]
    n_myo = int((label > 0).sum())
    p["scar_burden"] = float((label == 2).sum() / max(n_myo, 1))
    p["mvo_fraction"] = mvo_fraction
    p["slices_with_myocardium"] = int((label > 0).any(axis=(0, 1)).sum())
    return PhantomSubject(image=image, label=label, affine=affine, params=p, myocardium_fraction=myo_frac)


def subject_pattern(seed: int, index: int) -> str:
    """Scar pattern of cohort subject ``index``: a golden-ratio sequence through ``PATTERN_PROBS``, so
    that every run of consecutive subjects has the stated proportions (to within one subject) and
    subject k's pattern does not depend on the cohort size."""
    v = (0.5 + 0.6180339887498949 * index + 0.4142135623730951 * seed) % 1.0
    return list(PATTERN_PROBS)[int(np.searchsorted(np.cumsum(list(PATTERN_PROBS.values())), v, side="right"))]


def make_phantom_cohort(out_dir: str | Path, subjects: int = 20, seed: int = 0, test_fraction: float = 0.2) -> Path:
    """Write a phantom cohort and return the path of its ``datalist.json``.

    Writes ``out_dir/imagesTr/ph_0001.nii.gz`` (float32), ``out_dir/labelsTr/ph_0001.nii.gz``
    (uint8, 0/1/2), ``datalist.json`` (MSD-style; entries ``id, image, label, scar, pattern``; a
    scar-stratified train/test split seeded by ``seed``), ``phantom.json`` (every subject's drawn
    parameters) and ``montage.png`` (mid-ventricular slices of the first ``MONTAGE_MAX_SUBJECTS``).
    Subject ``k`` is drawn from ``np.random.default_rng([seed, k])``: same seed, same bytes.
    """
    from lgesynth.viz import mid_slice, save_montage

    if int(subjects) < 1 or int(seed) < 0 or not 0.0 <= float(test_fraction) < 1.0:
        raise ValueError(f"need subjects >= 1, seed >= 0 and 0 <= test_fraction < 1; "
                         f"got subjects={subjects}, seed={seed}, test_fraction={test_fraction}")
    out = Path(out_dir)
    entries, params, images, labels, titles = [], {}, [], [], []
    for k in range(int(subjects)):
        sid = f"ph_{k + 1:04d}"
        subject = sample_subject(np.random.default_rng([int(seed), k]), pattern=subject_pattern(int(seed), k))
        save_nifti(out / "imagesTr" / f"{sid}.nii.gz", subject.image, subject.affine, dtype=np.float32)
        save_nifti(out / "labelsTr" / f"{sid}.nii.gz", subject.label, subject.affine, dtype=np.uint8)
        has_scar = bool((subject.label == 2).any())
        pattern = subject.params["pattern"] if has_scar else "none"
        entries.append({"id": sid, "image": f"imagesTr/{sid}.nii.gz", "label": f"labelsTr/{sid}.nii.gz",
                        "scar": has_scar, "pattern": pattern})
        params[sid] = subject.params
        if k < MONTAGE_MAX_SUBJECTS:
            z = mid_slice(subject.label)
            images.append(subject.image[..., z])
            labels.append(subject.label[..., z])
            territory = subject.params.get("territory") or ""
            titles.append(f"{sid} {pattern} {territory} {100 * subject.params['scar_burden']:.0f}%".replace("  ", " "))
    ids, has_scar = [e["id"] for e in entries], [e["scar"] for e in entries]
    train_ids, test_ids = stratified_split(ids, has_scar, float(test_fraction), int(seed))
    by_id = {e["id"]: e for e in entries}
    write_json(out / "phantom.json", {"seed": int(seed), "subjects": int(subjects), "pattern_probs": PATTERN_PROBS,
                                      "params": params})
    save_montage(out / "montage.png", images, labels, titles=titles)
    return write_datalist(out / "datalist.json", [by_id[i] for i in train_ids], [by_id[i] for i in test_ids])
