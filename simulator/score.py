"""Score the lesion mask a server returned against the phantom's truth (count, volume, Dice).

    python -m simulator score demo_out/returned_t1.h5 --truth demo_out/study/t1_lesion_mask.nii.gz

Reads the returned ISMRMRD file (``simulator replay --out``), takes its LESION series, and
compares it with the truth mask of the same series written by ``simulator phantom`` (the same
grid: both are on the input series' own voxels). Lesions are 26-connected components. Prints
the figures and whether the demo's acceptance holds: lesion count within 1 of the truth and
total volume within 30 %. Exit status 0 when it holds, 1 when not, 2 on bad input.
"""

from __future__ import annotations

import argparse

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from openrecon_stroke import mrdfile
from openrecon_stroke.geometry import assemble_series

#: the demo's acceptance (issue 15): count within this many lesions, volume within this fraction
COUNT_TOLERANCE = 1
VOLUME_TOLERANCE = 0.30


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("RETURNED", help="ISMRMRD file the server returned (simulator replay --out)")
    p.add_argument("--truth", required=True, help="truth lesion mask of that series (NIfTI, simulator phantom)")


def lesion_series(path: str):
    """The LESION series of a returned file, assembled into a volume."""
    stream = mrdfile.read(path)
    by_series: dict[int, list] = {}
    for im in stream.images:
        by_series.setdefault(int(im.image_series_index), []).append(im)
    for images in by_series.values():
        if images[0].meta.get("SequenceDescriptionAdditional") == "LESION":
            return assemble_series(images)
    raise ValueError(f"{path}: no LESION series in the returned images (was the lesion stage run?)")


def compare(truth: np.ndarray, pred: np.ndarray, voxel_ml: float) -> dict:
    """Count, volume and Dice of a predicted mask against the truth on the same grid."""
    s = np.ones((3, 3, 3), bool)
    truth, pred = truth > 0, pred > 0
    _, n_true = ndimage.label(truth, s)
    _, n_pred = ndimage.label(pred, s)
    both = int(truth.sum() + pred.sum())
    return {
        "n_true": int(n_true),
        "n_pred": int(n_pred),
        "true_ml": float(truth.sum()) * voxel_ml,
        "pred_ml": float(pred.sum()) * voxel_ml,
        "dice": 2.0 * float((truth & pred).sum()) / both if both else 1.0,
    }


def acceptable(fig: dict) -> bool:
    count_ok = abs(fig["n_pred"] - fig["n_true"]) <= COUNT_TOLERANCE
    vol_ok = abs(fig["pred_ml"] - fig["true_ml"]) <= VOLUME_TOLERANCE * fig["true_ml"]
    return count_ok and vol_ok


def run(args) -> int:
    vol = lesion_series(args.RETURNED)
    truth = sitk.GetArrayFromImage(sitk.ReadImage(args.truth))
    if truth.shape != vol.data.shape:
        raise ValueError(f"the truth mask {truth.shape} is not on the returned series' grid {vol.data.shape}")
    fig = compare(truth, vol.data, float(np.prod(vol.grid.spacing)) / 1000.0)
    ok = acceptable(fig)
    print(f"lesions: {fig['n_pred']} found, {fig['n_true']} true (acceptance: within {COUNT_TOLERANCE})")
    print(f"volume:  {fig['pred_ml']:.2f} mL found, {fig['true_ml']:.2f} mL true "
          f"(acceptance: within {VOLUME_TOLERANCE:.0%})")
    print(f"Dice:    {fig['dice']:.3f}")
    print("demo acceptance: " + ("met" if ok else "NOT met"))
    return 0 if ok else 1
