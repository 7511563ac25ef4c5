"""Parameter ranges of the procedural phantom, their clinical sources, and per-subject sampling.

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

import numpy as np

PATTERN_PROBS = {"ischemic": 0.60, "non_ischemic": 0.15, "none": 0.25}
SLICES_RANGE = (8, 14)
INPLANE_SPACING_MM = (1.25, 1.6)
SLICE_THICKNESS_MM = (6.0, 10.0)
MATRIX_SIZES = (128, 144, 160, 176, 192)
# Contrast targets are ratios of mean intensities over the label voxels of the acquired image
# (after partial volume and PSF, before bias and noise), as measured on EMIDEC; the blood and scar
# signals are solved for them. Blood = the LV cavity inside the myocardium (papillary muscles incl.).
BLOOD_REMOTE_TARGET = (1.31, 0.085, 1.18, 1.6)  # lognormal median, log-sd, clip range
SCAR_KAPPA_TARGET = (1.22, 0.38)                # (scar - remote) / (blood - remote): median, log-sd
SCAR_REMOTE_TARGET_RANGE = (1.25, 1.65)
# guaranteed on the finished image (label means, with bias and noise): tested
MIN_BLOOD_REMOTE_RATIO = 1.1
MIN_SCAR_REMOTE_RATIO = 1.2


def sample_params(rng: np.random.Generator, pattern: str | None) -> dict:
    """Draw the acquisition, heart geometry and signal levels of one subject (module docstring).

    Args:
        rng: the subject's generator; consumed in a fixed order.
        pattern: forced scar pattern, or None to use the one drawn from ``PATTERN_PROBS`` (it is
            drawn either way, so the rest of the stream does not depend on forcing it).

    Returns:
        JSON-serialisable dict: ``shape`` [nx, ny, slices] voxels; ``spacing_mm`` [dxy, dxy, slice
        thickness] mm; ``heart`` (frame of ``phantom_subject``: ``center_mm`` (3,), ``axes`` (3, 3)
        rows e_a, e_b, e_u, ellipsoid semi-axes in mm, ``u_center_mm``, ``lv_length_mm``,
        ``wall_mm``, ``wall_apex_mm``, radial ``ripple_endo`` / ``ripple_epi`` [amp2, amp3,
        phase2, phase3] and per-slice in-plane ``shift_mm`` (slices, 2)); ``pattern``; ``signal``
        (tissue levels relative to remote myocardium, contrast targets, noise and PSF).
    """
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
