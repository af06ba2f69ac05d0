"""Anomaly stage: the anomaly map, the anomaly load, the ventricles and the regions that are larger
or smaller than in healthy brains.

With the study in template space (:class:`~.results.TemplateResult`) and the normative model
(:mod:`openrecon_stroke.normative`), the default: every contrast's white-matter-relative intensity
against healthy brains at the same template position (normative z-score) and its left-right
difference against healthy brains' (on the side farther from healthy), the larger of the two
means of |z| over the contrasts, smoothed, calibrated so that 1.0 is the threshold fixed on
held-out healthy brains (0 in the head's own lateral ventricles where left-right symmetric,
when the card says ``ventricles_apart``); mapped back onto every series' grid. The lateral ventricles are the
template's, carried onto the reference series and measured there (CSF-dark voxels); the
deformation to the template gives the regions whose size is outside the healthy range
(log-Jacobian z-score), each located through the template.

Without template space (its registration failed), the rectified-flow model: runs on the network
grid of the anomaly card (RAS, 2 mm, brain box of the reference series: T1-w when known), with
every contrast known to the study (FLAIR brought onto the T1-w frame by the checked
registration; a series whose registration failed is scored alone). Either way the map goes back
onto every input series' grid as a ``map`` series whose value 1.0 is the threshold fixed on
healthy brains (display window 0-2). Findings: anomaly load (total, inside the segmented lesion,
perilesional, remote, in mL), the ventricle volume and an atrophy index.

Two stages: ``anomaly`` (:class:`AnomalyDetection`: the map and every measure that needs no
lesion mask) runs alongside ``lesion`` on the other core; ``anomaly_load``
(:class:`AnomalyLoadSplit`) then splits the load by the lesion mask, and measures the ventricles
of a T1-w series again without the lesion where the lesion touches them.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import SimpleITK as sitk

from .. import regions, template
from ..anomaly import anomaly_load, csf_measures, get_model
from ..lesion import brain_box_grid, normalise, postprocess
from ..memo import ContentMemo, digest
from ..normative import VentricleMeasure, deformation_regions, get_normative, ventricle_measure
from ..resample import FULL, box_of, resample_array, same_grid
from ..runtime import model_folder
from ..study import Study
from .base import Stage, StageResult
from .results import (
    ANOMALY_MAP,
    LESION_MASK,
    AnomalyMapResult,
    AnomalyResult,
    BrainResult,
    LesionResult,
    SeriesRegistration,
    TemplateResult,
    VentricleRecord,
)

log = logging.getLogger(__name__)

#: The reference series' ventricles, kept for a later connection of the same study (what the
#: measure holds for measuring again without the lesion: about 60 MB for a 1 mm head)
VENTRICLES: ContentMemo[VentricleMeasure] = ContentMemo("ventricles", 160 << 20)


class AnomalyDetection(Stage):
    """The map, the ventricles and the deformation; runs alongside the lesion stage (it needs no
    lesion mask: ``anomaly_load`` splits the load by the lesion afterwards)."""

    name = "anomaly"
    reads = (BrainResult,)
    optional = (SeriesRegistration, TemplateResult)
    writes = (AnomalyMapResult,)
    overlaps = ("lesion",)

    def run(self, study: Study) -> StageResult:
        tmpl = study.result(TemplateResult)
        if tmpl is not None and (model_folder("normative") / "card.json").is_file():
            return self._run_normative(study, tmpl)
        return self._run_flow(study)

    def _run_normative(self, study: Study, tmpl: TemplateResult) -> StageResult:
        res = StageResult()
        pre = study.need(BrainResult)
        nm = get_normative()
        card = nm.card
        pri = template.load_template(tmpl.spacing_mm).arrays()
        inside_t = tmpl.brain & (pri["brain"] > 0)
        contrasts: list[str] = [
            c for c in ("t1", "flair") if c in tmpl.images and c in card.contrasts and c not in tmpl.alone
        ]
        for c in tmpl.alone:
            res.warnings.append(
                f"anomaly map from {'T1-w' if tmpl.reference == 't1' else 'FLAIR'} only: "
                f"{'FLAIR' if c == 'flair' else 'T1-w'} could not be registered to it"
            )
        means = {
            c: template.tissue_means(tmpl.images[c], pri["gm"], pri["wm"], pri["csf"], inside_t) for c in contrasts
        }
        rel = {c: nm.relative(c, tmpl.images[c], means[c], inside_t) for c in contrasts}
        # this head's own lateral ventricles, measured on the template grid, when the card leaves
        # them out of the map (their size is the ventricle measure below)
        first = next((c for c in ("t1", "flair") if c in rel), None)
        apart = nm.ventricles(tmpl.images[first], inside_t, means[first]) if first is not None else None
        score_t = sitk.GetImageFromArray(nm.score(rel, tmpl.brain, apart))
        score_t.CopyInformation(template.template_grid(tmpl.spacing_mm))
        ref = tmpl.reference
        comment = f"anomaly score, 1 = threshold on healthy brains; {card.name} {card.version}"
        above: sitk.Image | None = None
        lesion_ref: str | None = None
        for c in study.inputs:
            if c not in tmpl.to_template or c in tmpl.alone:
                continue
            inside = sitk.GetArrayViewFromImage(pre.brain_mask[c]) > 0
            box = box_of(inside) or FULL  # the map is 0 outside the brain: work in its box
            r = resample_array(score_t, pre.n4[c], tmpl.to_template[c], sitk.sitkLinear, 0.0, sitk.sitkFloat32, box)
            r = np.where(inside, r, 0.0)
            res.derived.append(ANOMALY_MAP.on(c, r, comment))
            # the load on the reference series, or on this connection's first series when the
            # reference came from the study cache (its lesion mask is on this grid)
            if above is None and (c == ref or ref not in study.inputs):
                grid = study.inputs[c].grid
                full = np.zeros(grid.shape, np.uint8)
                full[box] = postprocess(r[box], grid.voxel_volume_mm3, 1.0, 50.0)
                above, lesion_ref = grid.to_sitk(full), c
        if above is None:  # the reference series came from the cache: measure on the template grid
            above = sitk.GetImageFromArray(
                postprocess(sitk.GetArrayFromImage(score_t), tmpl.spacing_mm**3, 1.0, 50.0).astype(np.uint8)
            )
            above.CopyInformation(score_t)
        # the ventricles, on the reference series' own grid
        img = pre.n4[ref]
        brain_ref = sitk.GetArrayViewFromImage(pre.brain_mask[ref]) > 0
        box = box_of(brain_ref) or FULL
        reg = tmpl.registration

        def measure():
            labels = tmpl.regions_on(ref, img, brain_ref)[box]
            spacing_zyx = tuple(float(v) for v in img.GetSpacing())[::-1]
            return ventricle_measure(
                sitk.GetArrayViewFromImage(img)[box], brain_ref[box], labels, means[ref], spacing_zyx
            )

        # measured once per study: a FLAIR connection whose reference is the cached T1-w gets the
        # T1-w connection's measure (the key holds everything it is made from)
        key = digest("ventricles", img, pre.brain_mask[ref], reg.kind, reg.affine, reg.fields, means[ref])
        vent, reused = VENTRICLES.get_or_make(key, measure)
        if reused:
            log.info("ventricles of the %s series as measured on its own connection (%.1f mL)", ref, vent.ml)
        vent_ml = vent.ml
        rel_ref = tmpl.images[ref] / (means[ref]["wm"] or 1.0)  # white-matter-relative, as the thresholds
        atrophy = float(np.mean(rel_ref[inside_t] < 0.5 * (means[ref]["csf"] + means[ref]["gm"]) / means[ref]["wm"]))
        # regions larger or smaller than healthy brains, from the deformation
        deformation: list[dict] = []
        stats = nm.jacobian()
        if stats is not None and reg.log_jacobian is not None:
            grid2 = reg.log_jacobian
            brain2 = (
                sitk.GetArrayFromImage(
                    sitk.Resample(
                        sitk.Cast(tmpl_brain_image(tmpl), sitk.sitkFloat32),
                        grid2,
                        sitk.Transform(),
                        sitk.sitkLinear,
                        0.0,
                    )
                )
                >= 0.5
            )
            for d in deformation_regions(sitk.GetArrayFromImage(grid2), stats, brain2, grid2.GetSpacing()[0]):
                p = grid2.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in d.pop("centroid_zyx")[::-1]))
                d["mni_mm"] = [round(float(v), 1) for v in template.lps_to_mni(np.asarray(p))]
                d["location"] = regions.name_at(p)
                deformation.append(d)
        res.results.append(
            AnomalyMapResult(
                above=above,
                lesion_reference=lesion_ref,
                measures=AnomalyResult(
                    load=anomaly_load(sitk.GetArrayViewFromImage(above) > 0, None, _spacing_zyx(above)),
                    csf={"ventricle_ml": round(vent_ml, 1), "atrophy_index": round(atrophy, 3)},
                    contrasts="+".join(contrasts),
                    steps=0,
                    model=f"{card.name} {card.version} (normative z-map)",
                    ventricle_z=nm.ventricle_z(vent_ml),
                    deformation=deformation,
                ),
                ventricles=VentricleRecord(ref, box, vent),
            )
        )
        if card.status != "validated":
            res.warnings.append(
                f"the anomaly map is experimental ({card.status_note or 'not validated'}); "
                "do not interpret it clinically"
            )
        return res

    def _run_flow(self, study: Study) -> StageResult:
        res = StageResult()
        pre = study.need(BrainResult)
        reg = study.result(SeriesRegistration)
        n4, brains = pre.n4, pre.brain_mask
        model = get_model()
        card = model.card
        steps = int(study.params["anomalysteps"])
        ref = "t1" if "t1" in n4 else "flair"
        contrasts = [ref]
        tx: dict[str, sitk.Transform] = {}
        if ref == "t1" and "flair" in n4:
            if reg is not None and reg.flair_to_t1 is not None:
                contrasts.append("flair")
                tx["flair"] = reg.flair_to_t1
            elif "flair" in study.inputs:
                res.warnings.append("anomaly map from T1-w only: FLAIR could not be registered to it")
        grid = brain_box_grid(n4[ref], brains[ref], card.orientation, card.spacing_mm, card.margin_mm)
        brain = (
            sitk.GetArrayFromImage(
                sitk.Resample(brains[ref], grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
            )
            > 0
        )
        images = {}
        for c in contrasts:
            r = sitk.Resample(
                sitk.Cast(n4[c], sitk.sitkFloat32),
                grid,
                tx.get(c) or sitk.Transform(),
                sitk.sitkLinear,
                0.0,
                sitk.sitkFloat32,
            )
            images[c] = normalise(sitk.GetArrayFromImage(r), brain, "zscore_brain")
        score = model.score(images, brain, steps)
        sp_zyx = tuple(card.spacing_mm)[::-1]
        mask = model.mask(score, float(np.prod(card.spacing_mm)))

        above = sitk.GetImageFromArray(mask.astype(np.uint8))
        above.CopyInformation(grid)
        csf = csf_measures(images["t1"], brain, sp_zyx) if "t1" in images else None
        res.results.append(
            AnomalyMapResult(
                above=above,
                lesion_reference=ref if ref in study.inputs else None,
                measures=AnomalyResult(
                    load=anomaly_load(mask, None, sp_zyx),
                    csf=csf,
                    contrasts="+".join(contrasts),
                    steps=steps,
                    model=f"{card.name} {card.version} ({steps} Euler step{'s' if steps > 1 else ''})",
                ),
            )
        )
        if card.status != "validated":
            res.warnings.append(
                f"the anomaly map is experimental ({card.status_note or 'not validated'}); "
                "do not interpret it clinically"
            )

        comment = f"anomaly score, 1 = threshold on healthy brains; {card.name} {card.version}, {steps} steps"
        score_img = sitk.GetImageFromArray(score)
        score_img.CopyInformation(grid)
        for c in study.inputs:
            t = None if c == ref else tx.get(c)
            if c != ref and t is None:
                continue  # not registered: no map on this series' grid
            r = sitk.Resample(
                score_img,
                n4[c],
                t.GetInverse() if t is not None else sitk.Transform(),
                sitk.sitkLinear,
                0.0,
                sitk.sitkFloat32,
            )
            inside = sitk.GetArrayViewFromImage(brains[c]) > 0 if c in brains else True
            res.derived.append(ANOMALY_MAP.on(c, np.where(inside, sitk.GetArrayFromImage(r), 0.0), comment))
        return res

    def warm_up(self) -> None:
        if (model_folder("normative") / "card.json").is_file():
            get_normative().load()
        get_model().load()


class AnomalyLoadSplit(Stage):
    """The anomaly load (mL) split by where it lies relative to the segmented lesion: inside,
    perilesional (within 5 mm), remote; measured on the map's own grid (:class:`AnomalyMapResult`),
    the lesion mask brought onto it (nearest neighbour) unless it is already there. Where the
    lesion touches the ventricles as ``anomaly`` counted them on a T1-w series, their volume is
    measured again with the lesion left out."""

    name = "anomaly_load"
    reads = (AnomalyMapResult, BrainResult)
    optional = (LesionResult,)  # after the lesion stage: the split uses its mask series
    writes = (AnomalyResult,)

    def run(self, study: Study) -> StageResult:
        m = study.need(AnomalyMapResult)
        above = sitk.GetArrayViewFromImage(m.above) > 0
        lesion = _lesion_on(study, m.lesion_reference, m.above) if m.lesion_reference else None
        measures = dataclasses.replace(m.measures, load=anomaly_load(above, lesion, _spacing_zyx(m.above)))
        # T1-w only: measured on FLAIR the ventricles already read low (0.79-0.98 of the truth on
        # six healthy test heads), and the FLAIR model's false lesions lie along the ventricle
        # wall, so taking the lesion out made FLAIR's error larger (13.9 % -> 20.1 % mean on nine
        # lesion studies; T1-w 15.7 % -> 5.1 %; models/normative/MODEL_CARD.md)
        if m.ventricles is not None and m.ventricles.reference == "t1" and m.measures.csf is not None:
            measures = self._ventricles_without_lesion(study, m, measures)
        return StageResult(results=[measures])

    @staticmethod
    def _ventricles_without_lesion(study: Study, m: AnomalyMapResult, measures: AnomalyResult) -> AnomalyResult:
        """The ventricles measured again with the segmented lesion left out, when the lesion
        touches what was counted: a lesion cavity joined to a ventricle is as dark as CSF, and
        without its mask it is counted as ventricle."""
        v = m.ventricles
        assert v is not None and measures.csf is not None
        img = study.need(BrainResult).n4[v.reference]
        # the mask on the measured series, else the one the load is split by, brought onto it
        lesion = _lesion_on(study, v.reference, img)
        if lesion is None and m.lesion_reference:
            lesion = _lesion_on(study, m.lesion_reference, img)
        if lesion is None or not (lesion[v.box] & v.measure.counted).any():
            return measures
        ml = v.measure.without(lesion[v.box]).ml
        log.info(
            "ventricles %.1f mL without the segmented lesion (%.1f mL with it): the lesion touches a ventricle",
            ml,
            measures.csf["ventricle_ml"],
        )
        return dataclasses.replace(
            measures,
            csf={**measures.csf, "ventricle_ml": round(ml, 1)},
            ventricle_z=get_normative().ventricle_z(ml),
        )


def _lesion_on(study: Study, reference: str, grid: sitk.Image) -> np.ndarray | None:
    """The lesion mask sent back on ``reference`` (bool), brought onto ``grid`` (nearest
    neighbour) unless it is already there; None when that series has no lesion mask."""
    les = study.get(LESION_MASK.name, reference)
    if les is None:
        return None
    img = study.inputs[les.reference].grid.to_sitk(np.asarray(les.data, np.uint8))
    if same_grid(img, grid):
        return np.asarray(les.data) > 0
    on = sitk.Resample(img, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(on) > 0


def _spacing_zyx(img: sitk.Image) -> tuple[float, ...]:
    return tuple(float(v) for v in img.GetSpacing())[::-1]


def tmpl_brain_image(tmpl: TemplateResult) -> sitk.Image:
    """The study's brain mask on the template grid, as an image."""
    img = sitk.GetImageFromArray(tmpl.brain.astype(np.uint8))
    img.CopyInformation(template.template_grid(tmpl.spacing_mm))
    return img
