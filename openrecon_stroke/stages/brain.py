"""Preprocessing stage: HD-BET brain mask, N4 bias correction, T1-w <-> FLAIR registration,
and the study cache that lets a series fuse with one that arrived on an earlier connection.

Writes :class:`~.results.BrainResult` (N4 images and brain masks of every contrast known to the
study, each on its own input grid) and, with T1-w and FLAIR, :class:`~.results.SeriesRegistration`.
Contrasts taken from the cache appear in these results but not in ``study.inputs``: nothing is
sent back on their grids (their connection is over).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import SimpleITK as sitk

from ..preprocess import (
    STRIPPED_EDGE_FRACTION,
    STRIPPED_MIN_BACKGROUND,
    N4Settings,
    n4_correct,
    register_rigid,
    series_own_brain,
    surface_at_content_edge,
)
from ..study import CONTRASTS, Study
from .base import SkipStudy, Stage, StageResult
from .results import BRAIN_MASK, BrainResult, SeriesRegistration

log = logging.getLogger(__name__)

#: A whole adult brain is 900-1700 mL; outside this range the input is not a usable head scan.
BRAIN_ML_RANGE = (500.0, 2600.0)


def _ml(mask: sitk.Image) -> float:
    return float(sitk.GetArrayViewFromImage(mask).sum()) * float(np.prod(mask.GetSpacing())) / 1000.0


#: HD-BET's brain on a series that looks skull-stripped (its surface at the content's edge) is
#: taken as evidence that the content is a brain when it covers at least this fraction of the
#: content and lies mostly (this fraction) inside it. Measured (covered / inside, fast): the
#: real stripped T1-w 0.70 / 1.00; synthetic series stripped to the brain 0.62-0.93 / 0.81-0.95
#: and to the brain plus its outer CSF 0.52-0.81 / 1.00 where the fast grid found the brain (15
#: and 14 of 16 series; ``models/hdbet/validate_stripped.py``); the real stripped FLAIR 0.11 /
#: 0.38 (0.60 / 0.89 on HD-BET's own grid, the second look below) and a synthetic stripped FLAIR
#: 0.33 / 0.42, where it did not; a 'knee' cylinder with a zeroed background 0.19 / 0.57 (0.18
#: covered on HD-BET's own grid). Below it the series' own brain is not used unasked: the
#: scanner is told to set Brain extraction to none if the series is stripped.
STRIPPED_MIN_KEPT = 0.5
STRIPPED_MIN_INSIDE = 0.75


class SeriesBrain(NamedTuple):
    """Brain mask of one series (uint8 on its grid); ``own``: it is the series' own brain (the
    series came skull-stripped), not HD-BET's; ``note``: what the scanner should be told (why
    the own brain was used, or that the series may be stripped and HD-BET may have cut it)."""

    mask: sitk.Image
    own: bool = False
    note: str | None = None


def brain_of_series(image: sitk.Image, contrast: str, mode: str) -> SeriesBrain:
    """Brain mask of one series. ``mode`` is the UI's ``betmode``.

    ``fast`` and ``accurate`` run HD-BET. It is made for whole heads; on a series skull-stripped
    by another tool it can cut the brain short or drop it (Dice 0.82 and 0.18 to the providers'
    strip on the two real stripped brains here). So when HD-BET's brain reaches the edge of the
    series' content (no skull or scalp around it, :func:`~..preprocess.surface_at_content_edge`)
    and HD-BET still found most of the content to be brain (:data:`STRIPPED_MIN_KEPT`; in
    ``fast`` mode looked at once more on HD-BET's own 1.5 mm grid where the fast grid did not),
    the series' own brain (its non-background voxels) is used instead, with a warning; when
    HD-BET found too little, its mask stays, with a note saying what to set. ``none`` says the series
    is stripped already: its own brain, without HD-BET."""
    from ..brain_extraction import extract_brain

    if mode == "none":
        own, background = series_own_brain(image)
        if background < STRIPPED_MIN_BACKGROUND:
            raise SkipStudy(
                f"brain extraction is set to none (series skull-stripped already), but only "
                f"{100 * background:.0f} % of the {contrast} series is background (a stripped brain "
                f"leaves at least {100 * STRIPPED_MIN_BACKGROUND:.0f} %): this is not a skull-stripped "
                "series, so no stroke analysis was run; set Brain extraction to fast"
            )
        return SeriesBrain(own, own=True)
    mask = extract_brain(image, folds=mode)
    at_edge = surface_at_content_edge(mask, image)
    if at_edge < STRIPPED_EDGE_FRACTION:
        return SeriesBrain(mask)
    own, _ = series_own_brain(image)

    n_own = max(1.0, float(np.count_nonzero(sitk.GetArrayViewFromImage(own))))

    def coverage(m: sitk.Image) -> tuple[float, bool]:
        """(fraction of the content inside ``m``, whether ``m`` vouches that the content is a
        brain: it covers :data:`STRIPPED_MIN_KEPT` of it and lies :data:`STRIPPED_MIN_INSIDE`
        inside it)"""
        overlap = m * own  # named: a view of a temporary image would read freed memory
        both = float(np.count_nonzero(sitk.GetArrayViewFromImage(overlap)))
        inside = both / max(1.0, float(np.count_nonzero(sitk.GetArrayViewFromImage(m))))
        return both / n_own, both / n_own >= STRIPPED_MIN_KEPT and inside >= STRIPPED_MIN_INSIDE

    kept, vouched = coverage(mask)
    grid = ""
    if mode == "fast" and not vouched:
        # the fast grid can lose a stripped brain that HD-BET's own grid still sees (the real
        # stripped FLAIR: 0.11 / 0.38 at 1.75 mm, 0.60 / 0.89 at 1.5 mm): one fold there, once
        kept, vouched = coverage(extract_brain(image, folds=1))
        grid = " on its own 1.5 mm grid"
    seen = (
        f"{100 * at_edge:.0f} % of HD-BET's brain surface lies at the edge of the image content, where a "
        f"head has skull and scalp; HD-BET's brain{grid} holds {100 * kept:.0f} % of the {_ml(own):.0f} mL "
        "of content"
    )
    if vouched:
        return SeriesBrain(
            own,
            own=True,
            note=f"the {contrast} series looks skull-stripped already ({seen}): its own non-zero voxels "
            "are used as the brain mask. Set Brain extraction to none for such series to skip HD-BET",
        )
    return SeriesBrain(
        mask,
        note=f"HD-BET may have cut the brain of the {contrast} series short ({seen}): if the series "
        "came skull-stripped by another tool, set Brain extraction to none",
    )


def _dilated(mask: sitk.Image, mm: float = 5.0) -> sitk.Image:
    r = [max(1, int(round(mm / s))) for s in mask.GetSpacing()]
    return sitk.BinaryDilate(mask, r)


class Preprocess(Stage):
    name = "preprocess"
    writes = (BrainResult, SeriesRegistration)

    def __init__(self, n4: N4Settings | None = None):
        self.n4 = n4 or N4Settings()

    def warm_up(self) -> None:
        from ..brain_extraction import get_extractor

        sess = get_extractor().session(0)
        # one small inference: ONNX Runtime's first run in a process carries set-up costs
        sess.run(None, {sess.get_inputs()[0].name: np.zeros((1, 1, 64, 64, 64), np.float32)})

    @staticmethod
    def _take(got: SeriesBrain, contrast: str, brains: dict, own: set, res: StageResult) -> None:
        brains[contrast] = got.mask
        if got.own:
            own.add(contrast)
        if got.note:
            res.warnings.append(got.note)

    def run(self, study: Study) -> StageResult:
        from ..brain_extraction import get_extractor

        res = StageResult()
        timings: dict[str, float] = {}
        images = {k: v.to_sitk() for k, v in study.inputs.items()}
        n4: dict[str, sitk.Image] = {}
        brains: dict[str, sitk.Image] = {}
        earlier: dict[str, str] = {}
        own: set[str] = set()  # contrasts whose mask is the series' own brain (skull-stripped)

        # earlier series of this study, from the cache
        key = study.cache_key
        if study.cache is not None:
            for c in CONTRASTS:
                if c not in images and key:
                    got = study.cache.get(key, c)
                    if got is not None:
                        cached, meta = got
                        n4[c] = cached["n4"]
                        brains[c] = cached["brain_mask"]
                        earlier[c] = meta.get("description", True)
                        if meta.get("own_brain"):
                            own.add(c)
                        log.info(
                            "using the %s series of this study from the cache (%s)", c, meta.get("description", "")
                        )

        # brain mask on the best-suited contrast (T1-w when present, here or from the cache: a
        # cached T1-w mask reaches this FLAIR through the registration below)
        ref = "t1" if ("t1" in images or "t1" in brains) else "flair"
        mode = study.params["betmode"]
        if ref in images:
            t0 = time.perf_counter()
            found = brain_of_series(images[ref], ref, mode)
            timings["brain_extraction"] = time.perf_counter() - t0
            vol_ml = _ml(found.mask)
            if not BRAIN_ML_RANGE[0] <= vol_ml <= BRAIN_ML_RANGE[1]:
                whole = f"a whole brain is {BRAIN_ML_RANGE[0]:.0f}-{BRAIN_ML_RANGE[1]:.0f} mL"
                raise SkipStudy(
                    f"brain extraction is set to none, and the {ref} series' own content is "
                    f"{vol_ml:.0f} mL ({whole}): it does not look like a skull-stripped brain, so no "
                    "stroke analysis was run; for a head scan set Brain extraction to fast"
                    if mode == "none"
                    else f"brain extraction found {vol_ml:.0f} mL of brain in the {ref} series ({whole}): "
                    "this does not look like a head scan covering the brain, so no stroke analysis was run"
                    + (f". {found.note[0].upper()}{found.note[1:]}" if found.note else "")
                )
            self._take(found, ref, brains, own, res)

        # the T1-w mask that the T1-w/FLAIR registration samples (10 mm wider) is made on the
        # other core while N4 runs: both are single-threaded ITK filters that release the GIL
        both = {"t1", "flair"} <= set(n4) | set(images)
        pool = ThreadPoolExecutor(1, "preprocess") if both and "t1" in brains else None
        fixed_mask = pool.submit(_dilated, brains["t1"], 10.0) if pool is not None else None
        try:
            # N4 inside the (dilated) brain mask where known, else the head
            for c, img in images.items():
                t0 = time.perf_counter()
                m = brains.get(c)
                n4[c], _ = n4_correct(img, _dilated(m) if m is not None else None, self.n4)
                timings[f"n4_{c}"] = time.perf_counter() - t0
            wide = fixed_mask.result() if fixed_mask is not None else None
        finally:
            if pool is not None:
                pool.shutdown(wait=True)

        # T1-w <-> FLAIR: register, check, carry the mask over. (Registering the raw FLAIR beside
        # its N4 was measured on the demo's FLAIR connection, 2026-12-01: 3.25-3.46 s against
        # 3.45-3.48 s one after the other, because each already keeps both cores busy: N4 2.9-3.3
        # CPU-s in 1.7 s, the registration 3.0-3.2 CPU-s in 1.7 s. Not worth new test cases.)
        if "t1" in n4 and "flair" in n4:
            t0 = time.perf_counter()
            wide = wide if wide is not None else _dilated(brains["t1"], 10.0)
            reg = register_rigid(n4["t1"], n4["flair"], fixed_mask=wide)
            timings["registration"] = time.perf_counter() - t0
            res.results.append(SeriesRegistration(reg))
            if reg.ok:
                if "flair" in images and "flair" not in brains:
                    brains["flair"] = sitk.Resample(
                        brains["t1"],
                        images["flair"],
                        reg.transform.GetInverse(),
                        sitk.sitkNearestNeighbor,
                        0,
                        sitk.sitkUInt8,
                    )
                    if "t1" in own:
                        own.add("flair")
            else:
                res.warnings.append(
                    f"T1-w/FLAIR registration failed its check ({reg.reason}); the two series are "
                    "analysed separately, not fused"
                )
        for c in images:
            if c not in brains:  # FLAIR with a failed registration, or no T1-w
                t0 = time.perf_counter()
                self._take(brain_of_series(images[c], c, mode), c, brains, own, res)
                timings[f"brain_extraction_{c}"] = time.perf_counter() - t0

        volumes = {}
        for c in study.inputs:
            arr = sitk.GetArrayFromImage(brains[c]).astype(np.uint8)
            comment = "own brain mask (skull-stripped series)" if c in own else f"HD-BET brain mask ({mode})"
            res.derived.append(BRAIN_MASK.on(c, arr, comment))
            volumes[c] = round(_ml(brains[c]), 1)
        res.results.append(
            BrainResult(
                reference=ref,
                n4=n4,
                brain_mask=brains,
                mode=mode,
                model="the series' own brain" if mode == "none" else f"{get_extractor().card.name} (ONNX, {mode})",
                volume_ml=volumes,
                from_earlier_series=earlier,
                timings_s=timings,
                own_brain=tuple(sorted(own)),
            )
        )

        if study.cache is not None and key:
            for c in images:
                study.cache.put_later(
                    key,
                    c,
                    {"n4": n4[c], "brain_mask": brains[c]},
                    {"description": study.inputs[c].description, "own_brain": c in own},
                )
        elif study.cache is not None and len(images) == 1:
            res.warnings.append(
                "the series carries no study identity (frame of reference / study UID); "
                "it cannot be fused with a series sent on another connection"
            )
        return res
