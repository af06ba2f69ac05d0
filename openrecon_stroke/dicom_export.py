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
Series and SOP instance UIDs are always new. Geometry: ``ImagePositionPatient`` is the centre of
the first pixel of each slice (``Grid.index_to_lps((0, 0, k))``), row direction = grid x
(``read_dir``), column direction = grid y (``phase_dir``), ``PixelSpacing`` = (dy, dx).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

from . import APP_NAME, __version__
from .geometry import Grid, Volume
from .outputs import MAP_SCALE
from .study import DerivedSeries, Study

log = logging.getLogger(__name__)

MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
SEGMENTATION = "1.2.840.10008.5.1.4.1.1.66.4"
MANUFACTURER = APP_NAME

#: Patient / study attributes copied from a source DICOM object (type 2 ones always written).
IDENTITY_KEYWORDS = ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
                     "PatientAge", "PatientSize", "PatientWeight", "StudyInstanceUID", "StudyDate",
                     "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
                     "StudyDescription")
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
          "StudyID", "AccessionNumber", "ReferringPhysicianName")
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def valid_uid(uid) -> bool:
    s = str(uid or "").strip()
    return 0 < len(s) <= 64 and bool(_UID.match(s))


# --------------------------------------------------------------------------------------------
# identity
# --------------------------------------------------------------------------------------------
def identity_from_dataset(ds: Dataset) -> dict:
    """Patient/study attributes of a source DICOM object, keyed by DICOM keyword."""
    out = {}
    for kw in IDENTITY_KEYWORDS:
        if kw in ds and ds.data_element(kw) is not None and ds.data_element(kw).value not in (None, ""):
            out[kw] = ds.data_element(kw).value
    return out


def _da(v) -> str:
    s = re.sub(r"[^0-9]", "", str(v or ""))
    return s if len(s) == 8 else ""


def identity_from_info(info: dict) -> dict:
    """Patient/study attributes from ``Volume.info`` (MRD header or DICOM facts)."""
    out = {}
    if info.get("patient_name"):
        out["PatientName"] = str(info["patient_name"])[:64]
    if info.get("patient_id"):
        out["PatientID"] = str(info["patient_id"])[:64]
    if _da(info.get("patient_birth_date")):
        out["PatientBirthDate"] = _da(info["patient_birth_date"])
    sex = str(info.get("patient_sex") or "").strip().upper()[:1]
    if sex in ("M", "F", "O"):
        out["PatientSex"] = sex
    if valid_uid(info.get("study_uid")):
        out["StudyInstanceUID"] = str(info["study_uid"]).strip()
    if _da(info.get("study_date")):
        out["StudyDate"] = _da(info["study_date"])
    if info.get("study_description"):
        out["StudyDescription"] = str(info["study_description"])[:64]
    return out


# --------------------------------------------------------------------------------------------
# dataset building blocks
# --------------------------------------------------------------------------------------------
def _now():
    t = datetime.now()
    return t.strftime("%Y%m%d"), t.strftime("%H%M%S.%f")[:13]


def _orientation_letters(v) -> str:
    """DICOM PatientOrientation letters for an LPS direction (most significant first)."""
    pos, neg = "LPH", "RAF"
    v = np.asarray(v, dtype=float)
    out = ""
    for i in np.argsort(-np.abs(v)):
        if abs(v[i]) > 0.1:
            out += pos[i] if v[i] > 0 else neg[i]
    return out or "L"


def _ds_number(x: float) -> str:
    """A DS value (at most 16 characters)."""
    s = f"{float(x):.10g}"
    if len(s) > 16:
        s = f"{float(x):.8g}"
    if len(s) > 16:
        s = f"{float(x):.6e}"
    return s


