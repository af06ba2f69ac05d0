"""Template stage: register the study to the symmetric MNI152 template and bring every known
contrast onto the template grid once, for the stages that work in template space (lesion,
anomaly).

Reads :class:`~.results.BrainResult` (N4 images, brain masks) and, when there is one, the T1-w/
FLAIR :class:`~.results.SeriesRegistration`; writes :class:`~.results.TemplateResult`. The
reference series (T1-w when known, else FLAIR) is registered (:func:`openrecon_stroke.template.register`:
affine, then deformable, each checked); the other contrast reaches the template through the
rigid series transform, composed with the reference's, never resampled twice; a series of this
connection whose T1-w/FLAIR registration failed is registered to the template on its own and
analysed alone (``TemplateResult.alone``). A reference registration
that fails its check leaves no template result: the stages that need it say they were skipped,
and the warning says why.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import SimpleITK as sitk

from .. import template
from ..study import Study
from .base import Stage, StageResult
from .results import BrainResult, SeriesRegistration, TemplateResult

log = logging.getLogger(__name__)

#: Voxel size (mm) of the template grid the template-space stages work on.
GRID_MM = 1.5


class TemplateRegistrationStage(Stage):
    name = "template"
    reads = (BrainResult,)
    optional = (SeriesRegistration,)
    writes = (TemplateResult,)

    def warm_up(self) -> None:
        template.load_template(GRID_MM)
        template.load_template(template.DemonsSettings().working_mm)

    def run(self, study: Study) -> StageResult:
        brain = study.need(BrainResult)
        series = study.result(SeriesRegistration)
        res = StageResult()
        ref = brain.reference
        t0 = time.perf_counter()
        reg, reg_from_cache = self._registration(study, ref, brain)
        if not reg.ok:
            res.warnings.append(
                f"registration to the MNI152 template failed ({reg.reason}); the stages that work in "
                "template space (lesion segmentation, anomaly map) were not run. Check that the series "
                "covers the whole brain and is not a localizer or a heavily artefacted scan"
            )
            return res
        if reg.kind == "affine":
            res.warnings.append(f"template registration: {reg.reason}; anatomy is located less precisely")
        flair_to_t1 = series.flair_to_t1 if series is not None else None
        to_native, to_template = template.series_transforms(reg, ref, brain.n4, flair_to_t1)
        earlier = self._earlier_on_template(study, ref) if reg_from_cache else None
        images = {
            c: earlier[0] if earlier and c == ref else template.resample_to_template(brain.n4[c], tx, GRID_MM)
            for c, tx in to_native.items()
        }
        if earlier:
            mask = earlier[1]
        else:
            mask = template.resample_to_template(brain.brain_mask[ref], to_native[ref], GRID_MM) >= 0.5
            self._keep_on_template(study, ref, images.get(ref), mask)
        alone: dict = {}
        for c in study.inputs:  # a series of this connection that the T1-w/FLAIR registration could not place
            if c in to_native or c not in brain.n4:
                continue
            reg_c = template.register(brain.n4[c], brain.brain_mask[c])
            if not reg_c.ok:
                res.warnings.append(
                    f"registration of the {c.upper()} series to the MNI152 template failed ({reg_c.reason}); "
                    "it was not analysed in template space"
                )
                continue
            tn, tt = template.series_transforms(reg_c, c, (c,), None)
            to_native[c], to_template[c] = tn[c], tt[c]
            images[c] = template.resample_to_template(brain.n4[c], tn[c], GRID_MM)
            alone[c] = template.resample_to_template(brain.brain_mask[c], tn[c], GRID_MM) >= 0.5
            log.info("%s registered to the template on its own (%s)", c, reg_c.kind)
        log.info(
            "template registration (%s) of %s and resampling of %s in %.2f s",
            reg.kind,
            ref,
            "+".join(images),
            time.perf_counter() - t0,
        )
        res.results.append(
            TemplateResult(
                reference=ref,
                registration=reg,
                to_native=to_native,
                to_template=to_template,
                spacing_mm=GRID_MM,
                images=images,
                brain=mask,
                alone=alone,
            )
        )
        return res

    @staticmethod
    def _earlier_on_template(study: Study, ref: str) -> tuple[np.ndarray, np.ndarray] | None:
        """The reference series' image and brain mask on the template grid as an earlier
        connection resampled them (when the reference came from the study cache), else None."""
        key = study.cache_key
        if study.cache is None or not key or ref in study.inputs:
            return None
        got = study.cache.get(key, f"{ref}ontemplate")
        if got is None or abs(float(got[1].get("spacing_mm", -1)) - GRID_MM) > 1e-6:
            return None
        log.info("the %s series on the template grid from the study cache", ref)
        return sitk.GetArrayFromImage(got[0]["image"]), sitk.GetArrayFromImage(got[0]["brain"]) > 0

    @staticmethod
    def _keep_on_template(study: Study, ref: str, image: np.ndarray | None, brain: np.ndarray) -> None:
        """Store what :meth:`_earlier_on_template` reads, for a later connection of this study
        (no series is resampled twice onto the template grid)."""
        key = study.cache_key
        if study.cache is None or not key or ref not in study.inputs or image is None:
            return
        grid = template.template_grid(GRID_MM)
        img, msk = sitk.GetImageFromArray(image.astype(np.float32)), sitk.GetImageFromArray(brain.astype(np.uint8))
        img.CopyInformation(grid)
        msk.CopyInformation(grid)
        study.cache.put_later(key, f"{ref}ontemplate", {"image": img, "brain": msk}, {"spacing_mm": GRID_MM})

    @staticmethod
    def _registration(study: Study, ref: str, brain: BrainResult) -> tuple[template.TemplateRegistration, bool]:
        """The reference series' registration: from the study cache when that series came from an
        earlier connection and its registration was stored then, else computed (and stored);
        and whether it came from the cache."""
        key = study.cache_key
        entry = f"{ref}template"
        if study.cache is not None and key and ref not in study.inputs:
            got = study.cache.get(key, entry)
            if got is not None:
                log.info("template registration of the %s series from the study cache", ref)
                return template.from_cache(*got), True
        reg = template.register(brain.n4[ref], brain.brain_mask[ref])
        if study.cache is not None and key and reg.ok and ref in study.inputs:
            study.cache.put_later(key, entry, *template.to_cache(reg))
        return reg, False
