"""Where a lesion lies, through the template: MNI coordinates and a named region.

The region map (``models/template/regions.nii.gz`` + ``regions.json``, built by
``models/template/make_regions.py``) labels the template's brain: lobes (approximate planar
boundaries), insula, deep white matter, basal ganglia, thalamus, lateral ventricles, cerebellum
(each left and right) and the brainstem. It is carried once onto a series' own grid through the
series' template transform; each lesion is named after the region holding most of its voxels
(:func:`openrecon_stroke.lesion.describe`).

Coordinates: native points are LPS millimetres; MNI coordinates are RAS millimetres in template
space (x towards the patient's right).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from . import template
from .resample import Box, resample_array


def regions_dir() -> Path:
    from .runtime import models_dir

    return models_dir() / "template"


@lru_cache(maxsize=1)
def load_regions() -> tuple[sitk.Image, dict[int, str]]:
    """The region map (uint8, template space) and its label names."""
    d = regions_dir()
    meta = json.loads((d / "regions.json").read_text())
    img = sitk.ReadImage(str(d / meta["file"]))
    return img, {int(k): v for k, v in meta["labels"].items()}


def regions_on(image: sitk.Image, to_template: sitk.Transform, box: Box | None = None) -> np.ndarray:
    """Region labels on ``image``'s grid (``to_template``: its points -> template points); with
    ``box`` (e.g. the brain's), only there (0 elsewhere)."""
    reg, _ = load_regions()
    return resample_array(reg, image, to_template, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8, box)


def mni_of(point_lps, to_template: sitk.Transform) -> list[float]:
    """MNI coordinates (RAS mm, 1 decimal) of a native point (LPS mm)."""
    p = template.lps_to_mni(np.asarray(to_template.TransformPoint(tuple(float(v) for v in point_lps))))
    return [round(float(v), 1) for v in p]


def name_at(point_lps) -> str:
    """The named region at a template-space point (LPS mm; "" outside every region)."""
    img, names = load_regions()
    idx = img.TransformPhysicalPointToIndex(tuple(float(v) for v in point_lps))
    if any(not 0 <= i < n for i, n in zip(idx, img.GetSize())):
        return ""
    return names.get(int(img[idx]), "")


def lateral_ventricle_ids() -> list[int]:
    """The labels of the region map's left and right lateral ventricles."""
    return [k for k, n in load_regions()[1].items() if "lateral ventricle" in n]


def side_ids() -> tuple[list[int], list[int]]:
    """The labels of the region map's left-hemisphere and right-hemisphere regions (the
    brainstem, on the midline, is in neither)."""
    names = load_regions()[1]
    return (
        [k for k, n in names.items() if n.startswith("left ")],
        [k for k, n in names.items() if n.startswith("right ")],
    )


@lru_cache(maxsize=2)
def regions_on_template(spacing_mm: float) -> np.ndarray:
    """The region map's labels (read-only) on the template grid of ``spacing_mm``
    (:func:`openrecon_stroke.template.template_grid`), nearest-neighbour."""
    reg, _ = load_regions()
    out = resample_array(
        reg, template.template_grid(spacing_mm), sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8
    )
    out.flags.writeable = False
    return out


@lru_cache(maxsize=2)
def lateral_ventricles_on_template(spacing_mm: float) -> np.ndarray:
    """The template's lateral ventricles (boolean, read-only) on the template grid of
    ``spacing_mm`` (:func:`regions_on_template`)."""
    out = np.isin(regions_on_template(spacing_mm), lateral_ventricle_ids())
    out.flags.writeable = False
    return out
