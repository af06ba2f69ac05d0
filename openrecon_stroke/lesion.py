"""Lesion segmentation runner, driven entirely by a :class:`~openrecon_stroke.model_card.ModelCard`:
resample the inputs onto the network grid, normalise, predict patch-wise (folds averaged,
optional mirroring), map the probability back onto each input grid, threshold, drop small
components, and describe each lesion. A card with an nnU-Net v2 ``preprocessing`` section runs
nnU-Net's own inference instead (:mod:`openrecon_stroke.nnunet`), on the reference series' grid.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from . import lesion_candidates, nnunet
from .model_card import ModelCard
from .runtime import LazySessions
from .sliding_window import predict

log = logging.getLogger(__name__)


def network_grid(card: ModelCard, reference: sitk.Image, brain: sitk.Image | None) -> sitk.Image:
    """Empty image on the network grid: the card's orientation and spacing, covering the brain's
    bounding box (plus the card margin) of ``reference``, or its whole field of view."""
    return brain_box_grid(reference, brain, card.orientation, card.spacing_mm, card.margin_mm)


def brain_box_grid(
    reference: sitk.Image,
    brain: sitk.Image | None,
    orientation: str = "RAS",
    spacing_mm=(1.0, 1.0, 1.0),
    margin_mm: float = 8.0,
) -> sitk.Image:
    """Empty float image with voxel axes along ``orientation`` (ITK code) and ``spacing_mm``,
    covering the bounding box of ``brain`` (on ``reference``'s grid) plus ``margin_mm``."""
    d = np.array(sitk.DICOMOrient(sitk.Image([2, 2, 2], sitk.sitkUInt8), orientation).GetDirection()).reshape(3, 3)
    # index (x, y, z) -> LPS: origin + m @ index
    m = np.array(reference.GetDirection()).reshape(3, 3) * np.array(reference.GetSpacing())
    origin = np.array(reference.GetOrigin())
    if brain is not None and sitk.GetArrayViewFromImage(brain).any():
        # the brain voxels themselves (not their index box, which an oblique grid inflates)
        arr = sitk.GetArrayViewFromImage(brain) > 0
        edge = arr & ~ndimage.binary_erosion(arr)
        idx = np.argwhere(edge)[:, ::-1].astype(float)  # (x, y, z)
    else:
        n = np.array(reference.GetSize()) - 1.0
        idx = np.array([[a, b, c] for a in (0, n[0]) for b in (0, n[1]) for c in (0, n[2])])
    local = (origin + idx @ m.T) @ d  # voxel centres along the network axes
    half = 0.5 * np.abs(d.T @ m).sum(axis=1)  # half a voxel's extent along each network axis
    lo_n = local.min(0) - half - margin_mm
    hi_n = local.max(0) + half + margin_mm
    sp = np.array(spacing_mm, dtype=float)
    size = np.maximum(np.ceil((hi_n - lo_n) / sp).astype(int), 1)
    origin = d @ (lo_n + sp / 2)
    out = sitk.Image([int(s) for s in size], sitk.sitkFloat32)
    out.SetSpacing(tuple(float(s) for s in sp))
    out.SetDirection(tuple(d.flatten()))
    out.SetOrigin(tuple(origin))
    return out


def normalise(a: np.ndarray, mask: np.ndarray | None, how: str) -> np.ndarray:
    sel = a[mask] if (how == "zscore_brain" and mask is not None and mask.any()) else a
    mu, sd = float(sel.mean()), float(sel.std())
    out = (a - mu) / (sd if sd > 0 else 1.0)
    if how == "zscore_brain" and mask is not None:
        out = np.where(mask, out, 0.0)
    return out.astype(np.float32)


@dataclass
class Lesion:
    label: int
    volume_ml: float
    centroid_lps_mm: tuple[float, float, float]
    hemisphere: str
    #: "cortical" (at least half the lesion within ``CORTICAL_MM`` of the brain surface),
    #: "subcortical", or "" when no brain mask was given
    region: str = ""
    #: the input series (contrast) it was described on
    series: str = ""
    #: through the template: the named region holding most of the lesion (e.g. "left frontal
    #: lobe", see :mod:`openrecon_stroke.regions`) and the centroid's MNI coordinates (RAS mm)
    location: str = ""
    mni_mm: tuple[float, float, float] | None = None

    @property
    def reported_volume_ml(self) -> float:
        """The volume as reports show it (mL, 3 decimals)."""
        return round(self.volume_ml, 3)

    @property
    def reported_centroid(self) -> list[float]:
        """The centroid as reports show it (LPS mm, 1 decimal)."""
        return [round(v, 1) for v in self.centroid_lps_mm]

    def as_dict(self) -> dict:
        d: dict = {
            "label": self.label,
            "volume_ml": self.reported_volume_ml,
            "centroid_lps_mm": self.reported_centroid,
            "hemisphere": self.hemisphere,
        }
        if self.region:
            d["region"] = self.region
        if self.series:
            d["series"] = self.series
        if self.location:
            d["location"] = self.location
        if self.mni_mm is not None:
            d["mni_mm"] = [round(v, 1) for v in self.mni_mm]
        return d


#: Distance to the brain surface (mm) under which lesion voxels count as cortical.
CORTICAL_MM = 6.0


def postprocess(
    prob: np.ndarray, voxel_mm3: float, threshold: float, min_lesion_mm3: float, seed: float | None = None
) -> np.ndarray:
    """Binary mask: ``prob >= threshold``, 26-connected components under ``min_lesion_mm3`` removed;
    with ``seed``, also the components whose highest probability stays below ``seed`` (hysteresis:
    a lesion must be certain somewhere, its border may be less so)."""
    # a seed at or under the threshold holds for every component already
    lab, ids = lesion_candidates.label(prob, threshold, seed if seed is not None else 0.0, min_lesion_mm3, voxel_mm3)
    keep = np.zeros(int(lab.max()) + 1, bool)
    keep[ids] = True
    return keep[lab]


def describe(
    mask: np.ndarray,
    image: sitk.Image,
    midline_x_lps: float,
    brain: np.ndarray | None = None,
    locations: tuple[np.ndarray, dict[int, str]] | None = None,
) -> list[Lesion]:
    """Connected lesions of a mask on ``image``'s grid, largest first, labelled 1..n in that
    order. Hemisphere by the side of the brain's mid-sagittal plane (LPS x > midline: patient
    left); region (cortical/subcortical) from the distance to the surface of ``brain``;
    ``location`` (with ``locations``: a label map on the same grid and its names) the named
    label holding most of the lesion's voxels.

    Each lesion is measured inside its own bounding box (not on the whole volume), and its
    distance to the brain surface inside that box widened by ``CORTICAL_MM``, which is enough to
    decide "within ``CORTICAL_MM`` of the surface" exactly.
    """
    lab, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    spacing_zyx = tuple(float(s) for s in image.GetSpacing())[::-1]
    vox = float(np.prod(spacing_zyx)) / 1000.0
    pad = [int(np.ceil(CORTICAL_MM / s)) + 1 for s in spacing_zyx]
    out = []
    for i, box in enumerate(ndimage.find_objects(lab), start=1):
        wide = tuple(slice(max(b.start - p, 0), min(b.stop + p, dim)) for b, p, dim in zip(box, pad, lab.shape))
        sel = lab[wide] == i
        zyx = np.argwhere(sel).mean(0) + [w.start for w in wide]
        pt = image.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in zyx[::-1]))
        region = ""
        if brain is not None:
            around = brain[wide]
            if around.all():  # no surface within CORTICAL_MM (and the transform needs a background voxel)
                region = "subcortical"
            else:
                depth = ndimage.distance_transform_edt(around, sampling=spacing_zyx)
                region = "cortical" if float(np.mean(depth[sel] <= CORTICAL_MM)) >= 0.5 else "subcortical"
        where = ""
        if locations is not None:
            labs = locations[0][wide][sel]
            labs = labs[labs > 0]
            where = locations[1].get(int(np.bincount(labs).argmax()), "") if labs.size else ""
        out.append(
            Lesion(
                i,
                float(sel.sum()) * vox,
                tuple(pt),
                "left" if pt[0] > midline_x_lps else "right",
                region,
                location=where,
            )
        )
    return largest_first(out)


