"""``openrecon-stroke predict``: one model card's model alone on image files, as
``nnUNetv2_predict`` runs a model: no brain extraction, bias correction or registration.

Inputs are NIfTI, DICOM or ISMRMRD (:func:`openrecon_stroke.inputs.load_volume`), one per card
input in the card's order. Outputs, on the first input's own grid (NIfTI, RAS on disk):
``<case>_prob.nii.gz`` (float32 probability of the card's lesion class; for an nnU-Net model
with one foreground label, nnU-Net's foreground probability) and ``<case>_label.nii.gz`` (uint8
label map: nnU-Net's arg-max over its classes, or for the project's own models the lesion
probability at or above the card's threshold).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from . import nnunet
from .lesion import LesionSegmenter
from .model_card import ModelCard

_SUFFIXES = (".nii.gz", ".nii", ".mha", ".nrrd", ".h5", ".mrd", ".dcm")


def case_name(path: str | Path) -> str:
    """``sub-01_T1w_0000.nii.gz`` -> ``sub-01_T1w`` (nnU-Net's channel suffix dropped)."""
    name = Path(path).name
    for s in _SUFFIXES:
        if name.lower().endswith(s):
            name = name[: -len(s)]
            break
    return re.sub(r"_\d{4}$", "", name) or "case"


class _Progress:
    """Logs every tenth of the windows (and the rate), for long CPU runs."""

    def __init__(self, total: int, say: Callable[[str], None]):
        self.total, self.say, self.done, self.t0 = max(total, 1), say, 0, time.perf_counter()

    def __call__(self):
        self.done += 1
        if self.done == self.total or self.done % max(1, self.total // 10) == 0:
            dt = time.perf_counter() - self.t0
            self.say(f"  window {self.done}/{self.total} ({dt:.0f} s)")


def predict_files(
    model: str | Path,
    inputs: list[str],
    out_dir: str | Path,
    mirroring: bool = True,
    say: Callable[[str], None] = print,
    segmenter: LesionSegmenter | None = None,
    timings: dict | None = None,
) -> dict[str, Path]:
    """Run the card in ``model`` (or an already loaded ``segmenter``) on ``inputs``; returns
    ``{"prob": path, "label": path}``. ``timings`` (if given) gets the seconds of each step:
    read, (nnU-Net models:) preprocess, network, restore, (others:) predict, then write."""
    from .inputs import load_volume

    seg = segmenter or LesionSegmenter(ModelCard.load(model))
    card, pre = seg.card, seg.card.preprocessing
    if len(inputs) != len(card.inputs):
        raise ValueError(
            f"{card.name} takes {len(card.inputs)} input(s) ({', '.join(card.inputs)}, in this order); "
            f"got {len(inputs)}"
        )
    sessions = seg.sessions  # loaded before the clock starts, as the server does at start-up
    steps = {} if timings is None else timings
    t0 = time.perf_counter()
    vols = [load_volume(p) for p in inputs]
    images = [v.grid.to_sitk(v.data) for v in vols]
    ref = images[0]
    for i in range(1, len(images)):
        if not vols[i].grid.same_as(vols[0].grid):
            say(f"input {i + 1} ({card.inputs[i]}) is on another grid than input 1: resampled onto it (linear)")
            images[i] = sitk.Resample(images[i], ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    steps["read"] = time.perf_counter() - t0
    if pre is not None:
        n = nnunet.n_windows(vols[0].data.shape, tuple(ref.GetSpacing())[::-1], pre)
        flips = 2 ** len(pre.mirror_axes) if mirroring else 1
        say(
            f"{card.name} {card.version}: nnU-Net v2 inference, {len(card.files)} fold(s) x {flips} mirroring(s), "
            f"about {n} window(s) of {list(pre.patch_size)}"
        )
        probs = nnunet.predict_images(
            sessions, images, pre, mirror=mirroring, progress=_Progress(n * len(sessions), say), timings=steps
        )
        prob = probs[card.channel]
        label = np.argmax(probs, axis=0).astype(np.uint8)
    else:
        say(f"{card.name} {card.version}: {len(card.files)} fold(s), whole field of view (no brain mask)")
        t1 = time.perf_counter()
        prob = seg.on_grid(seg.probability(dict(zip(card.inputs, images)), None, mirror=mirroring), ref)
        label = (prob >= card.threshold).astype(np.uint8)
        steps["predict"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    case = case_name(inputs[0])
    written = {}
    for key, arr in (("prob", prob.astype(np.float32)), ("label", label)):
        f = out / f"{case}_{key}.nii.gz"
        sitk.WriteImage(vols[0].grid.to_sitk(np.ascontiguousarray(arr)), str(f), useCompression=True)
        written[key] = f
    steps["write"] = time.perf_counter() - t1
    say(f"predicted in {time.perf_counter() - t0:.1f} s; wrote {written['prob']} and {written['label']}")
    return written
