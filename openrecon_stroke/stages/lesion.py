"""Lesion segmentation stage: the shipped ONNX ensembles, driven by their model cards.

Which model runs (each an ensemble of folds, voxel-wise mean probability):

* T1-w and FLAIR both known (same connection or the study cache) and registered: the late-fusion
  model, on the T1-w frame, FLAIR brought in through the checked rigid transform;
* one contrast only, or a registration that failed its check: the single-contrast model of each
  series present, each on its own frame (with a warning saying what was lost).

The probability is mapped back onto every input series' own grid, thresholded (UI
``lesionthreshold``, default 0.2) and cleaned of components under ``minlesion`` mm³ (default 10).
Findings: per-lesion volume (mL), centroid (LPS, mm), hemisphere and cortical/subcortical
region, described on the reference series (T1-w when present). The probability itself stays in
:class:`~.results.LesionResult` (``probability``) for offline writers.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..lesion import Lesion, LesionSegmenter, describe, postprocess
from ..model_card import ModelCard
from ..runtime import ModelCache, model_folder
from ..study import Study
from .base import Stage, StageResult
from .results import LESION_MASK, BrainResult, LesionResult, SeriesRegistration

log = logging.getLogger(__name__)

MODEL_FOLDERS = {("t1", "flair"): "fusion", ("t1",): "t1", ("flair",): "flair"}

_segmenters: ModelCache[Path, LesionSegmenter] = ModelCache(lambda folder: LesionSegmenter(ModelCard.load(folder)))


def get_segmenter(inputs: tuple[str, ...]) -> LesionSegmenter:
    """The (process-wide, loaded once) segmenter for a contrast combination, from its
    sub-folder of the lesion models folder (:func:`openrecon_stroke.runtime.model_folder`)."""
    folder = model_folder("lesion") / MODEL_FOLDERS[inputs]
    if not (folder / "card.json").is_file():
        raise FileNotFoundError(
            f"no lesion model for {'+'.join(inputs)} at {folder} (the image was built without "
            "models/lesion; rebuild it, or train with models/lesion/train_all.sh)"
        )
    return _segmenters.get(folder)


class LesionSegmentation(Stage):
    name = "lesion"
    reads = (BrainResult,)
    optional = (SeriesRegistration,)
    writes = (LesionResult,)

    def warm_up(self) -> None:
        for inputs in MODEL_FOLDERS:
            get_segmenter(inputs).load()

    def run(self, study: Study) -> StageResult:
        brain = study.need(BrainResult)
        reg = study.result(SeriesRegistration)
        res = StageResult()
        n4, brains = brain.n4, brain.brain_mask
        flair_to_t1 = reg.flair_to_t1 if reg is not None else None
        thr = float(study.params["lesionthreshold"])
        min_mm3 = float(study.params["minlesion"])

        # which model(s): (contrasts it reads, transforms to its other contrasts)
        runs: list[tuple[tuple[str, ...], dict[str, sitk.Transform]]] = []
        if "t1" in n4 and "flair" in n4 and flair_to_t1 is not None:
            runs.append((("t1", "flair"), {"flair": flair_to_t1}))
        else:
            for c in ("t1", "flair"):
                if c in study.inputs:
                    runs.append(((c,), {}))
            if "t1" in n4 and "flair" in n4:
                res.warnings.append(
                    "lesion segmentation ran on each series alone (T1-w/FLAIR not fused, "
                    "registration failed): expect lower sensitivity for small lesions"
                )
            elif "flair" not in n4:
                res.warnings.append(
                    "FLAIR missing: lesions were segmented on T1-w alone, which misses "
                    "more small lesions; add the FLAIR series for the fused model"
                )
            elif "t1" not in n4:
                res.warnings.append("T1-w missing: lesions were segmented on FLAIR alone")

        lesions_out: list[Lesion] | None = None
        used = []
        probability: dict[str, np.ndarray] = {}
        for inputs, to_contrast in runs:
            seg = get_segmenter(inputs)
            card = seg.card
            used.append(f"{card.name} {card.version} ({len(card.files)} folds)")
            if card.status == "experimental":
                res.warnings.append(
                    f"lesion model {card.name} is experimental ({card.status_note or 'not validated'}); "
                    "do not interpret its masks clinically"
                )
            ref = inputs[0]
            prob = seg.probability({c: n4[c] for c in inputs}, brains[ref], to_contrast)
            # onto every input series this model speaks for
            targets = list(study.inputs) if len(inputs) > 1 else [c for c in inputs if c in study.inputs]
            for c in targets:
                img = n4[c]
                # points of series c -> points of the reference frame
                tx = None
                if c != ref:
                    tx = to_contrast[c].GetInverse()
                p = seg.on_grid(prob, img, tx)
                inside = sitk.GetArrayViewFromImage(brains[c]) > 0
                p = np.where(inside, p, 0.0)
                probability[c] = p.astype(np.float32)
                vol = study.inputs[c]
                mask = postprocess(p, vol.grid.voxel_volume_mm3, thr, min_mm3)
                comment = f"stroke lesion, {card.name} {card.version}, p>={thr:g}, >= {min_mm3:g} mm3"
                res.derived.append(LESION_MASK.on(c, mask.astype(np.uint8), comment))
                if lesions_out is None or c == "t1":
                    lesions_out = self._describe(mask, img, inside, c)
        res.results.append(LesionResult(lesions=lesions_out or [], model="; ".join(used), probability=probability))
        return res

    @staticmethod
    def _describe(mask: np.ndarray, img: sitk.Image, brain: np.ndarray, contrast: str) -> list[Lesion]:
        if not mask.any():
            return []
        zyx = np.argwhere(brain).mean(0)[::-1]
        midline = img.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in zyx))[0]
        out = describe(mask, img, midline, brain)
        for les in out:
            les.series = contrast
        return out
