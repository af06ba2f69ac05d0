"""Stages every pipeline starts with: input sanity checks and a foreground (head) mask."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..masks import solid_object
from ..study import Study
from .base import SkipStudy, Stage, StageResult
from .results import HEAD_MASK

#: A whole-brain series covers at least this much along every axis (mm) ...
MIN_EXTENT_MM = 60.0
#: ... and has at least this many slices.
MIN_SLICES = 8


class InputCheck(Stage):
    """Refuse inputs the pipeline cannot use (localizers, partial or constant series) and
    repair non-finite voxels (set to 0, with a warning)."""

    name = "input_check"

    def run(self, study: Study) -> StageResult:
        res = StageResult()
        if not study.inputs:
            raise SkipStudy("no image series arrived")
        for key, vol in study.inputs.items():
            bad = ~np.isfinite(vol.data)
            if bad.any():
                vol.data[bad] = 0
                res.warnings.append(f"{key}: {int(bad.sum())} voxels were NaN or infinite and were set to 0")
            nz, ny, nx = vol.grid.shape
            extent = np.array(vol.grid.spacing) * np.array([nx, ny, nz])
            if min(nx, ny, nz) < MIN_SLICES or extent.min() < MIN_EXTENT_MM:
                raise SkipStudy(
                    f"{key} series is {nx}x{ny}x{nz} voxels covering "
                    f"{extent[0]:.0f}x{extent[1]:.0f}x{extent[2]:.0f} mm: a localizer or a partial "
                    f"acquisition? The stroke pipeline needs a whole-brain volume "
                    f"(at least {MIN_SLICES} slices and {MIN_EXTENT_MM:.0f} mm along every axis)"
                )
            lo, hi = float(vol.data.min()), float(vol.data.max())
            if hi - lo <= 1e-6 * max(abs(hi), 1.0):
                raise SkipStudy(f"{key} series is constant (every voxel is {hi:g}); nothing to analyse")
        return res


def foreground_mask(data: np.ndarray) -> np.ndarray:
    """Largest 6-connected object above an Otsu threshold, holes filled (uint8)."""
    img = sitk.GetImageFromArray(data.astype(np.float32))
    fg = sitk.GetArrayFromImage(sitk.OtsuThreshold(img, 0, 1)).astype(bool)
    return solid_object(fg).astype(np.uint8)


class HeadMask(Stage):
    """Foreground (head) mask of every input, on its own grid."""

    name = "head_mask"

    def run(self, study: Study) -> StageResult:
        res = StageResult()
        for key, vol in study.inputs.items():
            mask = foreground_mask(vol.data)
            res.derived.append(HEAD_MASK.on(key, mask, "foreground (head) mask, Otsu threshold"))
            res.findings[f"head_volume_ml_{key}"] = round(float(mask.sum()) * vol.grid.voxel_volume_mm3 / 1000, 2)
        return res
