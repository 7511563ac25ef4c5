"""Scar of the phantom, drawn on the myocardium of the heart frame.

Scar is the top quantile of a smooth score over the myocardium, so that the infarct burden hits a
sampled target: *ischemic* scar grows from the subendocardium (wave-front) inside one coronary
territory of the AHA 17-segment model (LAD: anterior / anteroseptal / apical, RCA: inferior /
inferoseptal, LCx: lateral), sometimes with a dark no-reflow core (still label 2); *non-ischemic*
scar is 1-3 mid-wall or epicardial patches that spare the subendocardium.
"""

from __future__ import annotations

import numpy as np

from lgesynth.data.phantom_anatomy import HeartFrame, wrap_angle

TERRITORY_PROBS = {"LAD": 0.45, "RCA": 0.35, "LCx": 0.20}
# territory centres: AHA angle range (deg) and relative level range (0 base, 1 apex)
TERRITORIES = {"LAD": ((15.0, 110.0), (0.45, 0.95)), "RCA": ((-110.0, -15.0), (0.15, 0.65)),
               "LCx": ((125.0, 235.0), (0.15, 0.70))}
MVO_PROBABILITY = 0.59


def score_scar(rng, pattern, phi, level, tau, p):
    """Score over myocardium points: scar = its top ``burden`` quantile.

    Args:
        pattern: ``"ischemic"`` or ``"non_ischemic"``.
        phi: (n,) AHA angle, rad; level: (n,) 0 base .. 1 apex; tau: (n,) 0 endo .. 1 epi.
        p: subject parameters; receives the drawn territory, target burden and centres.

    Returns:
        score: (n,) float; burden: target scar fraction of the myocardium points.
    """
    arc = np.sqrt(np.clip(1.0 - np.minimum(level, 1.0) ** 2, 0.02, 1.0))  # circumference shrinks to the apex
    waves = sum(rng.uniform(0.05, 0.15) * np.cos(rng.uniform(1, 4) * phi + rng.uniform(2, 8) * level
                                                   + rng.uniform(0, 3) * tau + rng.uniform(0, 2 * np.pi)) for _ in range(4))
    if pattern == "ischemic":
        territory = str(rng.choice(list(TERRITORY_PROBS), p=list(TERRITORY_PROBS.values())))
        (phi_lo, phi_hi), (lev_lo, lev_hi) = TERRITORIES[territory]
        phi0, lev0 = np.radians(rng.uniform(phi_lo, phi_hi)), rng.uniform(lev_lo, lev_hi)
        s_phi, s_lev = np.radians(rng.uniform(25, 50)), rng.uniform(0.2, 0.45)
        beta = np.exp(rng.uniform(np.log(0.3), np.log(3.0)))  # large: subendocardial band, small: transmural core
        dphi = wrap_angle(phi - phi0) * arc
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
    score = np.max([-np.sqrt((wrap_angle(phi - c) * arc / sp) ** 2 + ((level - lv) / sl) ** 2
                             + ((tau - t) / st) ** 2) for c, lv, t, sp, sl, st in patches], axis=0) + waves
    burden = rng.uniform(0.03, 0.15)
    p.update(territory=None, target_burden=burden, patches=[[float(np.degrees(c)), lv, t] for c, lv, t, *_ in patches])
    return score, burden


def paint_scar(rng: np.random.Generator, hv: np.ndarray, f: HeartFrame, myo: np.ndarray,
               p: dict) -> tuple[np.ndarray, np.ndarray, float]:
    """Draw the scar of ``p["pattern"]`` on the myocardium and paint its no-reflow core, in place.

    Scar voxels of ``hv`` are set to 0 (their signal is ``scar_weight`` × the scar level solved at
    acquisition); no-reflow voxels keep weight 0 and get ``signal.mvo_remote`` × remote.

    Args:
        hv: (bx, by, nz * SUBSLICES) float32 view of the rendered volume at ``f.box``.
        myo: (bx, by, nz * SUBSLICES) bool LV myocardium.

    Returns:
        scar: (bx, by, nz * SUBSLICES) bool.
        scar_weight: (bx, by, nz * SUBSLICES) float32, from 1 - ``grey_zone`` / 2 at the scar border
            to 1 + ``grey_zone`` / 2 at its core, 0 in no-reflow and outside the scar.
        mvo_fraction: share of the scar drawn as no-reflow (0 without).
    """
    h, sig = p["heart"], p["signal"]
    m = sig["remote"]
    scar = np.zeros(f.a.shape, dtype=bool)
    scar_weight = np.zeros(f.a.shape, dtype=np.float32)
    mvo_fraction = 0.0
    if p["pattern"] == "none":
        return scar, scar_weight, mvo_fraction
    re, rp = f.rho_endo[myo], f.rho_epi[myo]
    tau = (re - 1) / np.maximum((re - 1) + (1 - rp), 1e-6)
    score, burden = score_scar(rng, p["pattern"], f.phi[myo], f.u[myo] / h["lv_length_mm"], tau, p)
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
    return scar, scar_weight, mvo_fraction
