"""DICOM objects of one output series, one small constructor each, on exact slice geometry.

* :func:`mr_slices`: classic **MR Image** slices (inputs without DICOM files of their own, and
  float maps / images), built with pydicom (highdicom has no classic MR constructor);
* :func:`sc_image`: one RGB **Secondary Capture** (highdicom ``SCImage``), with the slice
  geometry when it shows one slice of a grid (overlay), without for a page (report);
* :func:`segmentation`: a binary **Segmentation** (highdicom ``Segmentation``) of one segment,
  frames on exactly the source slices.

Identity: :func:`identity_from_dataset` (patient/study attributes of a source DICOM object) and
:func:`identity_from_info` (from ``Volume.info``). Geometry: ``ImagePositionPatient`` is the
centre of the first pixel of each slice (``Grid.index_to_lps((0, 0, k))``), row direction =
grid x (``read_dir``), column direction = grid y (``phase_dir``), ``PixelSpacing`` = (dy, dx).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid

from . import APP_NAME, __version__
from .geometry import Grid

MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
SEGMENTATION = "1.2.840.10008.5.1.4.1.1.66.4"
MANUFACTURER = APP_NAME

#: Patient / study attributes copied from a source DICOM object (type 2 ones always written).
IDENTITY_KEYWORDS = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyDescription",
)
_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)
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
        el = ds.data_element(kw) if kw in ds else None
        if el is not None and el.value not in (None, ""):
            out[kw] = el.value
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


def _new_dataset(sop_class: str, sop_uid: UID) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
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


def mr_pixels(data: np.ndarray) -> tuple[np.ndarray, float, float]:
    """uint16 stored values and (slope, intercept) such that value = stored*slope + intercept."""
    d = np.nan_to_num(np.asarray(data, dtype=np.float64))
    lo, hi = float(d.min()), float(d.max())
    if lo >= 0 and hi <= 65535 and np.all(d == np.rint(d)):
        return d.astype(np.uint16), 1.0, 0.0
    span = hi - lo if hi > lo else 1.0
    slope = span / 65535.0
    stored = np.clip(np.rint((d - lo) / slope), 0, 65535).astype(np.uint16)
    return stored, slope, lo


def mr_slices(
    grid: Grid,
    stored: np.ndarray,
    series: SeriesInfo,
    *,
    derived: bool,
    info: dict | None = None,
    slope: float = 1.0,
    intercept: float = 0.0,
    window: tuple[float, float] | None = None,
    comment: str = "",
    sources: list | None = None,
    derivation: str = "",
) -> list[Dataset]:
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


def sc_image(
    rgb: np.ndarray,
    series: SeriesInfo,
    instance: int,
    *,
    grid: Grid,
    k: int | None = None,
    comment: str = "",
    source=None,
    derivation: str = "",
) -> Dataset:
    """One RGB Secondary Capture (``rgb`` (rows, cols, 3) uint8) in the slice plane of ``grid``.

    With ``k``: it shows slice ``k`` of ``grid`` pixel for pixel, and carries that slice's
    geometry (Frame of Reference, position, orientation, spacing) so viewers can place it.
    Without: a picture in that plane (a report page), patient orientation only.
    """
    read, phase, _ = grid.direction.T
    orientation = [_orientation_letters(read), _orientation_letters(phase)]
    ident = series.identity
    ds = hd.sc.SCImage(
        pixel_array=np.ascontiguousarray(np.clip(rgb, 0, 255).astype(np.uint8)),
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        study_instance_uid=ident["StudyInstanceUID"],
        series_instance_uid=series.uid,
        series_number=int(series.number),
        sop_instance_uid=generate_uid(),
        instance_number=int(instance),
        manufacturer=MANUFACTURER,
        patient_orientation=(orientation[0][0], orientation[1][0]),
        specific_character_set="ISO_IR 192",
    )
    ds.PatientOrientation = orientation  # highdicom takes one letter per axis; oblique axes have more
    _put_series(ds, series, instance)
    ds.ConversionType = "WSD"  # made on this workstation, not digitised
    ds.BurnedInAnnotation = "NO"
    if k is not None:
        _put_plane(ds, grid, k)
    if comment:
        ds.ImageComments = comment[:10240]
    if derivation:
        ds.DerivationDescription = derivation[:1024]
    if source is not None:
        ds.SourceImageSequence = [_ref_item(source.SOPClassUID, source.SOPInstanceUID)]
    return ds


#: derived series name -> (segment label, SNOMED category, SNOMED type)
SEGMENTS = {
    "lesion_mask": ("Stroke lesion", "MorphologicallyAbnormalStructure", "Lesion"),
    "brain_mask": ("Brain", "AnatomicalStructure", "Brain"),
    "head_mask": ("Head", "AnatomicalStructure", "Head"),
}


def segmentation(
    mask: np.ndarray, series: SeriesInfo, sources: list[Dataset], *, name: str, description: str, comment: str = ""
) -> Dataset:
    """A binary Segmentation of one segment (``mask`` (nz, ny, nx), non-zero = inside) whose frames
    lie exactly on ``sources`` (the source slices in grid z order)."""
    label, category, kind = SEGMENTS.get(name, (description.title() or name, "Tissue", "Tissue"))
    algo = hd.AlgorithmIdentificationSequence(
        name=APP_NAME, version=__version__, family=codes.cid7162.ArtificialIntelligence
    )
    seg_desc = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=label[:64],
        segmented_property_category=getattr(codes.SCT, category),
        segmented_property_type=getattr(codes.SCT, kind),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algo,
    )
    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=(np.asarray(mask) > 0).astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[seg_desc],
        series_instance_uid=series.uid,
        series_number=series.number,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=APP_NAME,
        software_versions=__version__,
        device_serial_number="0",
        series_description=series.description[:64],
        content_label=safe_name(description).upper()[:16] or "MASK",
        content_description=(comment or description)[:64],
        omit_empty_frames=False,
    )


def safe_name(name: str) -> str:
    """A folder / label name of letters, digits, ``_``, ``.`` and ``-``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("_") or "series"


def save(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)
    return path
