"""Detection checks: a lesion mask and an anomaly map against a study's truth masks.

Written for any lesion or anomaly model, shipped or to come: a model brings its own floors
(:class:`LesionFloors`, :class:`AnomalyFloors`), each with the source of its numbers, and the
checks raise ``AssertionError`` with every figure in the message. The arithmetic is here, in
plain numpy/scipy, independent of ``openrecon_stroke.metrics``. Both checks fail on an all-zero
mask or map whatever the floors (``test_detection_checks_bite`` shows it).

Conventions: arrays are ``(nz, ny, nx)`` on one grid (the input series' own); lesions are
26-connected components; volumes in mL from ``voxel_ml``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

CONNECTIVITY = np.ones((3, 3, 3), bool)


@dataclass(frozen=True)
class LesionFloors:
    """Lowest acceptable figures for a lesion mask on one study.

    recall: fraction of true lesions that the mask touches (> 0 required: an empty mask has 0).
    dice: voxel Dice with the true lesion mask (> 0 required).
    max_volume_ratio: predicted / true lesion volume above which the mask is rejected (a mask
        that marks the whole brain has perfect recall; this and ``dice`` catch it).
    source: where the numbers come from (the measurement, its date or commit, the margin).
    """

    recall: float
    dice: float
    max_volume_ratio: float
    source: str

    def __post_init__(self):
        if not (0 < self.recall <= 1 and 0 < self.dice <= 1 and self.max_volume_ratio > 0):
            raise ValueError(f"floors must be positive (an empty mask must fail): {self}")
        if not self.source:
            raise ValueError("every floor needs a stated source")


@dataclass(frozen=True)
class AnomalyFloors:
    """Lowest acceptable figures for an anomaly map on one study.

    ratio: mean score inside the true lesions over the mean score in remote brain (brain
        farther than ``remote_mm`` from any true lesion); must exceed this (> 0; an all-zero map
        gives 0 / 0 and fails).
    remote_mm: distance (mm) from the lesions beyond which brain counts as remote.
    source: where the numbers come from.
    """

    ratio: float
    remote_mm: float
    source: str

    def __post_init__(self):
        if not (self.ratio > 0 and self.remote_mm >= 0):
            raise ValueError(f"floors must be positive: {self}")
        if not self.source:
            raise ValueError("every floor needs a stated source")


def lesion_figures(truth: np.ndarray, pred: np.ndarray, voxel_ml: float) -> dict:
    """Recall over true lesions, voxel Dice, and the volumes (mL) of a predicted mask."""
    truth, pred = np.asarray(truth) > 0, np.asarray(pred) > 0
    if truth.shape != pred.shape:
        raise AssertionError(f"prediction shape {pred.shape} is not the truth's grid {truth.shape}")
    labels, n_true = ndimage.label(truth, CONNECTIVITY)
    hit = np.unique(labels[truth & pred])
    detected = int((hit > 0).sum())
    both = int(truth.sum()) + int(pred.sum())
    return {
        "n_true": int(n_true),
        "detected": detected,
        "recall": detected / n_true if n_true else float("nan"),
        "dice": 2.0 * int((truth & pred).sum()) / both if both else float("nan"),
        "true_ml": float(truth.sum()) * voxel_ml,
        "pred_ml": float(pred.sum()) * voxel_ml,
    }


def check_lesions(truth: np.ndarray, pred: np.ndarray, voxel_ml: float, floors: LesionFloors,
                  what: str = "lesion mask") -> dict:
    """Raise AssertionError unless ``pred`` finds the true lesions as well as ``floors`` say.
    Returns the figures (for logging)."""
    f = lesion_figures(truth, pred, voxel_ml)
    if f["n_true"] == 0:
        raise AssertionError(f"{what}: the truth mask holds no lesion; nothing to check against")
    problems = []
    if not f["recall"] >= floors.recall:
        problems.append(f"recall {f['recall']:.3f} < {floors.recall}")
    if not f["dice"] >= floors.dice:
        problems.append(f"Dice {f['dice']:.3f} < {floors.dice}")
    if f["pred_ml"] > floors.max_volume_ratio * f["true_ml"]:
        problems.append(f"predicted {f['pred_ml']:.1f} mL > {floors.max_volume_ratio} x true {f['true_ml']:.1f} mL")
    if problems:
        raise AssertionError(f"{what}: " + "; ".join(problems)
                             + f" ({f['detected']} of {f['n_true']} true lesions touched; floors: {floors.source})")
    return f


def anomaly_figures(truth: np.ndarray, score: np.ndarray, brain: np.ndarray, spacing_zyx,
                    remote_mm: float) -> dict:
    """Mean anomaly score inside the true lesions and in remote brain."""
    truth, brain = np.asarray(truth) > 0, np.asarray(brain) > 0
    score = np.asarray(score, dtype=np.float64)
    if not (truth.shape == score.shape == brain.shape):
        raise AssertionError(f"shapes differ: truth {truth.shape}, map {score.shape}, brain {brain.shape}")
    dist = ndimage.distance_transform_edt(~truth, sampling=spacing_zyx) if truth.any() else np.full(truth.shape, np.inf)
    remote = brain & (dist > remote_mm)
    inside = float(score[truth].mean()) if truth.any() else float("nan")
    far = float(score[remote].mean()) if remote.any() else float("nan")
    return {"inside": inside, "remote": far, "remote_voxels": int(remote.sum()),
            "ratio": inside / far if far > 0 else (float("inf") if inside > 0 else float("nan"))}


def check_anomaly(truth: np.ndarray, score: np.ndarray, brain: np.ndarray, spacing_zyx,
                  floors: AnomalyFloors, what: str = "anomaly map") -> dict:
    """Raise AssertionError unless the map scores the true lesions above remote brain by
    ``floors.ratio``. Returns the figures."""
    f = anomaly_figures(truth, score, brain, spacing_zyx, floors.remote_mm)
    if not np.isfinite(f["inside"]) or f["remote_voxels"] == 0:
        raise AssertionError(f"{what}: no true lesion or no remote brain to compare ({f})")
    if not (f["inside"] > 0 and f["ratio"] > floors.ratio):
        raise AssertionError(
            f"{what}: mean score in the true lesions {f['inside']:.4g} vs remote brain {f['remote']:.4g} "
            f"(ratio {f['ratio']:.3g}, floor {floors.ratio}; floors: {floors.source})")
    return f


# --------------------------------------------------------------------------------------------
# the shipped models' floors (a new model brings its own, measured the same way)
# --------------------------------------------------------------------------------------------
#: Measured 2026-11-30 (template-space models lesion-voxel-* 0.2.0 at their card operating
#: points, normative-mni152 anomaly map) on the seed-11 phantom (``studies.PHANTOM_ARGS``: two
#: subcortical lesions, 2.7 and 3.3 mL) with ``process``, per input and grid:
#: fusion on T1-w: recall 2/2, Dice 0.898, 7.44 mL predicted for 6.25 mL true (1.19x);
#: fusion on FLAIR: 2/2, Dice 0.872, 7.49 mL for 5.91 mL (1.27x);
#: T1-w model alone: 2/2, Dice 0.874, 5.00 mL for 6.25 mL (0.80x);
#: FLAIR model alone: 2/2, Dice 0.752, 4.62 mL for 5.91 mL (0.78x).
#: (The native-space models 0.1.0 they replace: Dice 0.041-0.094, 14-33x the true volume.)
#: Floors: both lesions, two thirds of the lowest Dice, about 1.5x the largest volume ratio
#: (a mask of the whole brain is ~220x the true volume).
SHIPPED_LESION = LesionFloors(recall=1.0, dice=0.5, max_volume_ratio=2.0,
                              source="lesion-voxel-* 0.2.0 on the seed-11 phantom with process, measured "
                                     "2026-11-30: recall 2/2, Dice 0.75-0.90, 0.78-1.27x the true volume")
#: Mean anomaly score inside the true lesions over remote brain (> 10 mm from them), measured
#: the same day on the same four outputs (served through the MRD server) with normative-mni152
#: 0.2.0 (intensity and left-right difference): 9.1 and 9.3 (fused, T1-w / FLAIR grid), 14.1
#: (T1-w alone), 5.0 (FLAIR alone); with 0.1.0 (intensity only): 7.9, 8.1, 13.3, 3.85. Floor 2.5.
#: (The flow model it replaced: 1.65-1.69.)
SHIPPED_ANOMALY = AnomalyFloors(ratio=2.5, remote_mm=10.0,
                                source="normative-mni152 0.2.0 map, seed-11 phantom served, measured "
                                       "2026-11-30: ratio 5.0-14.1")
