"""Which canonical-grid points a fitting step sees.

Every step draws, per subject, ``points`` voxel indices with replacement: a fraction
``myo_fraction`` from that subject's myocardium voxels (so that thin scar is seen often enough to be
learned) and the rest uniformly from the whole grid (all of them for a subject without myocardium).
``points=None`` means the full grid every step. Gathering writes into preallocated buffers.

Where the random numbers come from: one ``generator`` for the whole batch (inr2vec: seeded per
iteration), or one generator per row (``sample(rows, generators)``; the INR fit: seeded per subject by
``seed_of(seed, subject)``), so that a subject's points do not depend on which subjects share its batch.
"""

from __future__ import annotations

import numpy as np
import torch


def seed_of(*keys: int) -> int:
    """A well-mixed 63-bit seed from integers (``seed, iteration, rank`` or ``seed, subject``)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class PointSampler:
    """Draw per-step point subsets for a batch of subjects.

    Args:
        coords: ``(grid_points, 3)`` canonical coordinates shared by all subjects, or per subject
            ``(subjects, grid_points, 3)`` (e.g. each with its own z extent).
        targets: ``(subjects, grid_points, 3)`` = (intensity, myocardium, scar) per voxel, fp32.
        points: points per subject per step (``None``: full grid).
        myo_fraction: share of the points drawn from the myocardium.
        generator: torch generator for reproducible draws, shared by the batch (see ``sample``).
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
        # per-subject myocardium voxel indices, padded; a subject without myocardium keeps uniform points
        myo = targets[..., 1] > 0.5
        self.myo_counts = myo.sum(1)
        self.has_myo = self.myo_counts > 0
        width = max(int(self.myo_counts.max()), 1)
        dev = targets.device
        self.myo_idx = torch.zeros(B, width, dtype=torch.long, device=dev)
        for b in range(B):
            idx = torch.nonzero(myo[b]).squeeze(1)
            self.myo_idx[b, : len(idx)] = idx
        draws = 0 if self.full else B  # the random draws are made on the CPU (generators are CPU ones)
        self.idx_buf, self.u_buf = torch.empty(draws, self.points, dtype=torch.long), torch.empty(draws, self.n_myo_pts)
        self.coords_buf = torch.empty(B, self.points, 3, device=dev)
        self.target_buf = torch.empty(B, self.points, targets.shape[-1], device=dev)

    def sample(self, rows: torch.Tensor, generators: list[torch.Generator] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Coordinates ``(b, points, 3)`` and targets ``(b, points, 3)`` for subjects ``rows`` (b,).

        ``generators``: one per row, each drawing that row's points (default: ``self.generator`` for all).
        """
        b = len(rows)
        if self.full:
            c = self.coords[rows] if self.coords.dim() == 3 else self.coords.unsqueeze(0).expand(b, -1, -1)
            return c, self.targets[rows]
        n_grid = self.coords.shape[-2]
        dev = self.targets.device
        k = self.n_myo_pts
        idx, u = self.idx_buf[:b], self.u_buf[:b]
        if generators is None:
            torch.randint(n_grid, (b, self.points), generator=self.generator, out=idx)
            torch.rand(b, k, generator=self.generator, out=u)
        else:
            assert len(generators) == b, (len(generators), b)
            for j, g in enumerate(generators):
                torch.randint(n_grid, (self.points,), generator=g, out=idx[j])
                torch.rand(k, generator=g, out=u[j])
        idx = idx.to(dev)
        if k:
            pick = (u.to(dev) * self.myo_counts[rows].unsqueeze(1)).long()
            myo_points = torch.gather(self.myo_idx[rows], 1, pick)
            idx[:, :k] = torch.where(self.has_myo[rows].unsqueeze(1), myo_points, idx[:, :k])
        c, t = self.coords_buf[:b], self.target_buf[:b]
        flat = (idx + rows.unsqueeze(1) * n_grid).view(-1)
        if self.coords.dim() == 3:
            torch.index_select(self.coords.view(-1, 3), 0, flat, out=c.view(-1, 3))
        else:
            torch.index_select(self.coords, 0, idx.view(-1), out=c.view(-1, 3))
        torch.index_select(self.targets.view(-1, self.targets.shape[-1]), 0, flat, out=t.view(-1, t.shape[-1]))
        return c, t
