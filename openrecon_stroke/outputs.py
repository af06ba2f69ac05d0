"""Derived series -> MRD images the scanner accepts, and the text report.

Every derived image reuses the exact geometry header of the input image it derives from
(position, directions, field of view, slice), gets its own ``image_series_index``, a series
name suffix and fresh meta (never the input's series identity), integer display windows only.

Meta on every derived image (what the scanner reads, see docs/openrecon-notes): ``DataRole``
(``Segmentation`` for masks), ``ImageProcessingHistory``, ``SequenceDescriptionAdditional``
(series name suffix), ``SeriesDescription``, ``ImageComments``, ``Keep_image_geometry``,
``ImageRowDir`` / ``ImageColumnDir``; integer ``WindowCenter`` / ``WindowWidth`` on masks and
maps only; ``InternalSend`` = 1 and no window on RGB (overlay, report page). A report page is
one 2D image of its own size, centred on the input's field of view in its slice plane
(:func:`page_grid`).

:func:`study_from_mrd` reads that encoding back: returned images -> a study of inputs and
derived series (what replay needs to export the server's answer as DICOM).
"""

from __future__ import annotations

import logging
import re

import ismrmrd
import numpy as np

from . import APP_NAME, __version__
from .geometry import Grid, Volume, assemble_series, group_series, image_frame, images_on_headers, slice_order
from .mrdfile import header_info, parse_header
from .study import DerivedSeries, Study

log = logging.getLogger(__name__)

HISTORY = ["OPENRECON", APP_NAME.upper()]
#: Float maps go out as uint16 after multiplying by this factor (windows are integers).
MAP_SCALE = 1000.0


def _suffix(text: str) -> str:
    """A series-name suffix the scanner accepts: letters, digits and underscores."""
    s = "".join(c if c.isascii() and c.isalnum() else "_" for c in str(text)).strip("_")
    return s[:32] or "DERIVED"


def page_grid(grid: Grid, height: int, width: int) -> Grid:
    """Where a 2D page (report image) of ``height`` x ``width`` pixels sits: in the slice plane
    of ``grid`` (same read/phase/slice directions), centred on the volume's centre, square
    pixels sized so that the page spans the larger in-plane field of view, one slice as thick
    as the input's."""
    nz, ny, nx = grid.shape
    dx, dy, dz = grid.spacing
    fov = max(nx * dx, ny * dy)
    s = fov / max(int(height), int(width))
    read, phase, _ = grid.direction.T
    centre = grid.index_to_lps(((nx - 1) / 2, (ny - 1) / 2, (nz - 1) / 2))
    origin = centre - read * s * (width - 1) / 2 - phase * s * (height - 1) / 2
    return Grid((1, int(height), int(width)), (s, s, dz), grid.direction, origin)


