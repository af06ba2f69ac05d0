"""Anomaly detection with a rectified-flow model (REFLECT-style), on ONNX Runtime.

The network predicts a velocity field v(x_t, t, contrast); integrating ``steps`` Euler steps
from the input brain (t = 0) gives its pseudo-healthy version (t = 1). The anomaly score is the
smoothed absolute difference between the two, divided by a per-contrast scale measured on
healthy calibration brains, averaged over the contrasts present, and finally divided by the
threshold fixed on those healthy brains: **a score of 1 is the anomaly threshold** in every
study, whatever the scanner or contrast.

All arrays here are on the model's network grid (RAS, ``spacing_mm``, the brain's bounding
box plus a margin; axes (z, y, x)) and z-scored inside the brain, exactly as in training.

The model is data plus its card (``models/anomaly/card.json``): file and sha256, contrasts and
their channel flag, spacing, normalisation, default steps, smoothing, per-contrast scales and the
thresholds per contrast combination (written by ``models/anomaly/calibrate.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TypedDict

import numpy as np
from scipy import ndimage

from .model_card import AnomalyCard
from .resample import box_of
from .runtime import LazySessions, ModelCache, model_folder

#: Network input sizes must be multiples of this (three stride-2 levels).
DIVISOR = 8


class AnomalyModel:
    """A card and its ONNX Runtime session (created on first use, shared by threads)."""

    def __init__(self, card: AnomalyCard):
        self.card = card
        self._sessions = LazySessions(card.files, **card.session_options())

    @property
    def session(self):
        return self._sessions.session(0)

    def load(self) -> None:
        """Create the session now (server start-up) rather than for the first study."""
        self._sessions.all()

    def pseudo_healthy(self, x: np.ndarray, contrast: str, steps: int | None = None) -> np.ndarray:
        """``steps`` Euler steps of the flow from ``x`` (z, y, x), whole volume at once."""
        n = int(steps or self.card.steps)
        flag = self.card.contrast_flag[contrast]
        pad = [(0, (-s) % DIVISOR) for s in x.shape]
        y = np.pad(x.astype(np.float32), pad)
        sess = self.session
        name = sess.get_inputs()[0].name
        for k in range(n):
            t = k / n
            inp = np.stack([y, np.full_like(y, t), np.full_like(y, flag)])[None]
            y = y + sess.run(None, {name: inp})[0][0, 0] / n
        return y[tuple(slice(0, s) for s in x.shape)]

    def difference(
        self, x: np.ndarray, brain: np.ndarray, contrast: str, steps: int | None = None, core: np.ndarray | None = None
    ) -> np.ndarray:
        """Smoothed |x - pseudo-healthy(x)| inside the brain, in units of this study's typical
        (median) difference, before calibration.

        The brain's median residual is removed first (a global drift of the flow is not an
        anomaly); dividing by the median smoothed difference makes the values comparable across
        scanners and contrasts before the healthy-brain calibration.
        """
        c = self.card
        sigma = [c.smoothing_mm / s for s in c.spacing_mm[::-1]]
        h = self.pseudo_healthy(np.where(brain, x, 0), contrast, steps)
        r = x - h
        r = r - float(np.median(r[brain])) if brain.any() else r
        d = ndimage.gaussian_filter(np.abs(r) * brain, sigma)
        core = self.core(brain) if core is None else core
        typical = float(np.median(d[core])) if core.any() else 0.0
        return d / typical if typical > 0 else d

    def core(self, brain: np.ndarray) -> np.ndarray:
        """The brain mask eroded by ``edge_mm``: where scores are kept."""
        c = self.card
        return ndimage.binary_erosion(brain, iterations=max(1, int(round(c.edge_mm / min(c.spacing_mm)))))

    def score(self, images: dict[str, np.ndarray], brain: np.ndarray, steps: int | None = None) -> np.ndarray:
        """Anomaly score (1 = threshold) from z-scored images ``{contrast: (z, y, x)}`` on the
        network grid, 0 outside the (eroded) brain."""
        c = self.card
        n = int(steps or c.steps)
        cal = c.calibrated(n)
        core = self.core(brain)
        total = np.zeros(brain.shape, np.float32)
        for contrast, x in images.items():
            total += self.difference(x, brain, contrast, n, core) / cal["scale"][contrast]
        total /= max(len(images), 1)
        return np.where(core, total / cal["threshold"][c.combination(images)], 0.0).astype(np.float32)

    def mask(self, score: np.ndarray, voxel_mm3: float) -> np.ndarray:
        """Binary anomaly mask: score >= 1, components under ``min_volume_mm3`` dropped."""
        from .lesion import postprocess

        return postprocess(score, voxel_mm3, 1.0, self.card.min_volume_mm3)


_models: ModelCache[Path, AnomalyModel] = ModelCache(lambda folder: AnomalyModel(AnomalyCard.load(folder)))


def get_model(folder: str | Path | None = None) -> AnomalyModel:
    """The (process-wide, loaded once) anomaly model of ``folder`` (default: the models folder's
    ``anomaly``, see :func:`openrecon_stroke.runtime.model_folder`)."""
    return _models.get(Path(folder) if folder is not None else model_folder("anomaly"))


class AnomalyLoad(TypedDict):
    """Anomalous volume (mL, 3 decimals): in total, inside the segmented lesion, perilesional
    and remote."""

    load_ml: float
    in_lesion_ml: float
    perilesional_ml: float
    remote_ml: float


def anomaly_load(
    anomaly: np.ndarray, lesion: np.ndarray | None, spacing_zyx, perilesional_mm: float = 5.0
) -> AnomalyLoad:
    """Anomalous volume (mL) in total and split into inside the segmented lesion, perilesional
    (within ``perilesional_mm`` of it) and remote."""
    vox_ml = float(np.prod(spacing_zyx)) / 1000.0
    total = round(float(anomaly.sum()) * vox_ml, 3)
    if lesion is None or not lesion.any():
        return AnomalyLoad(load_ml=total, in_lesion_ml=0.0, perilesional_ml=0.0, remote_ml=total)
    # distances only matter up to perilesional_mm: measured in the lesions' box grown by that
    # much (and a voxel), exact there, far cheaper than on the whole grid
    box = box_of(lesion, [int(np.ceil(perilesional_mm / s)) + 1 for s in spacing_zyx])
    assert box is not None  # the lesion is not empty
    near = np.zeros(lesion.shape, bool)
    dist = ndimage.distance_transform_edt(~lesion[box], sampling=spacing_zyx)
    near[box] = (dist > 0) & (dist <= perilesional_mm)
    inside = int(np.count_nonzero(anomaly & lesion))
    close = int(np.count_nonzero(anomaly[box] & near[box]))
    return AnomalyLoad(
        load_ml=total,
        in_lesion_ml=round(inside * vox_ml, 3),
        perilesional_ml=round(close * vox_ml, 3),
        remote_ml=round((int(np.count_nonzero(anomaly)) - inside - close) * vox_ml, 3),
    )


class CsfMeasures(TypedDict):
    """Ventricle volume (mL, 1 decimal) and atrophy index (CSF fraction of the brain mask)."""

    ventricle_ml: float
    atrophy_index: float


def csf_measures(t1: np.ndarray, brain: np.ndarray, spacing_zyx) -> CsfMeasures | None:
    """Ventricle volume (mL) and an atrophy index (CSF fraction of the brain mask) from a
    bias-corrected T1-w image: CSF is the darkest of three intensity classes (Otsu) inside the
    brain; ventricles are the CSF components at least 12 mm inside the brain surface, largest
    two. None when the image does not separate into three classes (not measurable)."""
    import SimpleITK as sitk

    vals = t1[brain]
    if vals.size < 1000:
        return None
    f = sitk.OtsuMultipleThresholdsImageFilter()
    f.SetNumberOfThresholds(2)
    f.SetNumberOfHistogramBins(128)
    f.Execute(sitk.GetImageFromArray(vals.astype(np.float32).reshape(1, 1, -1)))
    classes = np.digitize(t1, sorted(f.GetThresholds()))
    csf = (classes == 0) & brain
    means = [float(t1[(classes == k) & brain].mean()) if ((classes == k) & brain).any() else np.nan for k in range(3)]
    if not (np.isfinite(means).all() and means[0] < means[1] < means[2]):
        return None
    depth = ndimage.distance_transform_edt(brain, sampling=spacing_zyx)
    inner = csf & (depth >= 12.0)
    lab, n = ndimage.label(inner)
    vox_ml = float(np.prod(spacing_zyx)) / 1000.0
    vent = 0.0
    if n:
        sizes = np.sort(np.bincount(lab.ravel())[1:])[::-1]
        vent = float(sizes[:2].sum()) * vox_ml
    return CsfMeasures(ventricle_ml=round(vent, 1), atrophy_index=round(float(csf.sum()) / float(brain.sum()), 3))
