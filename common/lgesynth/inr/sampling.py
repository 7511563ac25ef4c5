"""Which canonical-grid points a fitting step sees.

Every step draws, per subject, ``points`` voxel indices with replacement: a fraction
``myo_fraction`` from that subject's myocardium voxels (so that thin scar is seen often enough to be
learned) and the rest uniformly from the whole grid. ``points=None`` means the full grid every step.
Gathering writes into preallocated buffers.
"""

from __future__ import annotations

import torch


class PointSampler:
    """Draw per-step point subsets for a batch of subjects.

    Args:
        coords: ``(grid_points, 3)`` canonical coordinates shared by all subjects, or per subject
            ``(subjects, grid_points, 3)`` (e.g. each with its own z extent).
        targets: ``(subjects, grid_points, 3)`` = (intensity, myocardium, scar) per voxel, fp32.
        points: points per subject per step (``None``: full grid).
        myo_fraction: share of the points drawn from the myocardium.
        generator: torch generator for reproducible draws.
    """

    def __init__(self, coords: torch.Tensor, targets: torch.Tensor, points: int | None, myo_fraction: float = 0.25,
                 generator: torch.Generator | None = None):
        self.coords, self.targets = coords, targets
        n_grid = coords.shape[-2]
        self.full = points is None or points >= n_grid
        self.points = n_grid if self.full else int(points)
        self.generator = generator
        B = targets.shape[0]
        self.n_myo_pts = 0 if self.full else int(round(self.points * myo_fraction))
        # per-subject myocardium voxel indices, padded; empty myocardium falls back to uniform
        myo = targets[..., 1] > 0.5
        counts = myo.sum(1)
        self.myo_counts = counts
        width = max(int(counts.max()), 1)
        dev = targets.device
        self.myo_idx = torch.zeros(B, width, dtype=torch.long, device=dev)
        for b in range(B):
            idx = torch.nonzero(myo[b]).squeeze(1)
            if len(idx):
                self.myo_idx[b, : len(idx)] = idx
            else:
                self.myo_idx[b] = torch.randint(n_grid, (width,), generator=generator).to(dev)
                self.myo_counts[b] = width
        self.coords_buf = torch.empty(B, self.points, 3, device=dev)
        self.target_buf = torch.empty(B, self.points, targets.shape[-1], device=dev)

    def sample(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Coordinates ``(b, points, 3)`` and targets ``(b, points, 3)`` for subjects ``rows`` (b,)."""
        b = len(rows)
        if self.full:
            c = self.coords[rows] if self.coords.dim() == 3 else self.coords.unsqueeze(0).expand(b, -1, -1)
            return c, self.targets[rows]
        n_grid = self.coords.shape[-2]
        dev = self.targets.device
        idx = torch.randint(n_grid, (b, self.points), generator=self.generator).to(dev)
        k = self.n_myo_pts
        if k:
            u = torch.rand(b, k, generator=self.generator).to(dev)
            pick = (u * self.myo_counts[rows].unsqueeze(1)).long()
            idx[:, :k] = torch.gather(self.myo_idx[rows], 1, pick)
        c, t = self.coords_buf[:b], self.target_buf[:b]
        flat = (idx + rows.unsqueeze(1) * n_grid).view(-1)
        if self.coords.dim() == 3:
            torch.index_select(self.coords.view(-1, 3), 0, flat, out=c.view(-1, 3))
        else:
            torch.index_select(self.coords, 0, idx.view(-1), out=c.view(-1, 3))
        torch.index_select(self.targets.view(-1, self.targets.shape[-1]), 0, flat, out=t.view(-1, t.shape[-1]))
        return c, t
