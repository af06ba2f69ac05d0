"""Every output as DICOM, in the input's study and frame of reference.

What each kind of series becomes (one folder per series under the export folder):

* input series without DICOM files of their own (MRD, NIfTI inputs): classic **MR Image**
  slices (folder ``input_<key>``), so that the segmentations have source images to reference;
* ``mask`` (lesion, brain, head masks): **Segmentation** (highdicom, binary, one segment),
  referencing the source images slice by slice, frames on exactly the source slices;
* ``map`` (anomaly) and ``image``: derived classic **MR Image** slices, values as on the
  scanner (maps stored x :data:`~openrecon_stroke.outputs.MAP_SCALE` as uint16, with
  RescaleSlope giving the map's own units), integer window;
* ``rgb`` (overlay): one **Secondary Capture** RGB image per slice, with the slice geometry
  (Frame of Reference, ImagePositionPatient, ImageOrientationPatient, PixelSpacing) so viewers
  can place it; ``page`` (report page): one Secondary Capture without geometry.

Identity: patient and study attributes are copied from the source DICOM files when the input
came as DICOM (its own SOP instances are then referenced), otherwise from ``Volume.info`` (the
MRD XML header's subjectInformation / studyInformation, or nothing for NIfTI: a new study UID).
Series and SOP instance UIDs are always new. The objects themselves, and their geometry, are
:mod:`openrecon_stroke.dicom_objects`'. A study is exported as the pipeline left it, whatever
way it reached us (:func:`openrecon_stroke.outputs.study_from_mrd` rebuilds one from the
images the server returned).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from . import APP_NAME, __version__
from .dicom_objects import (
    SeriesInfo,
    identity_from_dataset,
    identity_from_info,
    mr_pixels,
    mr_slices,
    safe_name,
    save,
    sc_image,
    segmentation,
    valid_uid,
)
from .geometry import Volume
from .outputs import MAP_SCALE
from .study import DerivedSeries, Study

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# source DICOM files of an input
# --------------------------------------------------------------------------------------------
def source_datasets(path, volume: Volume) -> list[Dataset] | None:
    """The classic DICOM slices ``volume`` was loaded from, in grid z order (headers only), or
    None when the input was not classic single-frame DICOM or the files no longer match."""
    uids = (volume.info or {}).get("sop_instance_uids")
    if not path or not uids or (volume.info or {}).get("frame_numbers"):
        return None
    p = Path(path)
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    by_uid: dict[str, Dataset] = {}
    wanted = set(uids)
    for f in files:
        try:
            ds = pydicom.dcmread(str(f), stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - not DICOM
            continue
        u = str(ds.get("SOPInstanceUID", ""))
        if u in wanted:
            by_uid[u] = ds
    if set(by_uid) != wanted:
        return None
    out = [by_uid[u] for u in uids]
    g = volume.grid
    for k, src in enumerate(out):
        try:
            ipp = np.array([float(v) for v in src.ImagePositionPatient])
        except Exception:  # noqa: BLE001
            return None
        if np.linalg.norm(ipp - g.index_to_lps((0.0, 0.0, float(k)))) > 0.05 * min(g.spacing) + 1e-3:
            return None
        if "FrameOfReferenceUID" not in src:
            return None
    return out


# --------------------------------------------------------------------------------------------
# the export
# --------------------------------------------------------------------------------------------
@dataclass
class ExportResult:
    folder: Path
    series: dict = field(default_factory=dict)  # folder name -> list of files
    warnings: list = field(default_factory=list)

    @property
    def files(self) -> list[Path]:
        return [f for fs in self.series.values() for f in fs]


class _Exporter:
    def __init__(self, study: Study, out: Path, sources: dict | None):
        self.study = study
        self.out = Path(out)
        self.res = ExportResult(self.out)
        self.sources: dict[str, list[Dataset]] = {}
        self.identity: dict[str, dict] = {}
        self.frame: dict[str, str] = {}
        self.numbers: dict[str, int] = {}
        self.counter: dict[str, int] = {}
        self._given = sources or {}
        self._new_uids: dict[str, str] = {}

    # inputs ----------------------------------------------------------------------------------
    def _shared_uid(self, info: dict, key: str) -> str:
        """The input's own UID ``info[key]`` when valid, else one new UID shared by every input
        of this export (one study, one frame of reference)."""
        if valid_uid(info.get(key)):
            return str(info[key]).strip()
        if key not in self._new_uids:
            self._new_uids[key] = str(generate_uid())
        return self._new_uids[key]

    def prepare_inputs(self):
        for n, (key, vol) in enumerate(self.study.inputs.items()):
            info = vol.info or {}
            src = None
            given = self._given.get(key)
            if isinstance(given, list):
                src = given
            elif given is not None and info.get("sop_instance_uids"):  # the input was DICOM
                src = source_datasets(given, vol)
                if src is None:
                    why = (
                        "it is an enhanced multi-frame object"
                        if info.get("frame_numbers")
                        else "its files could not be matched to the volume"
                    )
                    self.res.warnings.append(
                        f"{key}: the source DICOM is not referenced ({why}); the input "
                        "series is exported again as classic MR slices and referenced"
                    )
            try:
                number = int(float(info.get("series_number", 0) or 0))
            except ValueError:
                number = 0
            number = number if number > 0 else n + 1
            if src is not None:
                ident = identity_from_dataset(src[0])
                self.identity[key] = ident
                self.frame[key] = str(src[0].FrameOfReferenceUID)
                self.sources[key] = src
                self.numbers[key] = int(src[0].get("SeriesNumber", number) or number)
                continue
            ident = identity_from_info(info)
            ident["StudyInstanceUID"] = self._shared_uid(info, "study_uid")
            self.identity[key] = ident
            self.frame[key] = self._shared_uid(info, "frame_of_reference_uid")
            self.numbers[key] = number
            stored, slope, intercept = mr_pixels(vol.data)
            desc = str(info.get("series_description") or vol.description or key)
            s = SeriesInfo(generate_uid(), number, desc, "MR", ident, self.frame[key])
            dss = mr_slices(
                vol.grid,
                stored,
                s,
                derived=False,
                info=info,
                slope=slope,
                intercept=intercept,
                comment=f"input series ({key}) exported by {APP_NAME} {__version__}",
            )
            self.sources[key] = dss
            self._write(f"input_{key}", dss)

    # derived ---------------------------------------------------------------------------------
    def _series(self, d: DerivedSeries, modality: str) -> SeriesInfo:
        key = d.reference
        j = self.counter[key] = self.counter.get(key, 0) + 1
        base = self.study.inputs[key].description or key
        return SeriesInfo(
            generate_uid(),
            self.numbers[key] * 100 + j,
            f"{base}_{d.description}",
            modality,
            self.identity[key],
            self.frame[key],
        )

    def _write(self, folder: str, datasets: list[Dataset]):
        name = safe_name(folder)
        files = [save(ds, self.out / name / f"{i + 1:04d}.dcm") for i, ds in enumerate(datasets)]
        self.res.series[name] = files

    def derived(self, d: DerivedSeries):
        vol = self.study.inputs[d.reference]
        folder = f"{d.name}_{d.reference}"
        src = self.sources[d.reference]
        how = f"{APP_NAME} {__version__}: {d.comment or d.description}"
        if d.kind == "mask":
            s = self._series(d, "SEG")
            self._write(
                folder, [segmentation(d.data, s, src, name=d.name, description=d.description, comment=d.comment)]
            )
        elif d.kind in ("map", "image"):
            comment = d.comment or d.description
            window = None
            if d.kind == "map":
                # as on the scanner: stored = value x MAP_SCALE, integer window in stored units
                # (a Modality LUT is not part of the classic MR image IOD)
                stored = np.clip(np.rint(np.nan_to_num(d.data) * MAP_SCALE), 0, 65535).astype(np.uint16)
                if d.window is not None:
                    window = (int(round(d.window[0] * MAP_SCALE)), max(1, int(round(d.window[1] * MAP_SCALE))))
                comment = f"{comment}; pixel value = {d.name} x {MAP_SCALE:g}"
            else:
                stored = np.clip(np.rint(np.nan_to_num(d.data)), 0, 65535).astype(np.uint16)
            s = self._series(d, "MR")
            self._write(
                folder,
                mr_slices(
                    vol.grid, stored, s, derived=True, window=window, comment=comment, sources=src, derivation=how
                ),
            )
        elif d.kind == "rgb":
            s = self._series(d, "OT")
            s.frame_of_reference = self.frame[d.reference]
            self._write(
                folder,
                [
                    sc_image(d.data[k], s, k + 1, grid=vol.grid, k=k, comment=d.comment, source=src[k], derivation=how)
                    for k in range(vol.grid.shape[0])
                ],
            )
        elif d.kind == "page":
            s = self._series(d, "OT")
            s.frame_of_reference = None
            self._write(folder, [sc_image(d.data[0], s, 1, grid=vol.grid, comment=d.comment, derivation=how)])
        else:  # pragma: no cover - DerivedSeries validates kinds
            raise ValueError(f"unknown kind {d.kind}")


def export_study(study: Study, out_dir, *, sources: dict | None = None, send_params=None) -> ExportResult:
    """Write the study's outputs (and, where they have no DICOM files, its inputs) as DICOM.

    Args:
        study: a study after its pipeline ran.
        out_dir: folder; one sub-folder per series (``input_<key>``, ``<name>_<key>``).
        sources: per input key, the path it was loaded from (a DICOM folder or file: its slices
            are referenced and its identity copied) or a list of datasets in grid z order.
        send_params: a :class:`~openrecon_stroke.params.Params`; when given, series switched off
            by their UI parameter are left out (as on the scanner).

    A series that cannot be written becomes a warning in the result, never an exception (except
    for an unwritable folder).
    """
    ex = _Exporter(study, Path(out_dir), sources)
    ex.prepare_inputs()
    for d in study.derived:
        if d.reference not in study.inputs:
            continue
        if send_params is not None and d.send_param and not send_params[d.send_param]:
            continue
        try:
            ex.derived(d)
        except Exception as e:  # noqa: BLE001 - one bad series must not lose the others
            log.exception("DICOM export of %s (%s) failed", d.name, d.reference)
            ex.res.warnings.append(f"DICOM export of {d.name} ({d.reference}) failed: {e}")
    for w in ex.res.warnings:
        log.warning(w)
    return ex.res