def largest_first(lesions: list[Lesion]) -> list[Lesion]:
    """The lesions sorted by volume, largest first, and labelled 1..n in that order."""
    out = sorted(lesions, key=lambda les: -les.volume_ml)
    for k, les in enumerate(out, start=1):
        les.label = k
    return out


class LesionSegmenter:
    """A card plus its ONNX Runtime sessions (created once, on first use)."""

    def __init__(self, card: ModelCard):
        self.card = card
        self._sessions = LazySessions(card.files, **card.session_options())

    @property
    def sessions(self) -> list:
        return self._sessions.all()

    def load(self) -> None:
        """Create every fold's session now (server start-up) rather than for the first study."""
        self._sessions.all()

    def probability(
        self,
        images: dict[str, sitk.Image],
        brain: sitk.Image | None,
        to_contrast: dict[str, sitk.Transform] | None = None,
        mirror: bool = False,
        overlap: float | None = None,
    ) -> sitk.Image:
        """Lesion probability on the network grid.

        ``images``: one SimpleITK image per card input contrast (each on its own grid);
        ``brain``: brain mask on the grid of the first input; ``to_contrast``: transforms mapping
        points of the first input to each other contrast (registration), identity if absent.
        """
        card = self.card
        if card.preprocessing is not None:
            return self._nnunet_probability(images, brain, to_contrast or {}, mirror)
        ref_key = card.inputs[0]
        grid = network_grid(card, images[ref_key], brain)
        mask = None
        if brain is not None:
            mask = (
                sitk.GetArrayFromImage(
                    sitk.Resample(brain, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
                )
                > 0
            )
        chans = []
        for c in card.inputs:
            tx = (to_contrast or {}).get(c) if c != ref_key else None
            r = sitk.Resample(
                sitk.Cast(images[c], sitk.sitkFloat32),
                grid,
                tx or sitk.Transform(),
                sitk.sitkLinear,
                0.0,
                sitk.sitkFloat32,
            )
            chans.append(normalise(sitk.GetArrayFromImage(r), mask, card.normalisation))
        x = np.stack(chans)
        prob = predict(
            self.sessions,
            x,
            card.window_for(x.shape[1:]),
            overlap=card.overlap if overlap is None else overlap,
            activation=card.activation,
            channel=card.channel,
            mirror_axes=card.mirror_axes if mirror else (),
        )
        if mask is not None:
            prob = np.where(mask, prob, 0.0)
        out = sitk.GetImageFromArray(prob.astype(np.float32))
        out.CopyInformation(grid)
        return out

    def _nnunet_probability(
        self,
        images: dict[str, sitk.Image],
        brain: sitk.Image | None,
        to_contrast: dict[str, sitk.Transform],
        mirror: bool,
    ) -> sitk.Image:
        """nnU-Net's inference on the grid of the reference contrast (the one without a transform):
        the other contrasts are resampled onto it (linear, through their transform), and zeroed
        outside ``brain`` when the card says the model was trained on brain-extracted images."""
        card, pre = self.card, self.card.preprocessing
        assert pre is not None
        ref_key = next(c for c in card.inputs if c not in to_contrast)
        ref = images[ref_key]
        mask = sitk.GetArrayViewFromImage(brain) > 0 if (brain is not None and pre.skull_stripped) else None
        chans = []
        for c in card.inputs:
            im = images[c]
            if c != ref_key:
                tx = to_contrast.get(c) or sitk.Transform()
                im = sitk.Resample(sitk.Cast(im, sitk.sitkFloat32), ref, tx, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
            if mask is not None:
                im = sitk.GetImageFromArray(np.where(mask, sitk.GetArrayFromImage(im), 0).astype(np.float32))
                im.CopyInformation(ref)
            chans.append(im)
        probs = nnunet.predict_images(self.sessions, chans, pre, mirror=mirror)
        out = sitk.GetImageFromArray(np.ascontiguousarray(probs[card.channel], dtype=np.float32))
        out.CopyInformation(ref)
        return out

    def on_grid(self, prob: sitk.Image, image: sitk.Image, transform: sitk.Transform | None = None) -> np.ndarray:
        """Probability on ``image``'s grid (``transform`` maps its points to the network frame)."""
        r = sitk.Resample(prob, image, transform or sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        return sitk.GetArrayFromImage(r)
