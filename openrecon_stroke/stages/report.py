"""Last stages of the stroke pipeline: what people look at.

* :class:`Overlay`: per input series that has a lesion mask and/or an anomaly map, an RGB
  series on that input's grid (anatomy grey, anomaly blue-cyan, lesion red with a yellow
  outline, legend in the corner); UI ``sendoverlay``.
* :class:`ReportPage`: one 1024 x 1024 RGB page (UI ``sendreport``): research-use-only banner,
  lesions, anomaly load, models, every earlier stage's status and time, warnings.

What they read from earlier stages: derived series ``lesion_mask`` (mask) and ``anomaly_map``
(map, its ``window``) per input key; the typed results :class:`~.results.LesionResult`,
:class:`~.results.AnomalyResult` (an optional ``threshold`` sets where the overlay starts
colouring), :class:`~.results.BrainResult`, :class:`~.results.SeriesRegistration`, all optional;
the ``models`` finding. Anything missing is simply not shown; a failed or skipped stage shows
as a warning on the page.
"""

from __future__ import annotations

import logging
import math
from datetime import datetime

from .. import APP_NAME, __version__, render
from ..study import DerivedSeries, Study, StudyResult
from .base import Stage, StageResult
from .results import (
    ANOMALY_MAP,
    LESION_MASK,
    OVERLAY,
    REPORT_PAGE,
    AnomalyMapResult,
    AnomalyResult,
    BrainResult,
    LesionResult,
    SeriesRegistration,
)

log = logging.getLogger(__name__)

PAGE_SIZE = 1024
#: Lesions listed one by one on the page (the rest are counted).
MAX_LESIONS_LISTED = 8
_LABELS = {"t1": "T1-w", "flair": "FLAIR"}


def anomaly_display(measures: AnomalyResult | None, series: DerivedSeries | None) -> tuple[float, float | None]:
    """(threshold, top) for colouring an anomaly map.

    Threshold: the anomaly measures' ``threshold`` if they gave one (``measures``: the study's
    :class:`AnomalyResult`, or the map's own before ``anomaly_load`` split the load: the same
    threshold), else the centre of the map's display window (a window is centred on the decision
    value, e.g. (1, 2) for a score whose threshold is 1), else :data:`render.ANOMALY_THRESHOLD`.
    Top (full colour): the upper end of the window when above the threshold."""
    thr = measures.threshold if measures is not None else None
    win = series.window if series is not None else None
    if (thr is None or not math.isfinite(thr)) and win is not None and math.isfinite(float(win[0])):
        thr = float(win[0])
    if thr is None or not math.isfinite(thr):
        thr = render.ANOMALY_THRESHOLD
    top = None
    if win is not None:
        c, w = (float(v) for v in win)
        if c + w / 2 > thr:
            top = c + w / 2
    return thr, top


def _label(key: str) -> str:
    return _LABELS.get(key, key)


class Overlay(Stage):
    """RGB overlay series per input that has a lesion mask or an anomaly map."""

    name = "overlay"
    optional = (AnomalyMapResult,)
    #: it needs the lesion mask and the anomaly map, not the load split: it runs beside that
    #: (demo study, T1-w connection: 0.24 s of 0.38 + 0.24 s one after the other)
    overlaps = ("anomaly_load",)

    def run(self, study: Study) -> StageResult:
        res = StageResult()
        if not study.params["sendoverlay"]:
            return res
        amap = study.result(AnomalyMapResult)
        for c, vol in study.inputs.items():
            les = study.get(LESION_MASK.name, c)
            ano = study.get(ANOMALY_MAP.name, c)
            if les is None and ano is None:
                continue
            thr, top = anomaly_display(amap.measures if amap is not None else None, ano)
            rgb = render.overlay_volume(
                vol.data,
                None if les is None else les.data,
                None if ano is None else ano.data,
                anomaly_threshold=thr,
                anomaly_max=top,
                spacing_xy=vol.grid.spacing[:2],
            )
            parts = []
            if les is not None:
                parts.append("lesion red, outline yellow")
            if ano is not None:
                parts.append(f"anomaly >= {thr:g} blue to white")
            res.derived.append(
                OVERLAY.on(c, rgb, f"{APP_NAME} overlay on {_label(c)}: " + "; ".join(parts) + ". Research use only")
            )
        if not res.derived and study.inputs:
            res.warnings.append("no overlay: no lesion mask and no anomaly map were produced")
        return res