def _meta(series: DerivedSeries, volume: Volume, header, is_3d: bool) -> ismrmrd.Meta:
    m = ismrmrd.Meta()
    m["DataRole"] = "Segmentation" if series.kind == "mask" else "Image"
    m["ImageProcessingHistory"] = list(HISTORY) + [series.name.upper()]
    suffix = _suffix(series.description)
    m["SequenceDescriptionAdditional"] = suffix
    base = volume.description or "series"
    m["SeriesDescription"] = f"{base}_{suffix}"
    m["ImageComments"] = (series.comment or series.description)[:1024]
    m["Keep_image_geometry"] = 0 if is_3d else 1
    m["ImageRowDir"] = [f"{v:.9f}" for v in header.read_dir]
    m["ImageColumnDir"] = [f"{v:.9f}" for v in header.phase_dir]
    if series.kind == "mask":
        top = int(max(1, np.max(series.data)))
        m["WindowCenter"], m["WindowWidth"] = str((top + 1) // 2), str(max(top, 1))
    elif series.kind == "map" and series.window is not None:
        c, w = series.window
        m["WindowCenter"], m["WindowWidth"] = str(int(round(c * MAP_SCALE))), str(max(1, int(round(w * MAP_SCALE))))
    elif series.kind in ("rgb", "page"):
        m["InternalSend"] = 1
    return m


def _as_wire(series: DerivedSeries) -> tuple[np.ndarray, int]:
    """Array ``(channels, nz, ny, nx)`` and MRD image_type for a derived series."""
    d = series.data
    if series.kind in ("rgb", "page"):
        return np.moveaxis(np.clip(d, 0, 255).astype(np.uint16), -1, 0), ismrmrd.IMTYPE_RGB
    if series.kind == "map":
        d = np.clip(np.rint(np.nan_to_num(d) * MAP_SCALE), 0, 65535)
    elif series.kind == "image":
        d = np.clip(np.rint(np.nan_to_num(d)), 0, 65535)
    return d.astype(np.uint16)[None], ismrmrd.IMTYPE_MAGNITUDE


def derived_images(series: DerivedSeries, volume: Volume, series_index: int) -> list[ismrmrd.Image]:
    """MRD images of one derived series on ``volume``'s exact input geometry."""
    arr, image_type = _as_wire(series)
    if series.kind == "page":
        heads = page_grid(volume.grid, arr.shape[2], arr.shape[3]).slice_headers()
        is_3d = False
    else:
        heads = volume.mrd_headers()
        is_3d = volume.is_3d
    return images_on_headers(
        arr, heads, series_index, image_type=image_type, meta=lambda h: _meta(series, volume, h, is_3d)
    )


def original_images(images: list[ismrmrd.Image]) -> list[ismrmrd.Image]:
    """The input images, unchanged (the scanner loses what the plugin does not return)."""
    return images


def report_text(study: Study, pipeline_name: str) -> str:
    """One human-readable summary for the scanner log (an MRD TEXT message)."""
    lines = [f"{APP_NAME} {__version__} report (pipeline '{pipeline_name}', RESEARCH USE ONLY)"]
    for key, vol in study.inputs.items():
        g = vol.grid
        lines.append(
            f"input {key}: {g.shape[2]}x{g.shape[1]}x{g.shape[0]} voxels, "
            f"{g.spacing[0]:.2f}x{g.spacing[1]:.2f}x{g.spacing[2]:.2f} mm"
        )
    for k, v in study.findings.items():
        lines.append(f"{k}: {v}")
    for name, t in study.timings_s.items():
        lines.append(f"time {name}: {t:.2f} s ({study.stage_status.get(name, '?')})")
    for w in study.warnings:
        lines.append(f"warning: {w}")
    return "\n".join(lines)


def report_dict(study: Study, pipeline_name: str) -> dict:
    """The report as JSON-ready data (offline ``report.json``)."""
    return {
        "app": APP_NAME,
        "version": __version__,
        "pipeline": pipeline_name,
        "research_use_only": True,
        "inputs": {
            k: {
                "shape_xyz": [v.grid.shape[2], v.grid.shape[1], v.grid.shape[0]],
                "spacing_mm": list(v.grid.spacing),
                "description": v.description,
            }
            for k, v in study.inputs.items()
        },
        "parameters": study.params.as_dict(),
        "findings": study.findings,
        "timings_s": {k: round(v, 4) for k, v in study.timings_s.items()},
        "stage_status": study.stage_status,
        "warnings": study.warnings,
        "derived": [{"name": d.name, "reference": d.reference, "kind": d.kind} for d in study.derived],
    }


# --------------------------------------------------------------------------------------------
# back: MRD images as the server returned them -> a study (the inverse of derived_images)
# --------------------------------------------------------------------------------------------
def _series_data(images) -> np.ndarray:
    """(channels, nz, ny, nx) data of one series in grid order (sorted along the slice normal,
    as :func:`~openrecon_stroke.geometry.assemble_series` does)."""
    if len(images) == 1:
        return np.asarray(images[0].data)
    normal = image_frame(images[0].getHead())[2]
    order = slice_order([im.getHead().position for im in images], normal)
    return np.concatenate([np.asarray(images[i].data) for i in order], axis=1)


def study_from_mrd(returned: list, header_xml: str = "", sent: list | None = None) -> Study:
    """A :class:`Study` rebuilt from MRD images as the server returned them: originals (no
    ``ImageProcessingHistory``; else the ``sent`` images) become inputs, the rest derived series
    on the input with the same grid (kinds from DataRole, image type and windows)."""
    info = {}
    if header_xml:
        try:
            info = header_info(parse_header(header_xml))
        except Exception as e:  # noqa: BLE001
            log.warning("MRD header not usable for DICOM identity (%s)", e)
    groups = group_series(returned)
    originals = {i: ims for i, ims in groups.items() if "ImageProcessingHistory" not in ims[0].meta}
    if not originals and sent:
        originals = group_series(sent)
    study = Study(inputs={})
    for idx, ims in originals.items():
        vol = assemble_series(ims, description=info.get("series_description") or f"series{idx}")
        vol.info = dict(info)
        study.inputs[f"series{idx}"] = vol
    if not study.inputs:
        raise ValueError(
            "no original images to place the returned series on (send originals, or give the images that were sent)"
        )
    taken: set = set()
    for idx, ims in groups.items():
        if idx in originals and "ImageProcessingHistory" not in ims[0].meta:
            continue
        m = ims[0].meta
        head = ims[0].getHead()
        rgb = int(head.image_type) == 6 or int(head.channels) == 3
        data = _series_data(ims)
        one = ims if not rgb else [_first_channel(im) for im in ims]
        grid = assemble_series(one).grid
        ref = next((k for k, v in study.inputs.items() if v.grid.same_as(grid)), None)
        desc = str(m.get("SequenceDescriptionAdditional") or f"SERIES{idx}")
        name = re.sub(r"[^a-z0-9_]+", "_", desc.lower()).strip("_") or f"series{idx}"
        comment = str(m.get("ImageComments") or "")
        if rgb and ref is None and len(ims) == 1:
            ref = next(iter(study.inputs))
            d = DerivedSeries(name, ref, np.moveaxis(data, 0, -1).astype(np.uint8), "page", desc, comment=comment)
        elif ref is None:
            log.warning("returned series %d (%s) is on no input grid; not exported", idx, desc)
            continue
        elif rgb:
            d = DerivedSeries(name, ref, np.moveaxis(data, 0, -1).astype(np.uint8), "rgb", desc, comment=comment)
        elif str(m.get("DataRole", "")) == "Segmentation":
            d = DerivedSeries(name, ref, (data[0] > 0).astype(np.uint8), "mask", desc, comment=comment)
        elif m.get("WindowCenter") is not None and m.get("WindowWidth") is not None:
            win = (float(m.get("WindowCenter")) / MAP_SCALE, float(m.get("WindowWidth")) / MAP_SCALE)
            d = DerivedSeries(
                name, ref, data[0].astype(np.float32) / MAP_SCALE, "map", desc, window=win, comment=comment
            )
        else:
            d = DerivedSeries(name, ref, data[0].astype(np.float32), "image", desc, comment=comment)
        while (d.name, d.reference) in taken:
            d.name += "_x"
        taken.add((d.name, d.reference))
        study.add(d)
    return study


def _first_channel(im):
    return ismrmrd.Image(head=im.getHead(), data=np.ascontiguousarray(np.asarray(im.data)[:1]))
