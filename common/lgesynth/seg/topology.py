"""U-Net topology for a patch at a spacing, after nnU-Net: pooling, kernel sizes and patch size.

:func:`pool_and_kernels` repeatedly halves every axis that (a) still has at least 2 × ``MIN_EDGE``
voxels and (b) whose current spacing is within 2× of the finest current spacing, so thick-slice
stacks pool in plane first, (2, 2, 1), and pool through-plane only once the in-plane spacing has
caught up. A kernel is 3 on an axis whose spacing is within 2× of the finest, else 1 ((3, 3, 1)
while the slices are too coarse); the bottleneck is always 3. The patch is padded to a multiple of
2^(pools per axis). :func:`shrink_patch` and :func:`cap_patch` step a patch down to sizes that
topology accepts (for a compute budget, and for the paper-size voxel cap).
"""

from __future__ import annotations

import math

MIN_EDGE = 4  # voxels per axis in the bottleneck (nnU-Net's min feature map edge)
MIN_PATCH_EDGE = 32  # budget shrinking stops here (voxels per shrinkable axis)
PAPER_PATCH_VOXELS = {2: 512 ** 2, 3: 128 ** 3}  # stand-in for nnU-Net's 8 GB VRAM estimate


def pool_and_kernels(spacing_mm, patch, min_edge: int = MIN_EDGE) -> dict:
    """Strides and kernel sizes per stage for a patch (voxels per axis) at a spacing (mm per axis).

    Returns:
        ``{"strides": [[1,..], ...], "kernel_size": [...], "pools_per_axis": [...], "patch_size": [...]}``:
        one stride and one kernel per stage (the first stride is 1), the patch padded to a multiple
        of 2^(pools per axis).
    """
    dims = len(spacing_mm)
    spacing = [float(s) for s in spacing_mm]
    size = [int(p) for p in patch]
    strides, kernels, pools = [[1] * dims], [], [0] * dims
    kernel = [1] * dims
    while True:
        poolable = [a for a in range(dims) if size[a] >= 2 * min_edge]
        if poolable:
            finest = min(spacing[a] for a in poolable)
            poolable = [a for a in poolable if spacing[a] < 2 * finest]
        # halving a lone axis is only worth it while it keeps >= 1.5 bottleneck edges (as nnU-Net)
        if not poolable or (len(poolable) == 1 and size[poolable[0]] < 3 * min_edge):
            break
        finest_all = min(spacing)
        kernel = [3 if kernel[a] == 3 or spacing[a] < 2 * finest_all else 1 for a in range(dims)]
        kernels.append(kernel)
        strides.append([2 if a in poolable else 1 for a in range(dims)])
        for a in poolable:
            pools[a] += 1
            spacing[a] *= 2
            size[a] = math.ceil(size[a] / 2)
    kernels.append([3] * dims)
    padded = [math.ceil(int(p) / 2 ** k) * 2 ** k for p, k in zip(patch, pools)]
    return {"strides": strides, "kernel_size": kernels, "pools_per_axis": pools, "patch_size": padded}


def shrink_patch(spacing, patch, axes, floor: int = MIN_PATCH_EDGE):
    """The next smaller valid patch: cut the longest (mm) of ``axes`` to the next size that its
    topology accepts; None when no axis can shrink above ``floor`` with >= 3 stages left."""
    for axis in sorted(axes, key=lambda a: -patch[a] * spacing[a]):
        for raw in range(patch[axis] - 1, floor - 1, -1):
            trial = list(patch)
            trial[axis] = raw
            topo = pool_and_kernels(spacing, trial)
            if len(topo["strides"]) >= 3 and math.prod(topo["patch_size"]) < math.prod(patch):
                return topo["patch_size"]
    return None


def cap_patch(target, shape, dims, axis, aniso, axes=None) -> list[int]:
    """Median shape (voxels at the target spacing ``target``, mm) on ``axes`` (default all), shrunk until
    it fits ``PAPER_PATCH_VOXELS[dims]``; the slice ``axis`` of anisotropic 3D data is never cut."""
    axes = list(range(3)) if axes is None else axes
    spacing, patch = [float(target[a]) for a in axes], [int(shape[a]) for a in axes]
    shrinkable = [i for i, a in enumerate(axes) if not (dims == 3 and aniso and a == axis)]
    while math.prod(pool_and_kernels(spacing, patch)["patch_size"]) > PAPER_PATCH_VOXELS[dims]:
        smaller = shrink_patch(spacing, pool_and_kernels(spacing, patch)["patch_size"], shrinkable)
        if smaller is None:
            break
        patch = smaller
    return patch
