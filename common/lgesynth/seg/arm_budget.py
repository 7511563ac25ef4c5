"""The minutes of one scar_seg experiment arm when a pipeline preset says ``budget_minutes: auto``: what is left
of the preset's own ``budget_minutes`` after the stages before scar_seg, shared among the arms.

    arm minutes = (preset minutes - minutes the earlier stages took - localizer minutes
                   - RESERVE_MINUTES - ARM_RESERVE_MINUTES * arms) / arms

rounded down to 0.1 min and clipped to ``ARM_MINUTES_RANGE``. ``arms`` is 2 per seed (baseline and augmented).
The reserves pay for what the arms' own budgets do not hold: per arm its start (caching), its test
evaluations and what the time budget cannot cut (:mod:`lgesynth.seg.time_budget` ends training inside the
minutes, validation included: on the phantom an 8-minute arm took 8.3-8.9 min with its evaluations); once, the
comparison and the report. A cohort whose
earlier stages are quick (EMIDEC's 40 cases) so trains its segmenters longer than one whose INR bank and latents
took most of the hour (the 120-subject phantom), and a slower CPU, whose earlier stages took longer, gets shorter
arms instead of a pipeline over its hour. The planner then buys what it can with those minutes on the machine it
trains on (:mod:`lgesynth.seg.plan`).
"""

from __future__ import annotations

import math

RESERVE_MINUTES = 3.0
ARM_RESERVE_MINUTES = 1.0
ARM_MINUTES_RANGE = (2.0, 15.0)


def arm_minutes(total_minutes: float, spent_seconds: dict[str, float], seeds: int, localizer_minutes: float) -> dict:
    """The per-arm budget and how it was reached.

    Args:
        total_minutes: the preset's ``budget_minutes`` (the whole pipeline's).
        spent_seconds: wall seconds of each stage before scar_seg (``{"inr_fit": 439.2, ...}``).
        seeds: seeds per arm (each trains a baseline and an augmented arm).
        localizer_minutes: the cascade's localizer budget (0 without the cascade).
    Returns:
        ``{"arm_minutes", "total_minutes", "spent_minutes", "localizer_minutes", "reserve_minutes", "arms",
        "left_minutes", "why"}``; ``left_minutes`` may be below what the arms get when the range's floor applies.
    """
    arms = 2 * max(1, int(seeds))
    spent = sum(float(s) for s in spent_seconds.values()) / 60.0
    reserve = RESERVE_MINUTES + ARM_RESERVE_MINUTES * arms
    left = float(total_minutes) - spent - float(localizer_minutes) - reserve
    share = math.floor(left / arms * 10) / 10
    low, high = ARM_MINUTES_RANGE
    minutes = min(max(share, low), high)
    why = (f"{minutes:g} min per arm: the preset's {float(total_minutes):g} min less {spent:.1f} min of earlier stages, "
           f"{float(localizer_minutes):g} min of localizer and a {reserve:g} min reserve (evaluations, overrun) leave "
           f"{left:.1f} min for {arms} arms ({share:g} each)")
    if share < low:
        why += f"; raised to the floor of {low:g} min, so the pipeline will run over its {float(total_minutes):g} min"
    elif share > high:
        why += f"; capped at {high:g} min"
    return {"arm_minutes": minutes, "total_minutes": float(total_minutes), "spent_minutes": round(spent, 2),
            "localizer_minutes": float(localizer_minutes), "reserve_minutes": reserve, "arms": arms,
            "left_minutes": round(left, 2), "why": why}
