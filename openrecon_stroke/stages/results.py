"""The typed results stages hand to later stages (the contracts of :mod:`.base`), and the series
they send back to the scanner (which later stages may read too, e.g. the overlay).

Images are SimpleITK images in LPS millimetres, each on the grid of the input series it belongs
to (``study.inputs[contrast].grid``) unless a field says otherwise; contrasts are ``"t1"`` and
``"flair"``. A contrast taken from the study cache (an earlier connection) appears in these
results but not in ``study.inputs``: nothing is sent back on its grid.

Each result's :meth:`findings` is what it adds to the report, in report order.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import SimpleITK as sitk

from .. import regions
from ..anomaly import AnomalyLoad, CsfMeasures
from ..lesion import Lesion
from ..normative import VentricleMeasure
from ..preprocess import RigidRegistration
from ..resample import box_of
from ..study import SeriesSpec, StudyResult
from ..template import TemplateRegistration

# --- series sent back (one per input series; UI switch in send_param) -------------------------
HEAD_MASK = SeriesSpec("head_mask", "mask", "HEADMASK", "sendmask")
BRAIN_MASK = SeriesSpec("brain_mask", "mask", "BRAINMASK", "sendbrainmask")
LESION_MASK = SeriesSpec("lesion_mask", "mask", "LESION", "sendlesion")
#: anomaly score: 1.0 is the threshold fixed on healthy brains, shown with window centre 1, width 2
ANOMALY_MAP = SeriesSpec("anomaly_map", "map", "ANOMALY", "sendanomaly", window=(1.0, 2.0))
OVERLAY = SeriesSpec("overlay", "rgb", "OVERLAY", "sendoverlay")
REPORT_PAGE = SeriesSpec("report", "page", "REPORT", "sendreport")


@dataclass
class BrainResult(StudyResult):
    """Written by ``preprocess``: bias-corrected images and HD-BET brain masks."""

    label: ClassVar[str] = "brain_mask"

    #: the contrast HD-BET ran on (T1-w when known); other masks come through the registration
    reference: str
    #: contrast -> N4 bias-corrected image (float32), every contrast known to the study
    n4: dict[str, sitk.Image]
    #: contrast -> brain mask (uint8, 1 = brain), every contrast known to the study
    brain_mask: dict[str, sitk.Image]
    #: the UI's brain extraction mode ("fast", "accurate", "none") and the model, as shown on
    #: the report
    mode: str
    model: str
    #: input contrast -> brain volume (mL, one decimal)
    volume_ml: dict[str, float] = field(default_factory=dict)
    #: contrasts taken from the study cache -> their series description
    from_earlier_series: dict[str, str] = field(default_factory=dict)
    #: step -> seconds (brain extraction, N4 per contrast, registration)
    timings_s: dict[str, float] = field(default_factory=dict)
    #: contrasts whose mask is the series' own brain, not HD-BET's: the series came
    #: skull-stripped by another tool (``mode`` "none", or found so; see ``stages.brain``)
    own_brain: tuple[str, ...] = ()

    def findings(self) -> dict:
        out: dict = {f"{c}_from_earlier_series": d for c, d in self.from_earlier_series.items()}
        out.update({f"brain_volume_ml_{c}": v for c, v in self.volume_ml.items()})
        out["brain_extraction_mode"] = self.mode
        if self.own_brain:
            out["brain_mask_is_the_series_own"] = list(self.own_brain)
        out["models"] = {"brain_extraction": self.model}
        out["preprocess_timings_s"] = {k: round(v, 2) for k, v in self.timings_s.items()}
        return out


@dataclass
class SeriesRegistration(StudyResult):
    """Written by ``preprocess`` when T1-w and FLAIR are both known: the rigid registration of
    FLAIR to T1-w and its check."""

    label: ClassVar[str] = "registration"

    outcome: RigidRegistration

    @property
    def ok(self) -> bool:
        return self.outcome.ok

    @property
    def flair_to_t1(self) -> sitk.Transform | None:
        """Maps T1-w physical points (LPS mm) to FLAIR points (ITK convention: resample the
        FLAIR with it to bring it onto the T1-w grid); None when the check failed."""
        return self.outcome.transform if self.outcome.ok else None

    def findings(self) -> dict:
        return {"registration": self.outcome.summary()}


@dataclass
class TemplateResult(StudyResult):
    """Written by ``template``: the study registered to the MNI152 template, and every known
    contrast resampled once onto the template grid (what the lesion and anomaly stages read).

    Transforms follow ITK's convention: ``to_native[c]`` maps template points (LPS mm) to points
    of series ``c`` (resample a series with it to bring it into template space); ``to_template[c]``
    maps series points to template points (resample a template-space map with it to bring it
    onto the series' grid). Arrays are ``(nz, ny, nx)`` on
    :func:`openrecon_stroke.template.template_grid` of ``spacing_mm``."""

    label: ClassVar[str] = "template_registration"

    reference: str
    registration: TemplateRegistration
    to_native: dict[str, sitk.Transform]
    to_template: dict[str, sitk.Transform]
    spacing_mm: float
    #: contrast -> N4 image on the template grid (float32)
    images: dict[str, np.ndarray]
    #: HD-BET brain mask of the reference series on the template grid
    brain: np.ndarray
    #: contrasts registered to the template on their own (their T1-w/FLAIR registration failed),
    #: with their own HD-BET brain mask on the template grid; analysed alone, never fused
    alone: dict[str, np.ndarray] = field(default_factory=dict)
    #: region labels already carried onto a series' grid, by contrast (:meth:`regions_on`)
    _regions: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    _regions_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def regions_on(self, contrast: str, image: sitk.Image, brain: np.ndarray) -> np.ndarray:
        """The template's region labels (:mod:`openrecon_stroke.regions`) on series ``contrast``'s
        grid (``image``), inside the box of its brain mask ``brain`` (0 elsewhere); resampled once
        per study, whichever stage asks first (lesion location, ventricles: they run side by
        side, so the second waits for the first)."""
        with self._regions_lock:
            if contrast not in self._regions:
                self._regions[contrast] = regions.regions_on(image, self.to_template[contrast], box_of(brain))
            return self._regions[contrast]

    def findings(self) -> dict:
        reg = self.registration
        out = {"kind": reg.kind, "reference": self.reference, "check": reg.reason}
        out.update({k: v for k, v in reg.summary.items() if k != "tissue_means"})
        return {"template_registration": out}


@dataclass
class LesionResult(StudyResult):
    """Written by ``lesion``: the lesions of the reference series (T1-w when present), largest
    first, and the model(s) that found them."""

    label: ClassVar[str] = "lesions"

    lesions: list[Lesion]
    model: str
    #: input contrast -> lesion probability (float32, ensemble mean 0-1, 0 outside the brain) on
    #: that input's grid, before threshold; not sent to the scanner (offline writers keep it: the
    #: cohort batch's ``label-L_probseg``)
    probability: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def volume_ml(self) -> float:
        """Total volume (mL) as reported: the sum of the reported lesion volumes."""
        return round(float(sum(les.reported_volume_ml for les in self.lesions)), 3)

    def findings(self) -> dict:
        return {
            "lesions": [les.as_dict() for les in self.lesions],
            "lesion_count": len(self.lesions),
            "lesion_volume_ml": self.volume_ml,
            "lesion_model": self.model,
            "models": {"lesion": self.model},
        }


@dataclass
class AnomalyResult(StudyResult):
    """Written by ``anomaly_load``: the anomaly load (mL, on the map's grid) split by where it
    lies relative to the segmented lesion, T1-w CSF measures when measurable, the ventricles
    and the deformation regions (from ``anomaly``)."""

    label: ClassVar[str] = "anomaly"

    load: AnomalyLoad
    #: T1-w ventricle volume and atrophy index; None without T1-w or when not measurable
    csf: CsfMeasures | None
    #: contrasts scored, e.g. "t1+flair"; Euler steps of the flow; the model
    contrasts: str
    steps: int
    model: str
    #: score from which the overlay colours (None: the map's display window centre)
    threshold: float | None = None
    #: the lateral-ventricle volume against healthy brains (z-score; None: not measured)
    ventricle_z: float | None = None
    #: regions larger ("expansion") or smaller ("contraction") than in healthy brains, from the
    #: deformation to the template: kind, volume_ml (template), peak_z, location, mni_mm
    deformation: list[dict] = field(default_factory=list)

    def findings(self) -> dict:
        a: dict = {**self.load, "contrasts": self.contrasts, **(self.csf or {})}
        if self.steps:
            a["steps"] = self.steps
        if self.threshold is not None:
            a["threshold"] = self.threshold
        if self.ventricle_z is not None:
            a["ventricle_z"] = round(self.ventricle_z, 2)
        if self.deformation:
            a["deformation"] = self.deformation
        return {"anomaly": a, "models": {"anomaly": self.model}}


@dataclass(frozen=True)
class VentricleRecord:
    """Where ``anomaly`` measured the lateral ventricles, for ``anomaly_load`` to measure them
    again without the segmented lesion when the lesion touches them (a cavity joined to a
    ventricle is not ventricle)."""

    #: the series measured (its bias-corrected image and brain mask are in :class:`BrainResult`)
    reference: str
    #: the brain's box on that series' grid (index z, y, x), where the measure's arrays lie
    box: tuple[slice, ...]
    measure: VentricleMeasure


@dataclass
class AnomalyMapResult(StudyResult):
    """Written by ``anomaly`` (which runs alongside ``lesion``, so it knows no lesion mask): every
    anomaly measure (``measures``, its load not yet split by the lesion: all of it counted remote)
    and where the map is above its threshold, for ``anomaly_load`` to split the load."""

    label: ClassVar[str] = "anomaly map"

    #: uint8, 1 where the anomaly map is above its threshold (components under 50 mm³ removed),
    #: on the grid where the load is measured (LPS mm: an input series' grid, the template grid,
    #: or the flow's network grid)
    above: sitk.Image
    #: the input series whose lesion mask the load is split by (None: no split)
    lesion_reference: str | None
    measures: AnomalyResult
    #: what the ventricle volume in ``measures`` was measured from (None: not measured so)
    ventricles: VentricleRecord | None = None
