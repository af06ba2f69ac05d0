"""Tissue labels, masks from label maps, smooth random fields and voxel coordinates (the
building blocks every other part of :mod:`simulator.anatomy` uses)."""

from __future__ import annotations

import math
from enum import IntEnum

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from openrecon_stroke.geometry import Grid


class Tissue(IntEnum):
    BACKGROUND = 0
    CSF = 1
    GM = 2
    WM = 3
    DEEP_GM = 4
    CEREBELLUM_GM = 5
    CEREBELLUM_WM = 6
    BRAINSTEM = 7
    EXTRA_CSF = 8
    SKIN = 9
    FAT = 10
    SKULL = 11
    MUSCLE = 12
    EYES = 13
    SPINAL_CORD = 14
    LESION_CORE = 20
    LESION_RIM = 21


#: Labels that make up the brain (brain mask).
BRAIN_LABELS = (Tissue.CSF, Tissue.GM, Tissue.WM, Tissue.DEEP_GM, Tissue.CEREBELLUM_GM,
                Tissue.CEREBELLUM_WM, Tissue.BRAINSTEM, Tissue.LESION_CORE, Tissue.LESION_RIM)
#: The brain plus the extra-cerebral CSF: what brain-extraction masks such as HD-BET's hold.
INTRACRANIAL_LABELS = BRAIN_LABELS + (Tissue.EXTRA_CSF,)
#: Brain tissue proper, where lesions may go.
PARENCHYMA_LABELS = (Tissue.GM, Tissue.WM, Tissue.DEEP_GM, Tissue.CEREBELLUM_GM,
                     Tissue.CEREBELLUM_WM, Tissue.BRAINSTEM)
CEREBRAL_LABELS = (Tissue.GM, Tissue.WM, Tissue.DEEP_GM)
LESION_LABELS = (Tissue.LESION_CORE, Tissue.LESION_RIM)
N_LABELS = 32  # size of per-label lookup tables

#: Hemisphere codes of :func:`hemisphere_split` / :func:`load_hemispheres`.
RIGHT, LEFT = 1, 2
HEMISPHERE_NAMES = {RIGHT: "right", LEFT: "left"}

LESION_KINDS = ("territorial", "lacunar", "cortical", "subcortical", "cerebellar")


def isin_labels(arr: np.ndarray, labels) -> np.ndarray:
    lut = np.zeros(max(N_LABELS, int(arr.max()) + 1 if arr.size else 1), bool)
    lut[[int(v) for v in labels]] = True
    return lut[arr]


def brain_mask(labels: sitk.Image | np.ndarray) -> np.ndarray:
    """Boolean ``(nz, ny, nx)`` brain mask (labels 1-7, 20, 21)."""
    arr = sitk.GetArrayViewFromImage(labels) if isinstance(labels, sitk.Image) else labels
    return isin_labels(np.asarray(arr), BRAIN_LABELS)


def intracranial_mask(labels: sitk.Image | np.ndarray) -> np.ndarray:
    """Boolean ``(nz, ny, nx)`` mask of the brain plus the extra-cerebral CSF (sulci,
    subarachnoid space, basal cisterns): what brain-extraction masks such as HD-BET's hold."""
    arr = sitk.GetArrayViewFromImage(labels) if isinstance(labels, sitk.Image) else labels
    return isin_labels(np.asarray(arr), INTRACRANIAL_LABELS)


