"""Chronic stroke lesions inserted into *real* heads (test and training data that no generator made).

A real image has no label map, so one is made for it: the MNI head's tissue labels
(:func:`simulator.anatomy.load_head` ``"mni"``, which lie in template space) are carried onto the
image through its registration to the template (:mod:`openrecon_stroke.template`), then grey
matter, white matter and CSF are re-decided voxel by voxel from the image's own intensities. The
simulator's lesion makers (:func:`simulator.anatomy.insert_lesions`) place lesions in that map,
and the lesion is painted into the image:

* a chronic cavity (most lesions): CSF-like core in a gliotic rim (T1-w: rim darker than white
  matter; FLAIR: core dark, rim bright);
* a non-cavitated gliotic lesion: T1-w mildly dark, FLAIR bright throughout.

Painting happens on the bias-corrected image (N4), then the image's bias field is put back;
partial volume at the border blends lesion and tissue, and the image's own fine texture and noise
are kept inside the lesion. All choices come from the generator passed in.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from . import anatomy
from .anatomy import Tissue


def native_labels(image: sitk.Image, brain: sitk.Image, reg, contrast: str) -> tuple[sitk.Image, sitk.Image]:
    """Tissue labels and hemispheres (1 right, 2 left) on ``image``'s grid, from the MNI head
    through ``reg`` (a :class:`~openrecon_stroke.template.TemplateRegistration`), with GM/WM/CSF
    re-decided by intensity inside ``brain``."""
    mni = anatomy.load_head("mni")
    hemi = anatomy.load_hemispheres("mni")
    lab = sitk.GetArrayFromImage(sitk.Resample(mni, image, reg.to_template, sitk.sitkNearestNeighbor, 0))
    hem = sitk.GetArrayFromImage(sitk.Resample(hemi, image, reg.to_template, sitk.sitkNearestNeighbor, 0))
    spacing = np.array(image.GetSpacing())[::-1]
    img = ndi.gaussian_filter(sitk.GetArrayFromImage(sitk.Cast(image, sitk.sitkFloat32)), 0.8 / spacing)
    b = sitk.GetArrayFromImage(sitk.Resample(brain, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0)) > 0
    # tissue intensities of this image, then nearest tissue for every cerebral brain voxel
    # (on the lightly smoothed image, then a 3-voxel median of the class, CSF < GM < WM in space)
    order = (Tissue.CSF, Tissue.GM, Tissue.WM)
    ref = {t: np.median(img[b & (lab == t)]) for t in order if np.any(b & (lab == t))}
    if len(ref) == 3:
        cerebral = b & np.isin(lab, (Tissue.GM, Tissue.WM, Tissue.CSF, Tissue.EXTRA_CSF))
        vals = np.array([ref[k] for k in order])
        cls = np.full(lab.shape, 1, np.int16)
        cls[cerebral] = np.argmin(np.abs(img[cerebral][:, None] - vals[None, :]), axis=1)
        cls = ndi.median_filter(cls, size=3)
        new = np.array(order, np.int16)[cls[cerebral]]
        old = lab[cerebral]
        # CSF that is not next to the ventricles is extra-cerebral CSF
        new = np.where((new == Tissue.CSF) & (old != Tissue.CSF), Tissue.EXTRA_CSF, new)
        lab[cerebral] = new
    lab[~b & (lab > 0) & np.isin(lab, anatomy.BRAIN_LABELS)] = Tissue.EXTRA_CSF
    out, hout = sitk.GetImageFromArray(lab.astype(np.int16)), sitk.GetImageFromArray(hem.astype(np.uint8))
    out.CopyInformation(image)
    hout.CopyInformation(image)
    return out, hout


def paint(
    image: sitk.Image,
    labels_with_lesions: sitk.Image,
    lesion_index: sitk.Image,
    lesions: list[dict],
    contrast: str,
    rng: np.random.Generator,
    bias: sitk.Image | None = None,
    brain: sitk.Image | None = None,
) -> tuple[sitk.Image, list[dict]]:
    """``image`` with the lesions of ``labels_with_lesions`` (core/rim labels) painted in.

    ``lesion_index`` numbers each lesion's voxels (as :func:`simulator.anatomy.insert_lesions`
    returns); ``bias`` is the image's multiplicative bias field (N4), painted values are relative
    to the bias-free image; ``brain``: the image's brain mask (where its CSF level may be read
    when no ventricle is labelled, :func:`_csf_level`). Each lesion dict gains ``appearance``
    ("cavity" or "gliosis").
    Returns the new image (float32, same grid) and the lesion list.
    """
    img = sitk.GetArrayFromImage(sitk.Cast(image, sitk.sitkFloat32))
    field = sitk.GetArrayFromImage(bias) if bias is not None else np.ones_like(img)
    flat = img / np.maximum(field, 1e-3)
    lab = sitk.GetArrayFromImage(labels_with_lesions)
    idx = sitk.GetArrayFromImage(lesion_index)
    brain_mask = sitk.GetArrayFromImage(brain) > 0 if brain is not None else None
    labelled_brain = np.isin(lab, anatomy.BRAIN_LABELS)
    wm = float(np.median(flat[lab == Tissue.WM]))
    csf = _csf_level(flat, lab, brain_mask)
    target = np.zeros_like(flat)
    weight = np.zeros_like(flat)
    spacing = np.array(image.GetSpacing())[::-1]
    texture = 1.0 + 0.05 * anatomy.smooth_field(flat.shape, rng, 2.0 / float(spacing.min()), factor=3)
    for les in lesions:
        sel = idx == les["index"]
        if not sel.any():
            continue
        core = sel & (lab == Tissue.LESION_CORE)
        rim = sel & ~core
        cavity = bool(rng.random() < 0.7)
        les["appearance"] = "cavity" if cavity else "gliosis"
        if contrast == "t1":
            glio = wm * rng.uniform(0.5, 0.8)
            core_v = csf * rng.uniform(0.9, 1.5) if cavity else glio
        else:
            glio = wm * rng.uniform(1.3, 1.9)
            core_v = csf * rng.uniform(0.9, 1.6) if cavity else glio
        target[core] = core_v
        target[rim] = glio
        weight[sel] = 1.0
    # partial volume: soften the lesion's edge by about half a voxel
    alpha = np.clip(ndi.gaussian_filter(weight, 0.5), 0, 1) * labelled_brain
    tgt = ndi.gaussian_filter(target, 0.5) / np.maximum(ndi.gaussian_filter(weight, 0.5), 1e-3)
    fine = flat - ndi.gaussian_filter(flat, 1.0)  # the image's own noise and fine texture
    painted = np.where(alpha > 0, (1 - alpha) * flat + alpha * (tgt * texture + fine), flat)
    out = sitk.GetImageFromArray((np.maximum(painted, 0) * field).astype(np.float32))
    out.CopyInformation(image)
    return out, lesions


def _csf_level(flat: np.ndarray, lab: np.ndarray, brain: np.ndarray | None) -> float:
    """The image's CSF intensity, which a cavity's core is painted near: the median over the
    ventricles (``Tissue.CSF``, inside the brain by construction); without them, over the
    extra-cerebral CSF inside ``brain``. Never over everything labelled extra-cerebral CSF: on a
    head skull-stripped by another tool that is mostly the zero background around the brain, and
    cavities would be painted black (they were, until 2026-12-01, in ``gd_t1``)."""
    ventricles = lab == Tissue.CSF
    if np.count_nonzero(ventricles) >= 50:
        return float(np.median(flat[ventricles]))
    extra = lab == Tissue.EXTRA_CSF
    if brain is not None:
        extra &= brain
    if not extra.any():
        raise ValueError("no CSF to read the image's CSF level from (no ventricles, no CSF inside the brain)")
    return float(np.median(flat[extra]))


def insert(
    image: sitk.Image,
    brain: sitk.Image,
    reg,
    contrast: str,
    rng: np.random.Generator,
    n_lesions: int | None = None,
    kinds=None,
    bias: sitk.Image | None = None,
) -> tuple[sitk.Image, sitk.Image, list[dict]]:
    """Insert chronic stroke lesions into a real image (see the module docstring).

    Returns ``(image_with_lesions, lesion_mask (uint8 0/1 on the image grid), lesions)``.
    """
    labels, hemi = native_labels(image, brain, reg, contrast)
    labels_l, index, lesions = anatomy.insert_lesions(labels, rng, n_lesions, kinds, hemispheres=hemi, ex_vacuo=False)
    out, lesions = paint(image, labels_l, index, lesions, contrast, rng, bias, brain)
    mask = sitk.Cast(index > 0, sitk.sitkUInt8)
    return out, mask, lesions
