"""DICOM files and folders (classic single-frame slices of one series, or an enhanced
multi-frame object) -> Volume, with identity and sequence facts in ``Volume.info``."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..geometry import Volume
from ..values import first_float, float_or_none, text
from .common import InputError
from .dicom_stack import ORIENTATION_TOL, Slice, select_stack, stack_geometry

log = logging.getLogger(__name__)

CLASSIC_MR = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
#: Other multi-frame image SOP classes with the same functional-group geometry.
MULTIFRAME_CLASSES = {
    ENHANCED_MR: "Enhanced MR Image",
    "1.2.840.10008.5.1.4.1.1.4.3": "Enhanced MR Color Image",
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image",
    "1.2.840.10008.5.1.4.1.1.4.4": "Legacy Converted Enhanced MR Image",
}


def _pydicom():
    import pydicom
    from pydicom.errors import InvalidDicomError

    return pydicom, InvalidDicomError


def _read_header(f: Path):
    """The DICOM header of ``f`` without pixels, or None when ``f`` is not a DICOM file."""
    pydicom, InvalidDicomError = _pydicom()
    try:
        return pydicom.dcmread(str(f), stop_before_pixels=True)
    except (InvalidDicomError, EOFError, OSError, ValueError, TypeError, KeyError, AttributeError):
        return None
    except Exception:  # noqa: BLE001 - malformed files of any kind are skipped
        return None


def _has_pixels(ds) -> bool:
    # stop_before_pixels stops at (7FE0,0010); Rows/Columns say whether an image is there.
    return "Rows" in ds and "Columns" in ds and ds.get("SOPClassUID", None) is not None


def _is_multiframe(ds) -> bool:
    return str(ds.get("SOPClassUID", "")) in MULTIFRAME_CLASSES or (
        "PerFrameFunctionalGroupsSequence" in ds and int(ds.get("NumberOfFrames", 1) or 1) > 1
    )


def load_dicom_file(p: Path) -> Volume:
    ds = _read_header(p)
    if ds is None:
        raise InputError(f"{p} is not a DICOM file, NIfTI file (.nii/.nii.gz) or ISMRMRD file (.h5)")
    if not _has_pixels(ds):
        raise InputError(f"{p} is a DICOM file without an image (SOP class {_sop_name(ds)})")
    if _is_multiframe(ds):
        return _load_multiframe(p)
    return _load_classic([(p, ds)], str(p))


def _sop_name(ds) -> str:
    uid = ds.get("SOPClassUID", None)
    if uid is None:
        return "unknown"
    try:
        return f"{uid.name}"
    except Exception:  # noqa: BLE001
        return str(uid)


def load_dicom_folder(folder: Path, series) -> Volume:
    files = sorted(f for f in folder.rglob("*") if f.is_file())
    if not files:
        raise InputError(f"folder {folder} is empty")
    headers = []
    non_image = 0
    for f in files:
        ds = _read_header(f)
        if ds is None:
            continue
        if not _has_pixels(ds):
            non_image += 1  # DICOMDIR, structured reports, presentation states ...
            continue
        headers.append((f, ds))
    skipped = len(files) - len(headers) - non_image
    if not headers:
        if non_image:
            raise InputError(
                f"folder {folder} holds no DICOM images ({non_image} DICOM file(s) "
                "without pixel data, such as DICOMDIR or reports)"
            )
        raise InputError(f"folder {folder} holds no DICOM images ({len(files)} file(s), none of them DICOM)")
    if skipped:
        log.info("%s: ignored %d non-DICOM file(s)", folder, skipped)
    by_series: dict[str, list] = {}
    for f, ds in headers:
        by_series.setdefault(text(ds.get("SeriesInstanceUID", "")) or "(no SeriesInstanceUID)", []).append((f, ds))

    def describe(uid):
        ds = by_series[uid][0][1]
        return (
            f"series {text(ds.get('SeriesNumber', '?'))} '{text(ds.get('SeriesDescription', ''))}' "
            f"({len(by_series[uid])} files)"
        )

    if series is not None:
        wanted = str(series).strip()
        match = [u for u in by_series if u == wanted or text(by_series[u][0][1].get("SeriesNumber", "")) == wanted]
        if not match:
            raise InputError(
                f"folder {folder} has no series {wanted!r}; it holds " + "; ".join(describe(u) for u in by_series)
            )
        uid = match[0]
    else:
        uid = max(by_series, key=lambda u: (len(by_series[u]), _frames(by_series[u])))
        if len(by_series) > 1:
            log.warning(
                "%s holds %d series (%s); using the one with most files: %s",
                folder,
                len(by_series),
                "; ".join(describe(u) for u in by_series),
                describe(uid),
            )
    items = by_series[uid]
    multi = [(f, ds) for f, ds in items if _is_multiframe(ds)]
    if multi:
        if len(items) > 1:
            log.warning(
                "%s: series holds %d files including %d multi-frame object(s); using %s",
                folder,
                len(items),
                len(multi),
                multi[0][0].name,
            )
        return _load_multiframe(multi[0][0])
    return _load_classic(items, f"DICOM series in {folder}")


def _frames(items) -> int:
    return sum(int(ds.get("NumberOfFrames", 1) or 1) for _, ds in items)


def _dicom_info(ds) -> dict:
    """Identity and sequence facts from top-level DICOM attributes."""
    info: dict = {}
    for key, kw in (
        ("patient_name", "PatientName"),
        ("patient_id", "PatientID"),
        ("study_uid", "StudyInstanceUID"),
        ("frame_of_reference_uid", "FrameOfReferenceUID"),
        ("protocol_name", "ProtocolName"),
        ("series_description", "SeriesDescription"),
        ("modality", "Modality"),
        ("series_uid", "SeriesInstanceUID"),
        ("study_date", "StudyDate"),
        ("patient_birth_date", "PatientBirthDate"),
        ("patient_sex", "PatientSex"),
        ("series_number", "SeriesNumber"),
        ("study_description", "StudyDescription"),
        ("manufacturer", "Manufacturer"),
    ):
        v = text(ds.get(kw, None))
        if v:
            info[key] = v
    for key, kw in (
        ("tr_ms", "RepetitionTime"),
        ("te_ms", "EchoTime"),
        ("ti_ms", "InversionTime"),
        ("field_strength_t", "MagneticFieldStrength"),
    ):
        x = float_or_none(ds.get(kw, None))
        if x is not None:
            info[key] = x
    return info


def _rescale(ds) -> tuple[float, float]:
    slope = float_or_none(ds.get("RescaleSlope", None))
    intercept = float_or_none(ds.get("RescaleIntercept", None))
    return (slope if slope not in (None, 0.0) else 1.0), (intercept or 0.0)


def _vec(v, n: int, what: str) -> np.ndarray:
    try:
        a = np.array([float(x) for x in v], dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{what} is not a list of numbers ({v!r})") from None
    if a.shape != (n,) or not np.all(np.isfinite(a)):
        raise InputError(f"{what} must hold {n} numbers, got {v!r}")
    return a


def _pixels(ds, where: str) -> np.ndarray:
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    if spp != 1:
        raise InputError(f"{where} is a colour image ({spp} samples per pixel); a greyscale MR image is needed")
    try:
        return ds.pixel_array
    except Exception as e:  # noqa: BLE001 - missing codecs, truncated data ...
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        tsn = getattr(ts, "name", ts)
        raise InputError(
            f"{where}: pixel data could not be decoded (transfer syntax {tsn}: "
            f"{e}); decompress the images (e.g. with dcmdjpeg/gdcmconv) first"
        ) from None


def _is_integral(x: float) -> bool:
    return float(x).is_integer()


def _load_classic(items: list, what: str) -> Volume:
    pydicom, _ = _pydicom()
    slices = []
    for f, ds in items:
        name = f.name
        if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
            raise InputError(
                f"{what}: {name} has no ImagePositionPatient/ImageOrientationPatient, "
                "so its position in the patient is unknown"
            )
        if "PixelSpacing" not in ds:
            raise InputError(f"{what}: {name} has no PixelSpacing")
        iop = _vec(ds.ImageOrientationPatient, 6, f"{name}: ImageOrientationPatient")
        slope, intercept = _rescale(ds)
        key = (
            first_float(ds.get("EchoNumbers", None)),
            float_or_none(ds.get("EchoTime", None)),
            float_or_none(ds.get("TemporalPositionIdentifier", None)),
            float_or_none(ds.get("InversionTime", None)),
            text(ds.get("ImageType", [""])[2] if len(ds.get("ImageType", [])) > 2 else ""),
            float_or_none(ds.get("AcquisitionNumber", None)),
        )
        slices.append(
            Slice(
                ipp=_vec(ds.ImagePositionPatient, 3, f"{name}: ImagePositionPatient"),
                row=iop[:3],
                col=iop[3:],
                spacing_rc=tuple(_vec(ds.PixelSpacing, 2, f"{name}: PixelSpacing")),
                rows=int(ds.Rows),
                cols=int(ds.Columns),
                key=key,
                source=f,
                sop_uid=text(ds.get("SOPInstanceUID", "")),
                slope=slope,
                intercept=intercept,
                extra={"order": float_or_none(ds.get("InstanceNumber", None)) or 0.0},
            )
        )
    fields = ["echo number", "echo time", "temporal position", "inversion time", "image type", "acquisition number"]
    first_row, first_col = slices[0].row, slices[0].col
    same_orient = all(
        np.allclose(s.row, first_row, atol=ORIENTATION_TOL) and np.allclose(s.col, first_col, atol=ORIENTATION_TOL)
        for s in slices
    )
    if same_orient and len(slices) > 1:
        slices = select_stack(slices, what, fields)
    thickness = float_or_none(items[0][1].get("SliceThickness", None)) or float_or_none(
        items[0][1].get("SpacingBetweenSlices", None)
    )
    grid, slices = stack_geometry(slices, what, thickness)
    data = np.empty(grid.shape, dtype=np.float32)
    integer = True
    for k, s in enumerate(slices):
        ds = pydicom.dcmread(str(s.source))
        arr = _pixels(ds, f"{what}: {s.source.name}")
        if arr.shape != (s.rows, s.cols):
            raise InputError(
                f"{what}: {s.source.name} holds pixel data of shape {arr.shape}, "
                f"not {s.rows}x{s.cols} (a multi-frame or colour image?)"
            )
        integer &= np.issubdtype(arr.dtype, np.integer) and _is_integral(s.slope) and _is_integral(s.intercept)
        data[k] = arr.astype(np.float64) * s.slope + s.intercept
    info = _dicom_info(items[0][1])
    info["sop_instance_uids"] = [s.sop_uid for s in slices]
    info["source_integer"] = bool(integer)
    desc = info.get("series_description") or info.get("protocol_name") or what
    return Volume(data=data, grid=grid, description=desc, info=info)


def _fg(shared, frame, seq: str, attr: str):
    """An attribute from functional group ``seq``, per-frame first, then shared."""
    for grp in (frame, shared):
        if grp is not None and seq in grp and len(grp[seq].value) and attr in grp[seq][0]:
            return grp[seq][0][attr].value
    return None


def _load_multiframe(p: Path) -> Volume:
    pydicom, _ = _pydicom()
    try:
        ds = pydicom.dcmread(str(p))
    except Exception as e:  # noqa: BLE001
        raise InputError(f"{p} could not be read as DICOM ({e})") from None
    what = f"multi-frame DICOM {p.name}"
    n = int(ds.get("NumberOfFrames", 1) or 1)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence", None)
    shared_seq = ds.get("SharedFunctionalGroupsSequence", None)
    shared = shared_seq[0] if shared_seq else None
    if per_frame is None or len(per_frame) != n:
        raise InputError(
            f"{what}: PerFrameFunctionalGroupsSequence has "
            f"{0 if per_frame is None else len(per_frame)} items for {n} frames"
        )
    # Dimension index values: drop the in-stack position (spatial) and keep the rest as key.
    dim_ptrs = [int(it.get("DimensionIndexPointer", 0) or 0) for it in ds.get("DimensionIndexSequence", [])]
    spatial = {0x00209057, 0x00200032}  # InStackPositionNumber, ImagePositionPatient
    slope0, intercept0 = _rescale(ds)
    slices = []
    for i, fr in enumerate(per_frame):
        ipp = _fg(shared, fr, "PlanePositionSequence", "ImagePositionPatient")
        iop = _fg(shared, fr, "PlaneOrientationSequence", "ImageOrientationPatient")
        ps = _fg(shared, fr, "PixelMeasuresSequence", "PixelSpacing")
        if ipp is None or iop is None:
            raise InputError(
                f"{what}: frame {i + 1} has no PlanePositionSequence/"
                "PlaneOrientationSequence, so its position in the patient is unknown"
            )
        if ps is None:
            raise InputError(f"{what}: frame {i + 1} has no PixelSpacing in PixelMeasuresSequence")
        iopv = _vec(iop, 6, f"{what}: frame {i + 1} ImageOrientationPatient")
        slope = float_or_none(_fg(shared, fr, "PixelValueTransformationSequence", "RescaleSlope"))
        intercept = float_or_none(_fg(shared, fr, "PixelValueTransformationSequence", "RescaleIntercept"))
        div = _fg(shared, fr, "FrameContentSequence", "DimensionIndexValues")
        if div is None:
            div = []
        elif hasattr(div, "__iter__") and not isinstance(div, (str, bytes)):
            div = list(div)
        else:
            div = [div]
        dim_key = tuple(int(v) for j, v in enumerate(div) if j >= len(dim_ptrs) or dim_ptrs[j] not in spatial)
        key = (
            text(_fg(shared, fr, "FrameContentSequence", "StackID")),
            float_or_none(_fg(shared, fr, "MREchoSequence", "EffectiveEchoTime")),
            float_or_none(_fg(shared, fr, "FrameContentSequence", "TemporalPositionIndex")),
            text(_fg(shared, fr, "MRImageFrameTypeSequence", "ComplexImageComponent")),
            dim_key,
        )
        slices.append(
            Slice(
                ipp=_vec(ipp, 3, f"{what}: frame {i + 1} ImagePositionPatient"),
                row=iopv[:3],
                col=iopv[3:],
                spacing_rc=tuple(_vec(ps, 2, f"{what}: frame {i + 1} PixelSpacing")),
                rows=int(ds.Rows),
                cols=int(ds.Columns),
                key=key,
                source=i,
                sop_uid=text(ds.get("SOPInstanceUID", "")),
                slope=slope if slope not in (None, 0.0) else slope0,
                intercept=intercept if intercept is not None else intercept0,
                extra={
                    "thickness": float_or_none(_fg(shared, fr, "PixelMeasuresSequence", "SliceThickness")),
                    "spacing": float_or_none(_fg(shared, fr, "PixelMeasuresSequence", "SpacingBetweenSlices")),
                    "tr": float_or_none(_fg(shared, fr, "MRTimingAndRelatedParametersSequence", "RepetitionTime")),
                    "te": float_or_none(_fg(shared, fr, "MREchoSequence", "EffectiveEchoTime")),
                    "ti": first_float(_fg(shared, fr, "MRModifierSequence", "InversionTimes")),
                },
            )
        )
    # Stacks: by StackID, then orientation; keep the first (in frame order) and warn.
    stacks: list[list[Slice]] = []
    for s in slices:
        for st in stacks:
            f0 = st[0]
            if (
                f0.key[0] == s.key[0]
                and np.allclose(f0.row, s.row, atol=ORIENTATION_TOL)
                and np.allclose(f0.col, s.col, atol=ORIENTATION_TOL)
            ):
                st.append(s)
                break
        else:
            stacks.append([s])
    if len(stacks) > 1:
        log.warning(
            "%s: frames form %d stacks (different StackID or orientation, sizes %s); kept the first (%d frames)",
            what,
            len(stacks),
            [len(st) for st in stacks],
            len(stacks[0]),
        )
    chosen = select_stack(
        stacks[0], what, ["stack", "echo time", "temporal position", "complex component", "dimension index"]
    )
    e0 = chosen[0].extra
    grid, chosen = stack_geometry(chosen, what, e0["thickness"] or e0["spacing"])
    pixels = _pixels(ds, what)
    if n == 1 and pixels.ndim == 2:
        pixels = pixels[None]
    if pixels.shape != (n, int(ds.Rows), int(ds.Columns)):
        raise InputError(f"{what}: pixel data has shape {pixels.shape}, expected {n} frames of {ds.Rows}x{ds.Columns}")
    data = np.empty(grid.shape, dtype=np.float32)
    integer = np.issubdtype(pixels.dtype, np.integer)
    for k, s in enumerate(chosen):
        data[k] = pixels[s.source].astype(np.float64) * s.slope + s.intercept
        integer &= _is_integral(s.slope) and _is_integral(s.intercept)
    info = _dicom_info(ds)
    for name, v in (("tr_ms", e0["tr"]), ("te_ms", e0["te"]), ("ti_ms", e0["ti"])):
        if v is not None and name not in info:
            info[name] = v
    info["sop_instance_uids"] = [s.sop_uid for s in chosen]
    info["frame_numbers"] = [int(s.source) + 1 for s in chosen]
    info["source_integer"] = bool(integer)
    desc = info.get("series_description") or info.get("protocol_name") or p.name
    return Volume(data=data, grid=grid, description=desc, info=info)
