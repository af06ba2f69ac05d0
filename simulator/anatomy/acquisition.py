"""Scan planning and sampling: acquisition grids in any orientation and resampling a head
onto them (with slice thickness)."""

from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from openrecon_stroke.geometry import Grid, Volume

from .labels import brain_mask, rotation_deg

# ============================================================================================
# Scan planning and sampling
# ============================================================================================
#: Read, phase and slice-normal directions (LPS columns) of each named orientation.
#: axial: read R->L (+x), phase A->P (+y), slices inferior->superior (+z) -- as Siemens stores
#: transversal images; sagittal: read A->P, phase S->I, slices left->right (normal -x);
#: coronal: read R->L, phase S->I, slices anterior->posterior; flipped: axial mirrored, read
#: L->R (-x) with phase A->P, so the (right-handed) slice normal points to the feet and slices
#: run superior->inferior; oblique: axial tilted 18 deg about the left-right axis (AC-PC-like)
#: and 12 deg about the anterior-posterior axis.
ORIENTATIONS = {
    "axial": ((1, 0, 0), (0, 1, 0)),
    "sagittal": ((0, 1, 0), (0, 0, -1)),
    "coronal": ((1, 0, 0), (0, 0, -1)),
    "flipped": ((-1, 0, 0), (0, 1, 0)),
    "oblique": None,
}
OBLIQUE_TILT_DEG = (18.0, 12.0)


def orientation_direction(orientation: str, rng: np.random.Generator | None = None) -> np.ndarray:
    """3x3 direction matrix (columns read, phase, normal in LPS) of a named orientation. With
    ``rng``, oblique tilts are drawn (15-20 deg and 5-15 deg, random signs) and the other
    orientations get up to ~3 deg of planning imprecision."""
    orientation = orientation.lower()
    if orientation not in ORIENTATIONS:
        raise ValueError(f"unknown orientation {orientation!r}; choose from {', '.join(ORIENTATIONS)}")
    if orientation == "oblique":
        read, phase = np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
        if rng is None:
            ax, ay = OBLIQUE_TILT_DEG
        else:
            ax = rng.uniform(15, 20) * rng.choice([-1, 1])
            ay = rng.uniform(5, 15) * rng.choice([-1, 1])
        rot = rotation_deg(ax, ay, 0.0)
    else:
        read, phase = (np.asarray(v, float) for v in ORIENTATIONS[orientation])
        rot = np.eye(3) if rng is None else rotation_deg(*rng.uniform(-3, 3, 3))
    read, phase = rot @ read, rot @ phase
    return np.stack([read, phase, np.cross(read, phase)], axis=1)