def _new_dataset(sop_class: str, sop_uid: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"ORSTROKE_{__version__}"[:16]
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    d, t = _now()
    ds.InstanceCreationDate, ds.InstanceCreationTime = d, t
    return ds


def _put_identity(ds: Dataset, identity: dict):
    for kw in _TYPE2:
        setattr(ds, kw, "")
    for kw, v in identity.items():
        setattr(ds, kw, v)


@dataclass
class SeriesInfo:
    """Identity of one output series."""

    uid: str
    number: int
    description: str
    modality: str
    identity: dict
    frame_of_reference: str | None = None


def _put_series(ds: Dataset, s: SeriesInfo, instance: int):
    _put_identity(ds, s.identity)
    d, t = _now()
    ds.Modality = s.modality
    ds.SeriesInstanceUID = s.uid
    ds.SeriesNumber = int(s.number)
    ds.SeriesDescription = s.description[:64]
    ds.SeriesDate, ds.SeriesTime = d, t
    ds.ContentDate, ds.ContentTime = d, t
    ds.InstanceNumber = int(instance)
    ds.BodyPartExamined = "HEAD"  # an unpaired part: no Laterality needed
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = APP_NAME
    ds.SoftwareVersions = __version__
    if s.frame_of_reference:
        ds.FrameOfReferenceUID = s.frame_of_reference
        ds.PositionReferenceIndicator = ""


def _put_plane(ds: Dataset, grid: Grid, k: int):
    dx, dy, dz = grid.spacing
    read, phase, normal = grid.direction.T
    ds.ImagePositionPatient = [_ds_number(v) for v in grid.index_to_lps((0.0, 0.0, float(k)))]
    ds.ImageOrientationPatient = [_ds_number(v) for v in np.r_[read, phase]]
    ds.PixelSpacing = [_ds_number(dy), _ds_number(dx)]
    ds.SliceThickness = _ds_number(dz)
    right = np.cross(read, phase)
    ds.SliceLocation = _ds_number(float(grid.index_to_lps((0.0, 0.0, float(k))) @ right))


def _ref_item(sop_class: str, sop_uid: str) -> Dataset:
    it = Dataset()
    it.ReferencedSOPClassUID = sop_class
    it.ReferencedSOPInstanceUID = sop_uid
    return it


def _save(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)
    return path


def _mr_pixels(data: np.ndarray) -> tuple[np.ndarray, float, float]:
    """uint16 stored values and (slope, intercept) such that value = stored*slope + intercept."""
    d = np.nan_to_num(np.asarray(data, dtype=np.float64))
    lo, hi = float(d.min()), float(d.max())
    if lo >= 0 and hi <= 65535 and np.all(d == np.rint(d)):
        return d.astype(np.uint16), 1.0, 0.0
    span = hi - lo if hi > lo else 1.0
    slope = span / 65535.0
    stored = np.clip(np.rint((d - lo) / slope), 0, 65535).astype(np.uint16)
    return stored, slope, lo


def mr_slices(grid: Grid, stored: np.ndarray, series: SeriesInfo, *, derived: bool, info: dict | None = None,
              slope: float = 1.0, intercept: float = 0.0, window: tuple[float, float] | None = None,
              comment: str = "", sources: list | None = None, derivation: str = "") -> list[Dataset]:
    """Classic MR Image datasets, one per z-slice of ``grid``, pixel data ``stored`` (uint16
    ``(nz, ny, nx)``)."""
    info = (info or {}) if not derived else {}  # sequence timing describes acquired images only
    nz, ny, nx = grid.shape
    out = []
    for k in range(nz):
        ds = _new_dataset(MR_IMAGE, generate_uid())
        _put_series(ds, series, k + 1)
        ds.PatientPosition = str(info.get("patient_position") or "")
        ds.ImageType = ["DERIVED", "SECONDARY", "OTHER"] if derived else ["ORIGINAL", "PRIMARY", "OTHER"]
        # the sequence itself is not known here: research mode, or inversion recovery when a TI is
        ds.ScanningSequence = "IR" if info.get("ti_ms") else "RM"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = ""
        ds.RepetitionTime = _ds_number(info["tr_ms"]) if info.get("tr_ms") else ""
        ds.EchoTime = _ds_number(info["te_ms"]) if info.get("te_ms") else ""
        ds.EchoTrainLength = ""
        if info.get("ti_ms"):
            ds.InversionTime = _ds_number(info["ti_ms"])
        if info.get("field_strength_t"):
            ds.MagneticFieldStrength = _ds_number(info["field_strength_t"])
        if info.get("protocol_name"):
            ds.ProtocolName = str(info["protocol_name"])[:64]
        _put_plane(ds, grid, k)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = ny, nx
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 0
        if slope != 1.0 or intercept != 0.0:
            ds.RescaleSlope = _ds_number(slope)
            ds.RescaleIntercept = _ds_number(intercept)
            ds.RescaleType = "US"
        if window is not None:
            ds.WindowCenter = _ds_number(window[0])
            ds.WindowWidth = _ds_number(max(window[1], 1e-6))
        if comment:
            ds.ImageComments = comment[:10240]
        if derivation:
            ds.DerivationDescription = derivation[:1024]
        if sources:
            src = sources[k]
            ds.SourceImageSequence = [_ref_item(src.SOPClassUID, src.SOPInstanceUID)]
        ds.PixelData = np.ascontiguousarray(stored[k].astype("<u2")).tobytes()
        out.append(ds)
    return out


def sc_image(rgb: np.ndarray, series: SeriesInfo, instance: int, *, grid: Grid | None = None, k: int = 0,
             comment: str = "", source=None, derivation: str = "") -> Dataset:
    """One Secondary Capture RGB image (``rgb`` (rows, cols, 3) uint8), with slice ``k`` of
    ``grid`` as its geometry when given."""
    ds = _new_dataset(SECONDARY_CAPTURE, generate_uid())
    _put_series(ds, series, instance)
    ds.ConversionType = "WSD"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.BurnedInAnnotation = "NO"
    if grid is not None:
        _put_plane(ds, grid, k)
        read, phase, _ = grid.direction.T
        ds.PatientOrientation = [_orientation_letters(read), _orientation_letters(phase)]
    else:
        ds.PatientOrientation = ""
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = int(rgb.shape[0]), int(rgb.shape[1])
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelRepresentation = 0
    if comment:
        ds.ImageComments = comment[:10240]
    if derivation:
        ds.DerivationDescription = derivation[:1024]
    if source is not None:
        ds.SourceImageSequence = [_ref_item(source.SOPClassUID, source.SOPInstanceUID)]
    ds.PixelData = np.ascontiguousarray(np.clip(rgb, 0, 255).astype(np.uint8)).tobytes()
    return ds


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
    by_uid = {}
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
    for k, ds in enumerate(out):
        try:
            ipp = np.array([float(v) for v in ds.ImagePositionPatient])
        except Exception:  # noqa: BLE001
            return None
        if np.linalg.norm(ipp - g.index_to_lps((0.0, 0.0, float(k)))) > 0.05 * min(g.spacing) + 1e-3:
            return None
        if "FrameOfReferenceUID" not in ds:
            return None
    return out


# --------------------------------------------------------------------------------------------
# the export
# --------------------------------------------------------------------------------------------
_SEGMENTS = {
    "lesion_mask": ("Stroke lesion", "MorphologicallyAbnormalStructure", "Lesion"),
    "brain_mask": ("Brain", "AnatomicalStructure", "Brain"),
    "head_mask": ("Head", "AnatomicalStructure", "Head"),
}


@dataclass
class ExportResult:
    folder: Path
    series: dict = field(default_factory=dict)  # folder name -> list of files
    warnings: list = field(default_factory=list)

    @property
    def files(self) -> list[Path]:
        return [f for fs in self.series.values() for f in fs]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("_") or "series"


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
        self._study_uid = None
        self._frame_uid = None

    # inputs ----------------------------------------------------------------------------------
    def _shared_study_uid(self, info) -> str:
        if valid_uid(info.get("study_uid")):
            return str(info["study_uid"]).strip()
        if self._study_uid is None:
            self._study_uid = generate_uid()
        return self._study_uid

    def _shared_frame_uid(self, info) -> str:
        if valid_uid(info.get("frame_of_reference_uid")):
            return str(info["frame_of_reference_uid"]).strip()
        if self._frame_uid is None:
            self._frame_uid = generate_uid()
        return self._frame_uid

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
                    why = ("it is an enhanced multi-frame object" if info.get("frame_numbers") else
                           "its files could not be matched to the volume")
                    self.res.warnings.append(f"{key}: the source DICOM is not referenced ({why}); the input "
                                             "series is exported again as classic MR slices and referenced")
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
            ident["StudyInstanceUID"] = self._shared_study_uid(info)
            self.identity[key] = ident
            self.frame[key] = self._shared_frame_uid(info)
            self.numbers[key] = number
            stored, slope, intercept = _mr_pixels(vol.data)
            desc = str(info.get("series_description") or vol.description or key)
            s = SeriesInfo(generate_uid(), number, desc, "MR", ident, self.frame[key])
            dss = mr_slices(vol.grid, stored, s, derived=False, info=info, slope=slope, intercept=intercept,
                            comment=f"input series ({key}) exported by {APP_NAME} {__version__}")
            self.sources[key] = dss
            self._write(f"input_{key}", dss)

    # derived ---------------------------------------------------------------------------------
    def _series(self, d: DerivedSeries, modality: str) -> SeriesInfo:
        key = d.reference
        j = self.counter[key] = self.counter.get(key, 0) + 1
        base = self.study.inputs[key].description or key
        return SeriesInfo(generate_uid(), self.numbers[key] * 100 + j, f"{base}_{d.description}", modality,
                          self.identity[key], self.frame[key])

    def _write(self, folder: str, datasets: list[Dataset]):
        name = _safe(folder)
        files = [_save(ds, self.out / name / f"{i + 1:04d}.dcm") for i, ds in enumerate(datasets)]
        self.res.series[name] = files

    def derived(self, d: DerivedSeries):
        vol = self.study.inputs[d.reference]
        folder = f"{d.name}_{d.reference}"
        src = self.sources[d.reference]
        how = f"{APP_NAME} {__version__}: {d.comment or d.description}"
        if d.kind == "mask":
            self._write(folder, [self._seg(d, src)])
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
            self._write(folder, mr_slices(vol.grid, stored, s, derived=True, window=window, comment=comment,
                                          sources=src, derivation=how))
        elif d.kind == "rgb":
            s = self._series(d, "OT")
            s.frame_of_reference = self.frame[d.reference]
            self._write(folder, [sc_image(d.data[k], s, k + 1, grid=vol.grid, k=k, comment=d.comment,
                                          source=src[k], derivation=how) for k in range(vol.grid.shape[0])])
        elif d.kind == "page":
            s = self._series(d, "OT")
            s.frame_of_reference = None
            self._write(folder, [sc_image(d.data[0], s, 1, comment=d.comment, derivation=how)])
        else:  # pragma: no cover - DerivedSeries validates kinds
            raise ValueError(f"unknown kind {d.kind}")

    def _seg(self, d: DerivedSeries, src: list[Dataset]):
        import highdicom as hd
        from pydicom.sr.codedict import codes

        label, category, kind = _SEGMENTS.get(d.name, (d.description.title() or d.name, "Tissue", "Tissue"))
        algo = hd.AlgorithmIdentificationSequence(name=APP_NAME, version=__version__,
                                                  family=codes.cid7162.ArtificialIntelligence)
        desc = hd.seg.SegmentDescription(
            segment_number=1, segment_label=label[:64],
            segmented_property_category=getattr(codes.SCT, category),
            segmented_property_type=getattr(codes.SCT, kind),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algo)
        s = self._series(d, "SEG")
        mask = (np.asarray(d.data) > 0).astype(np.uint8)
        seg = hd.seg.Segmentation(
            source_images=src, pixel_array=mask, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[desc], series_instance_uid=s.uid, series_number=s.number,
            sop_instance_uid=generate_uid(), instance_number=1, manufacturer=MANUFACTURER,
            manufacturer_model_name=APP_NAME, software_versions=__version__, device_serial_number="0",
            series_description=s.description[:64], content_label=_safe(d.description).upper()[:16] or "MASK",
            content_description=(d.comment or d.description)[:64], omit_empty_frames=False)
        return seg


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


# --------------------------------------------------------------------------------------------
# MRD images (as returned by the server) -> DICOM
# --------------------------------------------------------------------------------------------
def _ordered(images) -> list:
    """Images of one 2D series sorted along the slice normal (as geometry.assemble_series)."""
    h = images[0].getHead()
    n = np.asarray(h.slice_dir, dtype=float)
    if np.linalg.norm(n) < 0.5:
        n = np.cross(np.asarray(h.read_dir, float), np.asarray(h.phase_dir, float))
    return sorted(images, key=lambda im: float(np.asarray(im.getHead().position, float) @ n))


def _series_data(images) -> np.ndarray:
    """(channels, nz, ny, nx) data of one series in grid order."""
    if len(images) == 1:
        return np.asarray(images[0].data)
    return np.concatenate([np.asarray(im.data) for im in _ordered(images)], axis=1)


def study_from_mrd(returned: list, header_xml: str = "", sent: list | None = None) -> Study:
    """A :class:`Study` rebuilt from MRD images as the server returned them: originals (no
    ``ImageProcessingHistory``; else the ``sent`` images) become inputs, the rest derived series
    on the input with the same grid (kinds from DataRole, image type and windows)."""
    from .geometry import assemble_series, group_series
    from .mrdfile import header_info, parse_header

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
        raise ValueError("no original images to place the returned series on (send originals, or give "
                         "the images that were sent)")
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
            d = DerivedSeries(name, ref, data[0].astype(np.float32) / MAP_SCALE, "map", desc, window=win,
                              comment=comment)
        else:
            d = DerivedSeries(name, ref, data[0].astype(np.float32), "image", desc, comment=comment)
        while (d.name, d.reference) in taken:
            d.name += "_x"
        taken.add((d.name, d.reference))
        study.add(d)
    return study


def _first_channel(im):
    import ismrmrd

    out = ismrmrd.Image(head=im.getHead(), data=np.ascontiguousarray(np.asarray(im.data)[:1]))
    return out


def export_mrd_images(returned: list, out_dir, *, header_xml: str = "", sent: list | None = None) -> ExportResult:
    """Write MRD images returned by the server (and their originals) as DICOM under ``out_dir``."""
    return export_study(study_from_mrd(returned, header_xml, sent), out_dir)