# --------------------------------------------------------------------------------------------
# report page
# --------------------------------------------------------------------------------------------
def _num(v, fmt="{:.1f}") -> str:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return str(v)
    return fmt.format(x) if math.isfinite(x) else "?"


def _not_available(study: Study, kind: type[StudyResult], what: str) -> list:
    """The line shown for a result that is missing: why (its stage failed or was skipped), or
    that no stage of this pipeline produces it."""
    name = study.producers.get(kind)
    status = study.stage_status.get(name or "")
    if status in ("failed", "skipped"):
        return [(f"not available ({name} {status}: see warnings)", render.WARN)]
    return [(f"{what} was not run", render.WARN)]


def lesion_lines(study: Study) -> list:
    res = study.result(LesionResult)
    if res is None:
        return _not_available(study, LesionResult, "lesion segmentation")
    n = len(res.lesions)
    if not n:
        return ["no lesion found"]
    lines: list = [f"{n} lesion{'s' if n != 1 else ''}, total volume {render.fmt_ml(res.volume_ml)}"]
    ordered = sorted(res.lesions, key=lambda les: -les.reported_volume_ml)
    for les in ordered[:MAX_LESIONS_LISTED]:
        text = f"#{les.label}: {render.fmt_ml(les.reported_volume_ml)}"
        if les.location:
            text += f", {les.location}" + (f" ({les.region})" if les.region else "")
            text += " (MNI " + ", ".join(_num(v, "{:.0f}") for v in les.mni_mm or ()) + " mm)"
        else:
            where = [w for w in (les.hemisphere, les.region) if w]
            if where:
                text += ", " + " ".join(where)
            text += " (LPS " + ", ".join(_num(v, "{:.0f}") for v in les.reported_centroid) + " mm)"
        lines.append(text)
    if len(ordered) > MAX_LESIONS_LISTED:
        lines.append(f"... {len(ordered) - MAX_LESIONS_LISTED} smaller lesion(s) in the text report")
    return lines


def anomaly_lines(study: Study) -> list:
    a = study.result(AnomalyResult)
    if a is None:
        return _not_available(study, AnomalyResult, "anomaly detection")
    load = a.load
    parts = [
        f"{label} {render.fmt_ml(v)}"
        for v, label in (
            (load["load_ml"], "anomaly load"),
            (load["in_lesion_ml"], "in lesions"),
            (load["perilesional_ml"], "perilesional"),
            (load["remote_ml"], "remote"),
        )
    ]
    if a.csf is not None:
        vent = f"ventricles {render.fmt_ml(a.csf['ventricle_ml'])}"
        if a.ventricle_z is not None:
            vent += f" ({'enlarged, ' if a.ventricle_z > 2 else ''}z {_num(a.ventricle_z, '{:+.1f}')} vs healthy)"
        parts.append(vent)
    lines = [parts[0], "; ".join(parts[1:])]
    if a.csf is not None:
        lines.append(f"atrophy index {_num(a.csf['atrophy_index'], '{:.2f}')}")
    for d in a.deformation[:3]:
        where = f" {d['location']}" if d.get("location") else ""
        lines.append(
            f"{d['kind']}{where}: {render.fmt_ml(d['volume_ml'])} beyond the healthy range (z {d['peak_z']:.0f})"
        )
    if a.contrasts:
        lines.append(f"computed on {a.contrasts.replace('t1', 'T1-w').replace('flair', 'FLAIR')}")
    return lines


def brain_lines(study: Study) -> list:
    lines = []
    brain = study.result(BrainResult)
    if brain is not None:
        vols = [f"{_label(c)} {render.fmt_ml(brain.volume_ml[c])}" for c in study.inputs if c in brain.volume_ml]
        if vols:
            how = "skull-stripped series: its own brain" if brain.own_brain else f"HD-BET {brain.mode}"
            lines.append("brain volume: " + ", ".join(vols) + f" ({how})")
    reg = study.result(SeriesRegistration)
    if reg is not None:
        lines.append(
            "T1-w/FLAIR registration: "
            + ("passed its check" if reg.ok else f"FAILED ({reg.outcome.reason or 'check not passed'})")
        )
    return lines


def model_lines(study: Study) -> list:
    return [f"{k}: {v}" for k, v in study.models.items()]


