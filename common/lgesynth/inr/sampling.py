"""Which canonical-grid points a fitting step sees.

Every step draws, per subject, ``points`` voxel indices with replacement: a fraction
``focus_fraction`` from that subject's *focus* voxels and the rest uniformly from the whole grid (all
of them for a subject without myocardium). ``points=None`` means the full grid every step. Gathering
writes into preallocated buffers. The focus (``focus=``):

- ``"myocardium"``: the myocardium voxels, so that thin scar is seen often enough to be learned;
- ``"boundary"``: the voxels on either side of a mask edge, i.e. the in-plane one-voxel band
  ``dilate(m) & ~erode(m)`` (4-neighbourhood) of the myocardium and of the scar. The Dice of the decoded
  masks is lost and won at these edges, and intensity edges sit there too (docs/experiments.md, inr_fit:
  mask-edge points against myocardium points). Needs
  ``coords`` on a regular C-order grid (``canonical_coords``), whose shape it reads off the coordinates.

**Importance weights** (``sample(..., with_weights=True)``): the draw over-represents the focus, so a
plain mean over the drawn points is a biased estimate of the full-grid loss (it over-weights
the myocardium, which moves a learned mask threshold outwards: decoded masks dilated). Each drawn point
``i`` of a subject with ``|F|`` focus voxels out of ``N`` carries

    w_i = 1 / (N q_i),   q_i = (1 - f) / N + f [i in F] / |F|,   f = focus points / points

(the mixture density of the draw), so ``mean_j w_j l_j`` has the full-grid mean ``(1/N) sum_i l_i`` as its
expectation for every per-point loss ``l``: the focus buys lower variance where the masks are decided,
not a different optimum.

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


def grid_shape(coords: torch.Tensor) -> tuple[int, int, int]:
    """``(X, Y, Z)`` of coordinates ``(X*Y*Z, 3)`` (or ``(subjects, X*Y*Z, 3)``) laid out as ``canonical_coords``
    lays them out: a regular grid flattened in C order. Raises ValueError for anything else."""
    c = coords if coords.dim() == 2 else coords[0]
    shape = tuple(int(torch.unique(c[:, k]).numel()) for k in range(3))
    if int(np.prod(shape)) == c.shape[0]:
        g = c.reshape(*shape, 3)
        axes = (g[:, :1, :1, 0], g[:1, :, :1, 1], g[:1, :1, :, 2])  # x varies along X only, y along Y, z along Z
        if all(torch.equal(a.expand(shape), g[..., k]) for k, a in enumerate(axes)):
            return shape
    raise ValueError(f"coordinates {tuple(coords.shape)} are not a regular C-order grid (canonical_coords)")


def boundary_band(mask: torch.Tensor) -> torch.Tensor:
    """``(..., X, Y, Z)`` bool -> the in-plane edge band ``dilate(mask) & ~erode(mask)`` (4-neighbourhood in X, Y):
    the voxels inside the mask next to a voxel outside, and the voxels outside next to one inside."""
    def dilate(m):
        out = m.clone()
        for dim in (-3, -2):
            n = m.shape[dim]
            out.narrow(dim, 1, n - 1).logical_or_(m.narrow(dim, 0, n - 1))
            out.narrow(dim, 0, n - 1).logical_or_(m.narrow(dim, 1, n - 1))
        return out

    return dilate(mask) & dilate(~mask)


def focus_mask(coords: torch.Tensor, targets: torch.Tensor, focus: str) -> torch.Tensor:
    """``(subjects, grid_points)`` bool: where the focused share of the points is drawn (module doc)."""
    myo = targets[..., 1] > 0.5
    if focus == "myocardium":
        return myo
    if focus != "boundary":
        raise ValueError(f"focus must be 'myocardium' or 'boundary', not {focus!r}")
    shape = grid_shape(coords)
    masks = torch.stack([myo, targets[..., 2] > 0.5]).view(2, targets.shape[0], *shape)
    return boundary_band(masks).any(0).view(targets.shape[0], -1)


class PointSampler:
    """Draw per-step point subsets for a batch of subjects.

    Args:
        coords: ``(grid_points, 3)`` canonical coordinates shared by all subjects, or per subject
            ``(subjects, grid_points, 3)`` (e.g. each with its own z extent).
        targets: ``(subjects, grid_points, 3)`` = (intensity, myocardium, scar) per voxel, fp32.
        points: points per subject per step (``None``: full grid).
        focus_fraction: share of the points drawn from the focus voxels.
        generator: torch generator for reproducible draws, shared by the batch (see ``sample``).
        focus: ``"myocardium"`` or ``"boundary"`` (module doc).

    Attributes: ``focus (subjects, grid_points)`` bool, ``focus_counts (subjects,)``.
    """

    def __init__(self, coords: torch.Tensor, targets: torch.Tensor, points: int | None, focus_fraction: float = 0.25,
                 generator: torch.Generator | None = None, focus: str = "myocardium"):
        self.coords, self.targets = coords, targets
        n_grid = coords.shape[-2]
        self.full = points is None or points >= n_grid
        self.points = n_grid if self.full else int(points)
        self.generator = generator
        B = targets.shape[0]
        self.n_focus_pts = 0 if self.full else int(round(self.points * focus_fraction))
        # per-subject focus voxel indices, padded; a subject without myocardium keeps uniform points
        where = focus_mask(coords, targets, focus) if self.n_focus_pts else targets[..., 1] > 0.5
        self.focus, self.focus_counts = where, where.sum(1)
        self.has_focus = self.focus_counts > 0
        width = max(int(self.focus_counts.max()), 1)
        dev = targets.device
        self.focus_idx = torch.zeros(B, width, dtype=torch.long, device=dev)
        for b in range(B):
            idx = torch.nonzero(where[b]).squeeze(1)
            self.focus_idx[b, : len(idx)] = idx
        draws = 0 if self.full else B  # the random draws are made on the CPU (generators are CPU ones)
        self.idx_buf, self.u_buf = torch.empty(draws, self.points, dtype=torch.long), torch.empty(draws, self.n_focus_pts)
        self.coords_buf = torch.empty(B, self.points, 3, device=dev)
        self.target_buf = torch.empty(B, self.points, targets.shape[-1], device=dev)

    def sample(self, rows: torch.Tensor, generators: list[torch.Generator] | None = None, with_weights: bool = False):
        """Coordinates ``(b, points, 3)`` and targets ``(b, points, 3)`` for subjects ``rows`` (b,), and with
        ``with_weights`` the importance weights ``(b, points)`` (module doc) as a third item.

        ``generators``: one per row, each drawing that row's points (default: ``self.generator`` for all).
        """
        b = len(rows)
        if self.full:
            c = self.coords[rows] if self.coords.dim() == 3 else self.coords.unsqueeze(0).expand(b, -1, -1)
            ones = torch.ones(b, self.points, device=self.targets.device)
            return (c, self.targets[rows], ones) if with_weights else (c, self.targets[rows])
        n_grid = self.coords.shape[-2]
        dev = self.targets.device
        k = self.n_focus_pts
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
            pick = (u.to(dev) * self.focus_counts[rows].unsqueeze(1)).long()
            focus_points = torch.gather(self.focus_idx[rows], 1, pick)
            idx[:, :k] = torch.where(self.has_focus[rows].unsqueeze(1), focus_points, idx[:, :k])
        c, t = self.coords_buf[:b], self.target_buf[:b]
        flat = (idx + rows.unsqueeze(1) * n_grid).view(-1)
        if self.coords.dim() == 3:
            torch.index_select(self.coords.view(-1, 3), 0, flat, out=c.view(-1, 3))
        else:
            torch.index_select(self.coords, 0, idx.view(-1), out=c.view(-1, 3))
        torch.index_select(self.targets.view(-1, self.targets.shape[-1]), 0, flat, out=t.view(-1, t.shape[-1]))
        return (c, t, self.importance_weights(rows, idx)) if with_weights else (c, t)

    def importance_weights(self, rows: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """``(b, points)`` weights ``1 / (N q_i)`` of the drawn grid indices ``idx (b, points)`` (module doc);
        all ones for a subject without focus voxels (its points are uniform)."""
        n_grid, f = self.coords.shape[-2], self.n_focus_pts / self.points
        counts = self.focus_counts[rows].to(torch.float32).clamp_min(1).unsqueeze(1)
        in_focus = torch.gather(self.focus[rows], 1, idx)
        w = 1.0 / ((1.0 - f) + in_focus * (f * n_grid / counts))
        return torch.where(self.has_focus[rows].unsqueeze(1), w, torch.ones_like(w))