# ============================================================================================
# Random fields
# ============================================================================================
def smooth_field(shape, rng: np.random.Generator, sigma_vox: float, *, factor: int = 4) -> np.ndarray:
    """A smooth Gaussian random field of unit standard deviation (float32, ``shape``).

    White noise on a grid ``factor`` times coarser is Gaussian-smoothed there (to correlation
    length ``sigma_vox`` full-resolution voxels) and linearly upsampled: cheap for big volumes.
    """
    shape = tuple(int(s) for s in shape)
    factor = max(1, min(int(factor), int(max(sigma_vox, 1))))
    coarse = tuple(max(2, -(-s // factor) + 2) for s in shape)
    f = ndi.gaussian_filter(rng.standard_normal(coarse).astype(np.float32), sigma_vox / factor,
                            mode="wrap")
    if factor > 1:
        # map full-resolution index i to coarse coordinate (i + 0.5) / factor + 0.5
        coords = [(np.arange(s, dtype=np.float32) + 0.5) / factor + 0.5 for s in shape]
        f = _separable_linear_upsample(f, coords)
    else:
        f = f[tuple(slice(0, s) for s in shape)]
    sd = float(f.std())
    return ((f - f.mean()) / (sd if sd > 0 else 1.0)).astype(np.float32)


def _separable_linear_upsample(a: np.ndarray, coords) -> np.ndarray:
    """Linear interpolation of ``a`` at the outer product of 1-D coordinates (one axis at a time)."""
    for axis, c in enumerate(coords):
        i0 = np.clip(np.floor(c).astype(int), 0, a.shape[axis] - 2)
        w = (c - i0).astype(np.float32)
        shp = [1] * a.ndim
        shp[axis] = -1
        w = w.reshape(shp)
        a = np.take(a, i0, axis=axis) * (1 - w) + np.take(a, i0 + 1, axis=axis) * w
    return a


def signed_distance(mask: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
    """Signed Euclidean distance (mm, float32): outside ``mask``, the distance to the nearest mask
    voxel; inside, minus the distance to the nearest outside voxel (exact for flat borders,
    within ~0.7 voxel otherwise). SimpleITK's multi-threaded Maurer transform; ``spacing`` is
    ``(dx, dy, dz)``."""
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    img = sitk.GetImageFromArray(mask)
    img.SetSpacing(tuple(float(v) for v in spacing))
    d = sitk.SignedMaurerDistanceMap(img, insideIsPositive=False, squaredDistance=False,
                                     useImageSpacing=True)
    d = sitk.GetArrayFromImage(d).astype(np.float32, copy=False)
    d[mask > 0] -= float(min(spacing))  # ITK measures inside distances to the mask's own border voxels
    return d


def rotation_deg(rx_deg: float, ry_deg: float, rz_deg: float) -> np.ndarray:
    """Rotation matrix ``rz @ ry @ rx`` for angles (degrees) about the x, y and z axes."""
    a, b, c = np.deg2rad([rx_deg, ry_deg, rz_deg])
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx




# ============================================================================================
# Hemispheres and coordinates
# ============================================================================================
def lps_axis_coords(grid: Grid, sl=None, axis: int = 0):
    """LPS coordinate ``axis`` (0 = x, 1 = y, 2 = z) of the voxels of ``grid`` (or of the
    sub-box ``sl`` = (z, y, x) slices), broadcastable to the box shape, float32."""
    if sl is None:
        sl = tuple(slice(0, n) for n in grid.shape)
    zi, yi, xi = np.ogrid[sl[0], sl[1], sl[2]]
    a = grid.affine[axis]
    return (a[0] * xi + a[1] * yi + a[2] * zi + a[3]).astype(np.float32)


def lps_coords(grid: Grid, sl=None):
    return tuple(lps_axis_coords(grid, sl, ax) for ax in range(3))


def hemisphere_split(labels: sitk.Image) -> np.ndarray:
    """Left/right split of any label map (uint8 ``(nz, ny, nx)``: 1 = right, 2 = left, 0 = background)
    by the sagittal plane through the centroid of the brain (LPS +x is the patient's left).
    Use :func:`load_hemispheres` for the heads of :func:`load_head`, which is exact for them."""
    grid = Grid.from_sitk(labels)
    arr = sitk.GetArrayViewFromImage(labels)
    bm = brain_mask(arr)
    idx = np.argwhere(bm[::2, ::2, ::2]) * 2
    if idx.size == 0:
        idx = np.argwhere(arr[::2, ::2, ::2] > 0) * 2
    xm = grid.index_to_lps(idx[:, ::-1].astype(float))[:, 0].mean() if idx.size else 0.0
    x = lps_axis_coords(grid, None, 0)
    hemi = np.where(x > xm, LEFT, RIGHT).astype(np.uint8)
    hemi = np.broadcast_to(hemi, arr.shape).copy()
    hemi[arr == 0] = 0
    return hemi
