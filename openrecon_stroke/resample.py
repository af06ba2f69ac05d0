"""Resampling onto part of a series' grid: only where the answer can be non-zero.

Every template-space result (lesion probability, anomaly score, region labels) is brought back
onto a series' own grid, and is only kept inside its brain mask. A scanner's field of view is
mostly not brain (a 1 mm sagittal T1-w of 176 x 256 x 256 voxels holds its brain in about a
quarter of them), so resampling the whole grid does 3-4x the work needed. :func:`resample_array`
resamples the voxels of a box only and leaves the rest at the default value; each voxel's value
depends on its own physical point alone, so the voxels inside the box are exactly those of a
full resampling.

Boxes are ``(z, y, x)`` tuples of slices into ``sitk.GetArrayFromImage`` arrays.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

Box = tuple[slice, slice, slice]
#: the whole array (for a mask without a box: ``box_of(mask) or FULL``)
FULL: Box = (slice(None), slice(None), slice(None))


def box_of(mask: np.ndarray, margin: int | Sequence[int] = 1) -> Box | None:
    """Bounding box ``(z, y, x)`` of the non-zero voxels of ``mask`` plus ``margin`` voxels on each
    side (one number, or one per axis z, y, x; clipped to the array); None when the mask is empty."""
    margins = [int(margin)] * 3 if isinstance(margin, (int, np.integer)) else [int(m) for m in margin]
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hit = np.flatnonzero(np.any(mask, axis=other))
        if hit.size == 0:
            return None
        m = margins[axis]
        box.append(slice(max(0, int(hit[0]) - m), min(mask.shape[axis], int(hit[-1]) + 1 + m)))
    return (box[0], box[1], box[2])


def sub_grid(ref: sitk.Image, box: Box) -> sitk.Image:
    """An empty float image on the voxels ``box`` of ``ref``'s grid (same spacing and direction)."""
    lo = [box[2].start, box[1].start, box[0].start]  # x, y, z
    size = [box[2].stop - box[2].start, box[1].stop - box[1].start, box[0].stop - box[0].start]
    sub = sitk.Image([int(v) for v in size], sitk.sitkUInt8)
    sub.SetSpacing(ref.GetSpacing())
    sub.SetDirection(ref.GetDirection())
    sub.SetOrigin(ref.TransformIndexToPhysicalPoint([int(v) for v in lo]))
    return sub


def resample_array(
    src: sitk.Image,
    ref: sitk.Image,
    transform: sitk.Transform,
    interpolator: int = sitk.sitkLinear,
    default: float = 0.0,
    pixel: int = sitk.sitkFloat32,
    box: Box | None = None,
) -> np.ndarray:
    """``src`` resampled onto ``ref``'s grid as a ``(z, y, x)`` array (``transform``: points of
    ``ref`` -> points of ``src``, as ``sitk.Resample`` takes it). With ``box``, only its voxels
    are resampled; the rest hold ``default``."""
    if box is None:
        return sitk.GetArrayFromImage(sitk.Resample(src, ref, transform, interpolator, default, pixel))
    part = sitk.GetArrayFromImage(sitk.Resample(src, sub_grid(ref, box), transform, interpolator, default, pixel))
    out = np.full(tuple(ref.GetSize())[::-1], default, dtype=part.dtype)
    out[box] = part
    return out
