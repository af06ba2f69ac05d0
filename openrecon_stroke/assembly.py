"""One way from what arrived to the :class:`~openrecon_stroke.study.Study` a pipeline runs on,
for the server (MRD images of one connection) and for ``process`` / cohort runs (files).

Each volume keeps its exact geometry (:mod:`openrecon_stroke.geometry`) and its identity and
sequence facts (``Volume.info``); it is filed under its contrast (``"t1"``, ``"flair"``):

* MRD images: one volume per ``image_series_index``; the contrast from the UI parameter
  ``contrast``, else the inversion time, else the protocol name (:func:`detect_contrast`); a
  series that does not form one volume, or a second series of a contrast, is left out with a
  message;
* files: the contrast is the caller's (``--t1``, ``--flair``); any format
  :func:`openrecon_stroke.inputs.load_volume` reads. A file that cannot be read raises its
  :class:`~openrecon_stroke.inputs.InputError`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence

from .geometry import GeometryError, assemble_series, group_series
from .inputs import load_volume
from .mrdfile import header_info
from .params import Params
from .study import Study, detect_contrast
from .study_cache import StudyCache

log = logging.getLogger(__name__)

#: ``tell(level, sentence)``: level "INFO" (log only), "WARNING" or "ERROR" (the user sees it)
Tell = Callable[[str, str], None]


def _log_tell(level: str, text: str) -> None:
    log.log(logging.getLevelName(level), text)


def assemble_study(
    params: Params,
    *,
    images: Sequence = (),
    header=None,
    files: Mapping[str, str | os.PathLike | None] | None = None,
    cache: StudyCache | None = None,
    warnings: Sequence[str] = (),
    tell: Tell = _log_tell,
) -> Study:
    """The study of MRD ``images`` (with the parsed MRD ``header``, or None) and/or ``files``
    (contrast -> path; None entries are skipped).

    Args:
        params: coerced UI parameters (``contrast`` decides MRD series' contrast when set).
        cache: the study cache that lets a series fuse with one from an earlier connection.
        warnings: sentences the study starts with (they go into its report).
        tell: where messages about left-out series go.
    """
    study = Study(inputs={}, params=params, warnings=list(warnings), cache=cache)
    for contrast, path in (files or {}).items():
        if path:
            study.inputs[contrast] = load_volume(path)
    if images:
        _add_mrd_series(study, images, header, tell)
    return study


def _add_mrd_series(study: Study, images: Sequence, header, tell: Tell) -> None:
    desc = ""
    if header is not None and header.measurementInformation is not None:
        desc = header.measurementInformation.protocolName or ""
    for sidx, series in group_series(list(images)).items():
        try:
            vol = assemble_series(series, description=desc or f"series{sidx}")
        except GeometryError as e:
            tell("ERROR", f"series {sidx} skipped: {e}")
            continue
        contrast, why = detect_contrast(header, study.params["contrast"], desc)
        if contrast is None:
            contrast = "t1"
            study.warnings.append(
                f"series {sidx}: contrast not recognised ({why}); treated as T1-weighted. "
                "Set 'Input contrast' in the UI if this is wrong"
            )
        if contrast in study.inputs:
            tell("WARNING", f"series {sidx} is a second {contrast} series in this connection; ignored")
            continue
        if header is not None:
            vol.info = header_info(header)
        tell("INFO", f"series {sidx}: {contrast} ({why}), grid {vol.grid.shape}")
        study.inputs[contrast] = vol
