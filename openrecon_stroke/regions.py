"""Where a lesion lies, through the template: MNI coordinates and a named region.

The region map (``models/template/regions.nii.gz`` + ``regions.json``, built by
``models/template/make_regions.py``) labels the template's brain: lobes (approximate planar
boundaries), insula, deep white matter, basal ganglia, thalamus, lateral ventricles, cerebellum
(each left and right) and the brainstem. It is carried once onto a series' own grid through the
series' template transform; each lesion is named after the region holding most of its voxels.

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


def regions_on(image: sitk.Image, to_template: sitk.Transform) -> np.ndarray:
    """Region labels on ``image``'s grid (``to_template``: its points -> template points)."""
    reg, _ = load_regions()
    return sitk.GetArrayFromImage(sitk.Resample(reg, image, to_template, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8))


def locate(lesion: np.ndarray, labels_native: np.ndarray, centroid_lps, to_template: sitk.Transform) -> dict:
    """``{"mni_mm": [x, y, z], "region": name}`` for one lesion (bool mask on the series' grid),
    ``region`` the named region holding most of its voxels ("" when it lies outside them all)."""
    _, names = load_regions()
    mni = template.lps_to_mni(np.asarray(to_template.TransformPoint(tuple(float(v) for v in centroid_lps))))
    lab = labels_native[lesion]
    lab = lab[lab > 0]
    region = names.get(int(np.bincount(lab).argmax()), "") if lab.size else ""
    return {"mni_mm": [round(float(v), 1) for v in mni], "region": region}
