"""The label convention of lgesynth (the README's data contract).

``0`` background, ``1`` healthy myocardium, ``2`` scar (fibrosis / infarct, incl. no-reflow).
Myocardium mask = label in {1, 2}; scar mask = label == 2, so scar lies inside the myocardium by
construction.
"""

from __future__ import annotations

import numpy as np

BACKGROUND = 0
MYOCARDIUM = 1
SCAR = 2
ALLOWED_LABELS = (BACKGROUND, MYOCARDIUM, SCAR)


def myocardium_mask(label: np.ndarray) -> np.ndarray:
    """Whole myocardium (healthy + scar), bool, same shape as ``label``."""
    return np.isin(label, (MYOCARDIUM, SCAR))


def scar_mask(label: np.ndarray) -> np.ndarray:
    """Scar only, bool, same shape as ``label``."""
    return np.asarray(label) == SCAR


def compose_label(myocardium: np.ndarray, scar: np.ndarray) -> np.ndarray:
    """Label volume (uint8) from two bool masks; scar outside the myocardium is dropped."""
    myocardium = np.asarray(myocardium, dtype=bool)
    label = np.zeros(myocardium.shape, dtype=np.uint8)
    label[myocardium] = MYOCARDIUM
    label[myocardium & np.asarray(scar, dtype=bool)] = SCAR
    return label
