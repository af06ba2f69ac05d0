"""Segmentation metrics for lesion masks on one voxel grid (spacing in mm).

* Dice: 2|A n B| / (|A| + |B|) (1 when both are empty).
* Lesion-wise F1: lesions are 26-connected components; a true lesion is detected when any
  predicted voxel overlaps it, a predicted lesion is a true positive when it overlaps any true
  lesion; precision over predicted lesions, recall over true lesions.
* ASD: average symmetric surface distance (mm); HD95: 95th percentile of the symmetric surface
  distances (mm). Undefined (NaN) when either mask is empty.
* Size buckets of true lesions (mL): small < 1, medium 1-10, large >= 10 (the seed work's
  finding was that small lesions gain most from FLAIR, so < 1 mL is kept apart).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

CONNECTIVITY = np.ones((3, 3, 3), bool)
#: (name, lower mL inclusive, upper mL exclusive)
SIZE_BUCKETS = (("small <1 mL", 0.0, 1.0), ("medium 1-10 mL", 1.0, 10.0), ("large >=10 mL", 10.0, np.inf))


def dice(a: np.ndarray | sitk.Image, b: np.ndarray | sitk.Image) -> float:
    """Dice of the non-zero voxels of two masks on one grid (arrays or SimpleITK images)."""
    a = sitk.GetArrayViewFromImage(a) if isinstance(a, sitk.Image) else np.asarray(a)
    b = sitk.GetArrayViewFromImage(b) if isinstance(b, sitk.Image) else np.asarray(b)
    a, b = a > 0, b > 0
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


def _surface(m: np.ndarray) -> np.ndarray:
    return m & ~ndimage.binary_erosion(m, CONNECTIVITY, border_value=0)


def surface_distances(a: np.ndarray, b: np.ndarray, spacing_zyx) -> np.ndarray:
    """Distances (mm) from each surface voxel of ``a`` to ``b``'s surface and vice versa."""
    a, b = a > 0, b > 0
    if not a.any() or not b.any():
        return np.array([])
    sa, sb = _surface(a), _surface(b)
    da = ndimage.distance_transform_edt(~sb, sampling=spacing_zyx)
    db = ndimage.distance_transform_edt(~sa, sampling=spacing_zyx)
    return np.concatenate([da[sa], db[sb]])


def asd(a, b, spacing_zyx) -> float:
    d = surface_distances(a, b, spacing_zyx)
    return float(d.mean()) if d.size else float("nan")


def hd95(a, b, spacing_zyx) -> float:
    d = surface_distances(a, b, spacing_zyx)
    return float(np.percentile(d, 95)) if d.size else float("nan")


def lesion_table(truth: np.ndarray, pred: np.ndarray, spacing_zyx) -> dict:
    """All metrics for one case, overall and per size bucket of the true lesions."""
    truth, pred = truth > 0, pred > 0
    vox_ml = float(np.prod(spacing_zyx)) / 1000.0
    lt, nt = ndimage.label(truth, CONNECTIVITY)
    lp, npred = ndimage.label(pred, CONNECTIVITY)
    t_sizes = np.bincount(lt.ravel(), minlength=nt + 1)[1:] * vox_ml
    detected = np.zeros(nt, bool)
    if nt:
        hit = np.unique(lt[pred & truth])
        detected[hit[hit > 0] - 1] = True
    p_tp = 0
    if npred:
        hitp = np.unique(lp[pred & truth])
        p_tp = int((hitp > 0).sum())
    precision = p_tp / npred if npred else (1.0 if nt == 0 else 0.0)
    recall = float(detected.mean()) if nt else (1.0 if npred == 0 else 0.0)
    f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    buckets: dict[str, dict] = {}
    out: dict = {
        "dice": dice(truth, pred),
        "lesion_f1": f1,
        "lesion_precision": precision,
        "lesion_recall": recall,
        "asd_mm": asd(truth, pred, spacing_zyx),
        "hd95_mm": hd95(truth, pred, spacing_zyx),
        "true_volume_ml": float(truth.sum()) * vox_ml,
        "pred_volume_ml": float(pred.sum()) * vox_ml,
        "n_true": int(nt),
        "n_pred": int(npred),
        "buckets": buckets,
    }
    for name, lo, hi in SIZE_BUCKETS:
        sel = (t_sizes >= lo) & (t_sizes < hi)
        if not sel.any():
            continue
        ids = np.nonzero(sel)[0] + 1
        region = np.isin(lt, ids)
        # Dice of these true lesions against the predicted lesions that touch them
        touching = np.unique(lp[region & pred])
        pr = np.isin(lp, touching[touching > 0])
        buckets[name] = {"n_true": int(sel.sum()), "recall": float(detected[sel].mean()), "dice": dice(region, pr)}
    return out


def summarise(rows: list[dict]) -> dict:
    """Mean of each scalar metric over cases (NaNs ignored) and pooled per-bucket figures."""
    keys = [k for k in rows[0] if k != "buckets"] if rows else []
    out: dict = {k: float(np.nanmean([r[k] for r in rows])) for k in keys}
    buckets: dict[str, dict] = {}
    for name, _, _ in SIZE_BUCKETS:
        rs = [r["buckets"][name] for r in rows if name in r["buckets"]]
        if rs:
            n = sum(b["n_true"] for b in rs)
            buckets[name] = {
                "n_true": n,
                "recall": sum(b["recall"] * b["n_true"] for b in rs) / n,
                "dice": float(np.mean([b["dice"] for b in rs])),
            }
    out["buckets"] = buckets
    return out