def acquisition_grid(label_image: sitk.Image, orientation: str, spacing_mm=(1.0, 1.0, 1.0),
                     rng: np.random.Generator | None = None, *, slab_margin_mm: float = 4.0,
                     inplane_margin_mm: float = 4.0, matrix_multiple: int = 2) -> Grid:
    """Plan a scan of a head: a :class:`Grid` of the named orientation and voxel size.

    The slice direction covers the brain plus ``slab_margin_mm``; the field of view in-plane
    covers the whole head within that slab plus ``inplane_margin_mm``, centred on it; matrix
    sizes are rounded up to multiples of ``matrix_multiple``. ``spacing_mm`` is
    ``(read, phase, slice)``. With ``rng`` the plan varies a little (see
    :func:`orientation_direction`, plus a shift of up to 4 mm).
    """
    d = orientation_direction(orientation, rng)
    spacing = np.asarray(spacing_mm, float)
    if spacing.shape != (3,) or np.any(spacing <= 0):
        raise ValueError(f"spacing_mm must be three positive numbers, got {spacing_mm}")
    src = Grid.from_sitk(label_image)
    arr = sitk.GetArrayViewFromImage(label_image)
    step = 3
    sub = np.asarray(arr[::step, ::step, ::step])
    head = np.argwhere(sub > 0) * step
    brain = np.argwhere(brain_mask(sub)) * step
    if len(head) == 0:
        raise ValueError("the label map is empty")
    if len(brain) == 0:
        brain = head
    ph = src.index_to_lps(head[:, ::-1].astype(float)) @ d  # (n, 3) along read, phase, normal
    pb = src.index_to_lps(brain[:, ::-1].astype(float)) @ d
    lo_n, hi_n = pb[:, 2].min() - slab_margin_mm, pb[:, 2].max() + slab_margin_mm
    in_slab = ph[(ph[:, 2] >= lo_n) & (ph[:, 2] <= hi_n)]
    margin = np.array([inplane_margin_mm, inplane_margin_mm, 0.0])
    lo = np.array([in_slab[:, 0].min(), in_slab[:, 1].min(), lo_n]) - margin
    hi = np.array([in_slab[:, 0].max(), in_slab[:, 1].max(), hi_n]) + margin
    if rng is not None:
        shift = rng.uniform(-4, 4, 3)
        lo, hi = lo + shift, hi + shift
    n = np.ceil((hi - lo) / spacing).astype(int)
    m = max(int(matrix_multiple), 1)
    n[:2] = -(-n[:2] // m) * m
    n = np.maximum(n, 1)
    centre = d @ ((lo + hi) / 2)
    origin = centre - d @ (spacing * (n - 1) / 2)
    return Grid((int(n[2]), int(n[1]), int(n[0])), tuple(spacing), d, origin)


def resample(image: sitk.Image, grid: Grid, interpolator=sitk.sitkLinear,
             slice_thickness_mm: float | None = None, default_value: float = 0.0) -> Volume:
    """Sample ``image`` on ``grid`` (a :class:`Volume`, float32).

    With ``slice_thickness_mm`` (and a non-nearest-neighbour interpolator) each slice
    integrates a Gaussian slice profile of that FWHM: the image is first sampled on slices
    ``k`` times finer than the grid's (at most the source voxel size apart), smoothed along the
    slice normal, then every ``k``-th slice is kept. In-plane, voxels coarser than the source
    are anti-aliased the same way. Labels: use ``sitk.sitkNearestNeighbor`` (never smoothed).
    """
    nz, ny, nx = grid.shape
    dx, dy, dz = grid.spacing
    src_sp = min(image.GetSpacing())
    nearest = interpolator == sitk.sitkNearestNeighbor
    thick = float(slice_thickness_mm or 0.0)
    if nearest or thick <= 1.2 * src_sp:
        data = _sample(image, grid, interpolator, default_value)
        return Volume(data, grid)
    k = max(1, int(math.ceil(dz / src_sp)))
    fine = dz / k
    sig_z = thick / 2.3548 / fine
    pad = int(math.ceil(3 * sig_z))
    normal = grid.direction[:, 2]
    fgrid = Grid(((nz - 1) * k + 1 + 2 * pad, ny, nx), (dx, dy, fine), grid.direction,
                 grid.origin - normal * pad * fine)
    data = _sample(image, fgrid, interpolator, default_value)
    sig_xy = [math.sqrt(max(s * s - src_sp * src_sp, 0.0)) / 2.3548 / s for s in (dy, dx)]
    data = ndi.gaussian_filter(data, [sig_z, sig_xy[0], sig_xy[1]], mode="nearest")
    data = np.ascontiguousarray(data[pad:pad + (nz - 1) * k + 1:k])
    return Volume(data.astype(np.float32, copy=False), grid)


def _sample(image: sitk.Image, grid: Grid, interpolator, default_value: float) -> np.ndarray:
    f = sitk.ResampleImageFilter()
    f.SetSize((grid.shape[2], grid.shape[1], grid.shape[0]))
    f.SetOutputSpacing(grid.spacing)
    f.SetOutputOrigin(tuple(float(v) for v in grid.origin))
    f.SetOutputDirection(tuple(float(v) for v in grid.direction.flatten()))
    f.SetInterpolator(interpolator)
    f.SetDefaultPixelValue(float(default_value))
    f.SetOutputPixelType(sitk.sitkFloat32)
    return sitk.GetArrayFromImage(f.Execute(image)).astype(np.float32, copy=False)
