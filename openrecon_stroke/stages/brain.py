"""Preprocessing stage: HD-BET brain mask, N4 bias correction, T1-w <-> FLAIR registration,
and the study cache that lets a series fuse with one that arrived on an earlier connection.

What later stages find in ``study.shared`` (SimpleITK images on each series' own input grid):

* ``n4[contrast]``: bias-corrected image (float32);
* ``brain_mask[contrast]``: uint8 brain mask;
* ``flair_to_t1``: rigid transform mapping T1-w physical points to FLAIR points (only when the
  registration passed its check), ``registration``: its summary;
* ``reference``: the contrast the brain mask was computed on.

Contrasts taken from the cache appear in ``shared`` but not in ``study.inputs``: nothing is
sent back on their grids (their connection is over).
"""

from __future__ import annotations

import logging
import time

import numpy as np
import SimpleITK as sitk

from ..pipeline import SkipStudy, Stage, StageResult
from ..preprocess import N4Settings, n4_correct, register_rigid
from ..study import CONTRASTS, DerivedSeries, Study
from ..study_cache import study_key

log = logging.getLogger(__name__)

#: A whole adult brain is 900-1700 mL; outside this range the input is not a usable head scan.
BRAIN_ML_RANGE = (500.0, 2600.0)


def _ml(mask: sitk.Image) -> float:
    return float(sitk.GetArrayViewFromImage(mask).sum()) * float(np.prod(mask.GetSpacing())) / 1000.0


def _dilated(mask: sitk.Image, mm: float = 5.0) -> sitk.Image:
    r = [max(1, int(round(mm / s))) for s in mask.GetSpacing()]
    return sitk.BinaryDilate(mask, r)


class Preprocess(Stage):
    name = "preprocess"

    def __init__(self, n4: N4Settings = N4Settings()):
        self.n4 = n4

    def run(self, study: Study) -> StageResult:
        from ..brain_extraction import extract_brain

        res = StageResult()
        timings: dict[str, float] = {}
        images = {k: v.to_sitk() for k, v in study.inputs.items()}
        shared = study.shared
        shared.setdefault("n4", {})
        shared.setdefault("brain_mask", {})

        # earlier series of this study, from the cache
        key = None
        if study.cache is not None:
            infos = [v.info for v in study.inputs.values() if v.info]
            key = study_key(infos[0]) if infos else None
            for c in CONTRASTS:
                if c not in images and key:
                    got = study.cache.get(key, c)
                    if got is not None:
                        cached, meta = got
                        shared["n4"][c] = cached["n4"]
                        shared["brain_mask"][c] = cached["brain_mask"]
                        res.findings[f"{c}_from_earlier_series"] = meta.get("description", True)
                        log.info("using the %s series of this study from the cache (%s)", c,
                                 meta.get("description", ""))

        # brain mask on the best-suited contrast (T1-w when present, here or from the cache: a
        # cached T1-w mask reaches this FLAIR through the registration below)
        ref = "t1" if ("t1" in images or "t1" in shared["brain_mask"]) else "flair"
        mode = study.params["betmode"]
        if ref in images:
            t0 = time.perf_counter()
            mask = extract_brain(images[ref], folds=mode)
            timings["brain_extraction"] = time.perf_counter() - t0
            vol_ml = _ml(mask)
            if not BRAIN_ML_RANGE[0] <= vol_ml <= BRAIN_ML_RANGE[1]:
                raise SkipStudy(
                    f"brain extraction found {vol_ml:.0f} mL of brain in the {ref} series (a whole "
                    f"brain is {BRAIN_ML_RANGE[0]:.0f}-{BRAIN_ML_RANGE[1]:.0f} mL): this does not look "
                    "like a head scan covering the brain, so no stroke analysis was run"
                )
            shared["brain_mask"][ref] = mask
        shared["reference"] = ref

        # N4 inside the (dilated) brain mask where known, else the head
        for c, img in images.items():
            t0 = time.perf_counter()
            m = shared["brain_mask"].get(c)
            shared["n4"][c], _ = n4_correct(img, _dilated(m) if m is not None else None, self.n4)
            timings[f"n4_{c}"] = time.perf_counter() - t0

        # T1-w <-> FLAIR: register, check, carry the mask over
        if "t1" in shared["n4"] and "flair" in shared["n4"]:
            t0 = time.perf_counter()
            reg = register_rigid(shared["n4"]["t1"], shared["n4"]["flair"],
                                 fixed_mask=_dilated(shared["brain_mask"]["t1"], 10.0))
            timings["registration"] = time.perf_counter() - t0
            shared["registration"] = res.findings["registration"] = reg.summary()
            if reg.ok:
                shared["flair_to_t1"] = reg.transform
                if "flair" in images and "flair" not in shared["brain_mask"]:
                    shared["brain_mask"]["flair"] = sitk.Resample(
                        shared["brain_mask"]["t1"], images["flair"], reg.transform.GetInverse(),
                        sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
            else:
                res.warnings.append(
                    f"T1-w/FLAIR registration failed its check ({reg.reason}); the two series are "
                    "analysed separately, not fused"
                )
        for c in images:
            if c not in shared["brain_mask"]:  # FLAIR with a failed registration, or no T1-w
                t0 = time.perf_counter()
                shared["brain_mask"][c] = extract_brain(images[c], folds=mode)
                timings[f"brain_extraction_{c}"] = time.perf_counter() - t0

        for c, vol in study.inputs.items():
            mask = shared["brain_mask"][c]
            arr = sitk.GetArrayFromImage(mask).astype(np.uint8)
            res.derived.append(DerivedSeries(
                name="brain_mask", reference=c, data=arr, kind="mask", description="BRAINMASK",
                comment=f"HD-BET brain mask ({mode})", send_param="sendbrainmask"))
            res.findings[f"brain_volume_ml_{c}"] = round(_ml(mask), 1)
        res.findings["brain_extraction_mode"] = mode
        from ..brain_extraction import get_extractor

        models = dict(study.findings.get("models", {}))
        models["brain_extraction"] = f"{get_extractor().card.get('name', 'HD-BET')} (ONNX, {mode})"
        res.findings["models"] = models
        res.findings["preprocess_timings_s"] = {k: round(v, 2) for k, v in timings.items()}

        if study.cache is not None and key:
            for c in images:
                study.cache.put(key, c, {"n4": shared["n4"][c], "brain_mask": shared["brain_mask"][c]},
                                {"description": study.inputs[c].description})
        elif study.cache is not None and len(images) == 1:
            res.warnings.append("the series carries no study identity (frame of reference / study UID); "
                                "it cannot be fused with a series sent on another connection")
        return res

