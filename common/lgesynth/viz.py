"""PNG montages of 2D slices with myocardium and scar outlines (matplotlib Agg, no display).

Used for the phantom cohort, source-vs-reconstruction panels and synthetic sample grids: pass
one 2D slice per panel. Arrays are indexed ``(x, y)`` and drawn with x to the right and y up.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from lgesynth.data.labels import myocardium_mask, scar_mask
from lgesynth.io import atomic_path

MYOCARDIUM_COLOR = "lime"
SCAR_COLOR = "yellow"


def mid_slice(label: np.ndarray) -> int:
    """Index along the last axis of the mid-ventricular slice: the middle of the slices that contain
    myocardium (label 1 or 2); the middle slice of the stack if there is none.

    Args:
        label: (x, y, z) label volume.
    """
    z = np.flatnonzero(myocardium_mask(label).any(axis=(0, 1)))
    return int(z[len(z) // 2]) if len(z) else int(label.shape[-1] // 2)


def save_montage(path: str | Path, images: Sequence[np.ndarray], labels: Sequence[np.ndarray | None] | None = None,
                 titles: Sequence[str] | None = None, ncols: int | None = None, window: tuple[float, float] = (1.0, 99.5),
                 panel_inches: float = 2.4, dpi: int = 100) -> Path:
    """Write a grid of slices as a PNG, atomically.

    Args:
        path: output ``.png``.
        images: 2D arrays (x, y), one per panel; each is windowed to its own ``window`` percentiles.
        labels: 2D label arrays (0/1/2) matching ``images``, or ``None`` (entries may be ``None`` too):
            myocardium (1 or 2) is outlined in ``MYOCARDIUM_COLOR``, scar (2) in ``SCAR_COLOR``.
        titles: one short string per panel.
        ncols: panels per row (default ``ceil(sqrt(n))``).
    Returns:
        ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(images)
    if n == 0:
        raise ValueError("save_montage needs at least one image")
    labels = list(labels) if labels is not None else [None] * n
    if len(labels) != n or (titles is not None and len(titles) != n):
        raise ValueError(f"got {n} images, {len(labels)} labels and {len(titles or [])} titles; give one per panel")
    ncols = int(ncols or math.ceil(math.sqrt(n)))
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(panel_inches * ncols, panel_inches * nrows * 1.08), facecolor="black")
    FigureCanvasAgg(fig)
    for i in range(nrows * ncols):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ax.set_axis_off()
        if i >= n:
            continue
        image = np.asarray(images[i], dtype=np.float32)
        if image.ndim != 2:
            raise ValueError(f"panel {i}: expected a 2D slice, got shape {image.shape}")
        lo, hi = np.percentile(image, window) if image.size else (0.0, 1.0)
        ax.imshow(image.T, cmap="gray", origin="lower", vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="nearest")
        if labels[i] is not None:
            label = np.asarray(labels[i])
            if label.shape != image.shape:
                raise ValueError(f"panel {i}: label shape {label.shape} differs from image shape {image.shape}")
            for mask, color in ((myocardium_mask(label), MYOCARDIUM_COLOR), (scar_mask(label), SCAR_COLOR)):
                if mask.any() and not mask.all():
                    ax.contour(mask.T.astype(np.float32), levels=[0.5], colors=color, linewidths=0.7)
        if titles is not None:
            ax.set_title(str(titles[i]), color="white", fontsize=7, pad=2)
    fig.subplots_adjust(left=0.005, right=0.995, bottom=0.005, top=0.97, wspace=0.03, hspace=0.12)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, facecolor=fig.get_facecolor(), metadata={"Software": None})
    return Path(path)
