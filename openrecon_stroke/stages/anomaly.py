"""Anomaly stage: pseudo-healthy brain by the rectified-flow model, anomaly map and load.

Runs on the network grid of the anomaly card (RAS, 2 mm, brain box of the reference series:
T1-w when known), with every contrast known to the study (FLAIR brought onto the T1-w frame by
the checked registration; a series whose registration failed is scored alone). The map goes
back onto every input series' grid as a ``map`` series whose value 1.0 is the threshold fixed on
healthy brains (display window 0-2). Findings: anomaly load (total, inside the segmented lesion,
perilesional, remote, in mL), and with T1-w ventricle volume and an atrophy index.
"""

from __future__ import annotations

import logging

import numpy as np
import SimpleITK as sitk

from ..anomaly import anomaly_load, csf_measures, get_model
from ..lesion import brain_box_grid, normalise
from ..study import Study
from .base import Stage, StageResult
from .results import ANOMALY_MAP, LESION_MASK, AnomalyResult, BrainResult, SeriesRegistration

log = logging.getLogger(__name__)


class AnomalyDetection(Stage):
    name = "anomaly"
    reads = (BrainResult,)
    optional = (SeriesRegistration,)
    writes = (AnomalyResult,)

    def run(self, study: Study) -> StageResult:
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

        lesion_net = None
        les = study.get(LESION_MASK.name, ref) if ref in study.inputs else None
        if les is not None:
            li = study.inputs[ref].grid.to_sitk(les.data.astype(np.uint8))
            lesion_net = (
                sitk.GetArrayFromImage(
                    sitk.Resample(li, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
                )
                > 0
            )
        load = anomaly_load(mask, lesion_net, sp_zyx)
        csf = csf_measures(images["t1"], brain, sp_zyx) if "t1" in images else None
        res.results.append(
            AnomalyResult(
                load=load,
                csf=csf,
                contrasts="+".join(contrasts),
                steps=steps,
                model=f"{card.name} {card.version} ({steps} Euler step{'s' if steps > 1 else ''})",
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
        get_model().load()
