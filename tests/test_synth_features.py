"""Wall thickness (``synth.features.volume_features``) measures the wall, not the voxel grid or the edge's texture."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from lgesynth.synth.features import volume_features


def _annulus(r_endo_mm: float, r_epi_mm: float, spacing_mm: float) -> np.ndarray:
    """(n, n) bool: a ring of radii ``r_endo_mm`` .. ``r_epi_mm`` sampled at voxel centres ``spacing_mm`` apart."""
    n = int(2 * r_epi_mm / spacing_mm) + 8
    c = (np.arange(n) - (n - 1) / 2) * spacing_mm
    r = np.hypot(*np.meshgrid(c, c, indexing="ij"))
    return (r >= r_endo_mm) & (r < r_epi_mm)


def _wall(slice_2d: np.ndarray, spacing_mm: float, slices: int = 3) -> float:
    label = np.repeat(slice_2d[..., None], slices, axis=2).astype(np.uint8)
    return volume_features(None, label, (spacing_mm, spacing_mm, 5.0))["wall_thickness_mm"]


@pytest.mark.parametrize("spacing_mm", [0.5, 1.0, 1.4])
@pytest.mark.parametrize("r_endo_mm, r_epi_mm", [(20.0, 28.0), (12.0, 17.0)])
def test_a_ring_measures_its_thickness_at_any_in_plane_spacing(spacing_mm, r_endo_mm, r_epi_mm):
    assert _wall(_annulus(r_endo_mm, r_epi_mm, spacing_mm), spacing_mm) == pytest.approx(r_epi_mm - r_endo_mm, abs=0.2)


def test_a_ragged_edge_of_the_same_area_leaves_the_thickness(rng=np.random.default_rng(0)):
    """A third of the edge voxels moved one voxel outwards (a resampled label's staircase beside a smooth
    decoded edge): same area, same wall; an estimate from the distance to the nearest edge voxel would
    read the notches (about 4.5 mm here)."""
    ring = _annulus(20.0, 28.0, 1.0)
    edge = ring & ~ndi.binary_erosion(ring)
    outside = ndi.binary_dilation(ring) & ~ring
    ragged = ring.copy()
    ragged[edge & (rng.random(ring.shape) < 0.3)] = False
    ragged[outside & (rng.random(ring.shape) < 0.3 * edge.sum() / outside.sum())] = True
    assert abs(int(ragged.sum()) - int(ring.sum())) < 0.02 * ring.sum()
    assert _wall(ragged, 1.0) == pytest.approx(_wall(ring, 1.0), abs=0.2)


def test_only_slices_that_enclose_a_cavity_count():
    ring = _annulus(20.0, 28.0, 1.0)
    open_ring = ring.copy()
    open_ring[: ring.shape[0] // 2, ring.shape[1] // 2 - 2: ring.shape[1] // 2 + 2] = False  # a cut through one side
    disc = _annulus(0.0, 10.0, 1.0)
    pad = (ring.shape[0] - disc.shape[0]) // 2
    disc = np.pad(disc, pad)[: ring.shape[0], : ring.shape[1]]
    label = np.stack([open_ring, ring, ring, disc], axis=2).astype(np.uint8)
    assert volume_features(None, label, (1.0, 1.0, 5.0))["wall_thickness_mm"] == pytest.approx(_wall(ring, 1.0))
    no_ring = np.stack([open_ring, disc], axis=2).astype(np.uint8)
    assert np.isnan(volume_features(None, no_ring, (1.0, 1.0, 5.0))["wall_thickness_mm"])