def timing_lines(study: Study) -> list:
    names = list(dict.fromkeys(list(study.timings_s) + list(study.stage_status)))
    lines: list = []
    total = 0.0
    brain = study.result(BrainResult)
    for name in names:
        status = study.stage_status.get(name, "")
        t = study.timings_s.get(name)
        if t is not None:
            total += t
        text = f"{name}: {status + ', ' if status else ''}{'-' if t is None else f'{t:.1f} s'}"
        if brain is not None and brain.timings_s and name == study.producers.get(BrainResult):
            text += " (" + ", ".join(f"{k} {_num(round(v, 2))} s" for k, v in brain.timings_s.items()) + ")"
        colour = render.WARN if status in ("failed", "skipped") else render.WHITE
        lines.append((text, colour))
    if lines:
        lines.append(f"total so far: {total:.1f} s")
    return lines


def page_warnings(study: Study) -> list[str]:
    w = list(dict.fromkeys(study.warnings))
    brain = study.result(BrainResult)
    have_flair = "flair" in study.inputs or (brain is not None and "flair" in brain.n4)
    if study.inputs and not have_flair and not any("flair" in x.lower() for x in w):
        w.append("no FLAIR series in this study: lesions were looked for on T1-w alone")
    return w


def page_content(study: Study, key: str | None) -> render.PageContent:
    inputs = []
    for c, vol in study.inputs.items():
        g = vol.grid
        inputs.append(
            f"{_label(c)} '{vol.description}' {g.shape[2]}x{g.shape[1]}x{g.shape[0]} "
            f"@ {g.spacing[0]:.2f}x{g.spacing[1]:.2f}x{g.spacing[2]:.2f} mm"
        )
    sections = [("Lesions", lesion_lines(study)), ("Anomaly (difference from healthy brains)", anomaly_lines(study))]
    b = brain_lines(study)
    if b:
        sections.append(("Brain", b))
    m = model_lines(study)
    if m:
        sections.append(("Models", m))
    sections.append(("Processing", timing_lines(study)))
    content = render.PageContent(
        title=f"{APP_NAME} {__version__}: stroke MRI summary",
        subtitle=f"{datetime.now():%Y-%m-%d %H:%M}   inputs: " + "; ".join(inputs),
        sections=sections,
        warnings=page_warnings(study),
        footer=(
            "Automated research software output, not a medical device. Check every result "
            f"against the source images. {APP_NAME} {__version__}"
        ),
    )
    if key is not None:
        try:
            content.image, content.image_caption, content.image_aspect = _key_picture(study, key)
        except Exception as e:  # the page goes out without a picture rather than not at all
            log.warning("report page: no key-slice picture (%s)", e)
    return content


def _key_picture(study: Study, key: str):
    vol = study.inputs[key]
    les = study.get(LESION_MASK.name, key)
    ano = study.get(ANOMALY_MAP.name, key)
    thr, top = anomaly_display(study.result(AnomalyResult), ano)
    z = render.key_slice(
        None if les is None else les.data, None if ano is None else ano.data, thr, nz=vol.grid.shape[0]
    )
    ov = study.get(OVERLAY.name, key)
    if ov is not None:
        pic = ov.data[z]
    else:
        lo_hi = render.grey_window(vol.data)
        sl = slice(z, z + 1)
        pic = render.overlay_volume(
            vol.data[sl],
            None if les is None else les.data[sl],
            None if ano is None else ano.data[sl],
            anomaly_threshold=thr,
            anomaly_max=top,
            window=lo_hi,
            spacing_xy=vol.grid.spacing[:2],
        )[0]
    dx, dy = vol.grid.spacing[:2]
    return pic, f"{_label(key)} slice {z + 1} of {vol.grid.shape[0]}", dy / dx


def page_reference(study: Study) -> str | None:
    """The input the page belongs to (and shows a slice of): one with a lesion mask, FLAIR first."""
    keys = sorted(study.inputs, key=lambda c: (study.get(LESION_MASK.name, c) is None, c != "flair"))
    return keys[0] if keys else None


class ReportPage(Stage):
    """The one-page summary as an RGB image series (UI ``sendreport``)."""

    name = "report_page"
    optional = (AnomalyResult, BrainResult, LesionResult, SeriesRegistration)

    def run(self, study: Study) -> StageResult:
        res = StageResult()
        if not study.params["sendreport"]:
            return res
        key = page_reference(study)
        if key is None:
            return res
        page = render.report_page(page_content(study, key), PAGE_SIZE)
        res.derived.append(
            REPORT_PAGE.on(
                key, page[None], f"{APP_NAME} {__version__} summary page. Research use only, not for diagnosis"
            )
        )
        return res
