"""Load an image volume from a file or folder: NIfTI, DICOM (classic or enhanced), ISMRMRD.

:func:`load_volume` returns a :class:`~openrecon_stroke.geometry.Volume` on an exact LPS grid
(conventions in :mod:`openrecon_stroke.geometry`) with identity and sequence facts in
``Volume.info``. :func:`header_xml_for` builds a matching MRD XML header.

DICOM geometry, stated once:

* ``ImagePositionPatient`` (IPP) is the LPS centre of the first transmitted pixel (row 0,
  column 0) of a slice; it is the grid origin of the slice lowest along the slice normal.
* ``ImageOrientationPatient`` (IOP) holds the *row* direction cosine (direction in which the
  column index grows: grid x / MRD ``read_dir``) then the *column* direction cosine (direction
  in which the row index grows: grid y / MRD ``phase_dir``). The slice normal is their cross
  product (grid z, right-handed); slices are sorted along it, never by InstanceNumber.
* ``PixelSpacing`` is ``(row spacing, column spacing)`` = ``(dy, dx)``: the first value is
  the distance between rows, i.e. along the column direction.
* The slice spacing comes from the slice positions (not SliceThickness or
  SpacingBetweenSlices), and must be regular.

Every failure is a :class:`InputError` (a ``ValueError``) with a sentence that says what is
wrong with the input.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from . import mrdfile
from .geometry import SPACING_RTOL, Grid, Volume, assemble_series, group_series
from .kspace import reconstruct

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

NIFTI_SUFFIXES = (".nii", ".nii.gz")
OTHER_ITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")
HDF5_SUFFIXES = (".h5", ".hdf5", ".mrd", ".ismrmrd")
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"

#: Slices closer than this along the normal (mm) are at the same position.
SAME_POSITION_MM = 0.01
#: Orientation cosines of one stack agree within this.
ORIENTATION_TOL = 1e-3


class InputError(ValueError):
    """The input cannot be read as one image volume (the message says why)."""


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------
def load_volume(path: str | os.PathLike, *, series: str | int | None = None) -> Volume:
    """Load one 3D volume from ``path``.

    Args:
        path: a NIfTI file (``.nii``/``.nii.gz``; other SimpleITK formats such as ``.mha``
            and ``.nrrd`` also work), a folder of DICOM files (classic single-frame slices of one
            series, or an enhanced multi-frame object; other files are ignored), a single
            DICOM file, or an ISMRMRD HDF5 file (images, or raw data when a k-space
            reconstruction is available).
        series: which series to take where the input holds several: a SeriesInstanceUID or
            SeriesNumber for DICOM folders, an ``image_series_index`` for ISMRMRD files. By
            default the DICOM series with most files, or the first MRD image series, is taken
            (with a warning when there was a choice).

    Returns:
        The volume (float32 data ``(nz, ny, nx)`` on an LPS grid) with ``info`` filled from the
        DICOM tags / MRD header where present.

    Raises:
        InputError: (a ``ValueError``) with the reason, for every input that does not give one
            regular volume.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p} does not exist")
    try:
        if p.is_dir():
            return _load_dicom_folder(p, series)
        name = p.name.lower()
        if name.endswith(NIFTI_SUFFIXES) or name.endswith(OTHER_ITK_SUFFIXES):
            return _load_itk(p)
        if name.endswith(HDF5_SUFFIXES) or _has_hdf5_signature(p):
            return _load_mrd(p, series)
        return _load_dicom_file(p)
    except InputError:
        raise
    except ValueError as e:  # GeometryError and friends already speak plainly
        raise InputError(str(e) if str(p) in str(e) else f"{p}: {e}") from None
    except MemoryError:
        raise InputError(f"{p}: the image is too large to load into memory") from None
    except Exception as e:  # never a bare traceback for bad input
        raise InputError(f"{p} could not be read ({type(e).__name__}: {e})") from None


def header_xml_for(volume: Volume, *, as_3d: bool | None = None) -> str:
    """An MRD XML header describing ``volume`` (identity and sequence facts from ``info``).

    Args:
        volume: the volume to be sent.
        as_3d: describe one 3D image (matrix z = nz) rather than ``nz`` 2D slices; defaults to
            ``volume.is_3d``.
    """
    info = volume.info or {}
    if as_3d is None:
        as_3d = volume.is_3d
    nz, ny, nx = volume.grid.shape
    dx, dy, dz = volume.grid.spacing
    if as_3d:
        matrix, fov, slices = (nx, ny, nz), (nx * dx, ny * dy, nz * dz), 1
    else:
        matrix, fov, slices = (nx, ny, 1), (nx * dx, ny * dy, dz), nz
    protocol = (info.get("protocol_name") or info.get("series_description")
                or volume.description or "converted")
    kw = dict(protocol_name=str(protocol),
              series_description=str(info.get("series_description") or volume.description or protocol),
              matrix=matrix, fov_mm=fov, slices=slices)
    for key in ("patient_id", "patient_name", "study_uid", "frame_of_reference_uid"):
        if info.get(key):
            kw[key] = str(info[key])
    for key in ("tr_ms", "te_ms", "ti_ms", "field_strength_t"):
        v = _float_or_none(info.get(key))
        if v is not None and (key != "field_strength_t" or v > 0):
            kw[key] = v
    xml = mrdfile.make_header_xml(**kw)
    return _add_optional_header_fields(xml, info)


def _add_optional_header_fields(xml: str, info: dict) -> str:
    """Carry birth date, sex, study date and series UID into the header where they are valid."""
    extra = {k: info.get(k) for k in ("patient_birth_date", "patient_sex", "study_date", "series_uid")}
    if not any(extra.values()):
        return xml
    from ismrmrd.xsd.ismrmrdschema.ismrmrd import XmlDate  # xsdata's date type, via ismrmrd

    hdr = mrdfile.parse_header(xml)

    def date(v):
        s = str(v or "").strip()
        if len(s) == 8 and s.isdigit():
            try:
                return XmlDate(int(s[:4]), int(s[4:6]), int(s[6:8]))
            except ValueError:
                return None
        return None

    if date(extra["patient_birth_date"]) and hdr.subjectInformation is not None:
        hdr.subjectInformation.patientBirthdate = date(extra["patient_birth_date"])
    sex = str(extra["patient_sex"] or "").strip().upper()
    if sex in ("M", "F", "O") and hdr.subjectInformation is not None:
        hdr.subjectInformation.patientGender = sex
    if date(extra["study_date"]) and hdr.studyInformation is not None:
        hdr.studyInformation.studyDate = date(extra["study_date"])
    if extra["series_uid"] and hdr.measurementInformation is not None:
        hdr.measurementInformation.seriesInstanceUIDRoot = str(extra["series_uid"])
    try:
        return hdr.toXML("utf-8")
    except Exception as e:  # pragma: no cover - the minimal header is still valid
        log.warning("optional header fields dropped (%s)", e)
        return xml


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------
def _has_hdf5_signature(p: Path) -> bool:
    try:
        with open(p, "rb") as f:
            return f.read(8) == HDF5_SIGNATURE
    except OSError:
        return False


def _float_or_none(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _str(v) -> str:
    if v is None:
        return ""
    return str(v).strip().rstrip("\x00")


def _orthonormal_frame(row, col, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit row and column cosines (column made exactly orthogonal) and their normal."""
    row = np.asarray(row, dtype=np.float64)
    col = np.asarray(col, dtype=np.float64)
    nr, nc = np.linalg.norm(row), np.linalg.norm(col)
    if not (np.isfinite(nr) and np.isfinite(nc)) or abs(nr - 1) > 0.01 or abs(nc - 1) > 0.01:
        raise InputError(f"{what}: ImageOrientationPatient {tuple(np.r_[row, col])} does not hold "
                         "two unit direction cosines")
    row = row / nr
    col = col / nc
    if abs(row @ col) > 0.01:
        raise InputError(f"{what}: the row and column directions of ImageOrientationPatient are "
                         f"not perpendicular (cosine {row @ col:.4f})")
    col = col - (col @ row) * row
    col = col / np.linalg.norm(col)
    return row, col, np.cross(row, col)


@dataclass
class _Slice:
    """One 2D image (a classic file or a frame of a multi-frame object) with its geometry."""

    ipp: np.ndarray
    row: np.ndarray
    col: np.ndarray
    spacing_rc: tuple[float, float]  # PixelSpacing: (row spacing = dy, column spacing = dx)
    rows: int
    cols: int
    key: tuple = ()  # non-spatial identity (echo, time point, ...) for splitting stacks
    source: object = None  # file path (classic) or frame index (multi-frame)
    sop_uid: str = ""
    slope: float = 1.0
    intercept: float = 0.0
    extra: dict = field(default_factory=dict)


def _stack_geometry(slices: list[_Slice], what: str, thickness: float | None) -> tuple[Grid, list[_Slice]]:
    """Sort slices of one stack along the normal and build the grid; checks consistency."""
    first = slices[0]
    row, col, normal = _orthonormal_frame(first.row, first.col, what)
    for s in slices[1:]:
        if not (np.allclose(s.row, first.row, atol=ORIENTATION_TOL)
                and np.allclose(s.col, first.col, atol=ORIENTATION_TOL)):
            raise InputError(
                f"{what}: DICOM slices have different orientations (for example "
                f"{_fmt(first.row)}/{_fmt(first.col)} and {_fmt(s.row)}/{_fmt(s.col)}); "
                "a localizer or a multi-stack series cannot form one volume")
        if (s.rows, s.cols) != (first.rows, first.cols):
            raise InputError(f"{what}: DICOM slices have different matrix sizes "
                             f"({first.cols}x{first.rows} and {s.cols}x{s.rows} columns x rows)")
        if not np.allclose(s.spacing_rc, first.spacing_rc, rtol=1e-4, atol=1e-6):
            raise InputError(f"{what}: DICOM slices have different pixel spacings "
                             f"({first.spacing_rc} and {s.spacing_rc} mm)")
    dy, dx = (float(v) for v in first.spacing_rc)
    if not (dx > 0 and dy > 0 and math.isfinite(dx) and math.isfinite(dy)):
        raise InputError(f"{what}: PixelSpacing {first.spacing_rc} is not a pair of positive numbers")
    along = np.array([s.ipp @ normal for s in slices])
    order = np.argsort(along, kind="stable")
    slices = [slices[i] for i in order]
    along = along[order]
    if len(slices) == 1:
        dz = thickness if thickness and thickness > 0 else None
        if dz is None:
            dz = 1.0
            log.warning("%s: a single slice without SliceThickness; assuming 1 mm", what)
    else:
        steps = np.diff(along)
        if np.any(steps < SAME_POSITION_MM):
            n = int(np.sum(steps < SAME_POSITION_MM))
            raise InputError(
                f"{what}: {n} slice(s) share a position with another slice (echoes, repetitions "
                "or several acquisitions in one series?); cannot form one volume")
        dz = float(np.median(steps))
        if np.max(np.abs(steps - dz)) > SPACING_RTOL * dz + 1e-3:
            raise InputError(
                f"{what}: series has irregular slice spacing ({steps.min():.3f} to "
                f"{steps.max():.3f} mm between neighbouring slices; missing slices or a gap?); "
                "cannot form one volume")
        pos = np.array([s.ipp for s in slices])
        off = pos - pos[0]
        perp = off - np.outer(off @ normal, normal)
        shift = float(np.max(np.linalg.norm(perp, axis=1)))
        if shift > max(0.05 * min(dx, dy), 1e-2):
            raise InputError(
                f"{what}: slice positions are shifted in-plane by up to {shift:.2f} mm, so the "
                "slices do not stack along their normal; cannot form one volume")
    grid = Grid(shape=(len(slices), first.rows, first.cols), spacing=(dx, dy, dz),
                direction=np.stack([row, col, normal], axis=1), origin=slices[0].ipp)
    return grid, slices


def _fmt(v) -> str:
    return "(" + ", ".join(f"{float(x):.3f}" for x in v) + ")"


def _select_stack(slices: list[_Slice], what: str, fields: list[str]) -> list[_Slice]:
    """From slices of one orientation, keep one complete stack (one image per position).

    ``_Slice.key`` holds values named by ``fields`` (echo, time point, ...). When positions
    repeat, slices are split by those values and the first split (in value order) that has an
    image at every position is kept, with a warning.
    """
    normal = _orthonormal_frame(slices[0].row, slices[0].col, what)[2]
    along = np.array([s.ipp @ normal for s in slices])
    uniq = np.sort(along)
    clusters = [uniq[0]]
    for a in uniq[1:]:
        if a - clusters[-1] >= SAME_POSITION_MM:
            clusters.append(a)
    clusters = np.array(clusters)
    pos_ids = np.argmin(np.abs(along[:, None] - clusters[None, :]), axis=1)
    npos = len(clusters)
    if npos == len(slices):
        return slices

    def sort_key(k):
        return tuple((v is None, v if isinstance(v, (int, float)) else str(v)) for v in k)

    def try_split(index: list[int]):
        groups: dict[tuple, list[int]] = {}
        for i, s in enumerate(slices):
            groups.setdefault(tuple(s.key[j] for j in index), []).append(i)
        if len(groups) < 2:
            return None
        for k in sorted(groups, key=sort_key):
            ids = groups[k]
            got = pos_ids[ids]
            if len(set(got.tolist())) == npos and len(ids) == npos:
                return k, ids, len(groups)
        return None

    varying = [j for j in range(len(fields)) if len({s.key[j] for s in slices}) > 1]
    for index in ([varying] if varying else []) + [[j] for j in varying]:
        found = try_split(index)
        if found:
            k, ids, n = found
            label = ", ".join(f"{fields[j]} {v}" for j, v in zip(index, k))
            log.warning("%s: %d images at %d positions form %d stacks (different %s); kept the first "
                        "complete one (%s)", what, len(slices), npos, n,
                        "/".join(fields[j] for j in index), label)
            return [slices[i] for i in ids]
    # No field separates them. Equal repeats at every position (repetitions): keep the first
    # image at each position (by InstanceNumber / frame number); anything else is an error.
    counts = np.bincount(pos_ids, minlength=npos)
    if counts.min() != counts.max():
        raise InputError(
            f"{what}: {len(slices) - npos} slice(s) share a position with another slice, and not "
            f"every position has the same number of images ({counts.min()} to {counts.max()}); "
            "cannot tell which images form one volume")
    order = sorted(range(len(slices)), key=lambda i: (slices[i].extra.get("order", i), i))
    seen: set[int] = set()
    keep = []
    for i in order:
        if int(pos_ids[i]) not in seen:
            seen.add(int(pos_ids[i]))
            keep.append(slices[i])
    log.warning("%s: %d images at %d positions (%d per position: repetitions?); kept the first "
                "image at each position", what, len(slices), npos, int(counts[0]))
    return keep


# --------------------------------------------------------------------------------------------
# NIfTI and other SimpleITK formats
# --------------------------------------------------------------------------------------------
_ITK_INTEGER = {sitk.sitkUInt8, sitk.sitkInt8, sitk.sitkUInt16, sitk.sitkInt16, sitk.sitkUInt32,
                sitk.sitkInt32, sitk.sitkUInt64, sitk.sitkInt64}


def _load_itk(p: Path) -> Volume:
    try:
        img = sitk.ReadImage(str(p))
    except RuntimeError as e:
        msg = str(e).strip().splitlines()
        detail = next((m for m in msg if "orthonormal" in m.lower()), msg[-1] if msg else "")
        raise InputError(f"{p} could not be read as an image file ({detail.strip()})") from None
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{p} holds {img.GetNumberOfComponentsPerPixel()} values per voxel "
                         "(colour, vector or complex data); a scalar image is needed")
    dim = img.GetDimension()
    if dim == 4:
        size = list(img.GetSize())
        log.warning("%s is 4D (%d volumes); using the first volume", p, size[3])
        size[3] = 0
        f = sitk.ExtractImageFilter()
        f.SetSize(size)
        f.SetIndex([0, 0, 0, 0])
        f.SetDirectionCollapseToStrategy(sitk.ExtractImageFilter.DIRECTIONCOLLAPSETOSUBMATRIX)
        img = f.Execute(img)
    elif dim == 2:
        log.warning("%s is a single 2D image; treating it as one slice 1 mm thick at z = 0 "
                    "(a 2D file has no through-plane position)", p)
        d2 = np.array(img.GetDirection()).reshape(2, 2)
        o2, s2 = img.GetOrigin(), img.GetSpacing()
        img = sitk.JoinSeries([img])
        d3 = np.eye(3)
        d3[:2, :2] = d2
        img.SetDirection(tuple(d3.flatten()))
        img.SetOrigin((o2[0], o2[1], 0.0))
        img.SetSpacing((s2[0], s2[1], 1.0))
    elif dim != 3:
        raise InputError(f"{p} is a {dim}D image; a 3D volume is needed")
    integer = img.GetPixelID() in _ITK_INTEGER
    arr = sitk.GetArrayFromImage(img)
    if not np.all(np.isfinite(arr)) and not integer:
        log.warning("%s contains non-finite values; they are set to 0", p)
        arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
    try:
        grid = Grid.from_sitk(img)
    except ValueError as e:
        raise InputError(f"{p}: the image geometry is unusable ({e})") from None
    desc = p.name
    for suf in NIFTI_SUFFIXES + OTHER_ITK_SUFFIXES:
        if desc.lower().endswith(suf):
            desc = desc[: -len(suf)]
            break
    info = {"series_description": desc, "protocol_name": desc, "source_integer": bool(integer)}
    return Volume(data=arr.astype(np.float32), grid=grid, description=desc, info=info)


# --------------------------------------------------------------------------------------------
# ISMRMRD
# --------------------------------------------------------------------------------------------
def _info_from_mrd_header(xml: str) -> dict:
    if not xml:
        return {}
    try:
        return mrdfile.header_info(mrdfile.parse_header(xml))
    except ValueError as e:
        log.warning("MRD header not used: %s", e)
        return {}


def _reconstruct_raw(stream: mrdfile.MrdStream, p: Path) -> list:
    if not stream.header_xml:
        raise InputError(f"{p} holds raw data but no MRD XML header describing the encoding")
    try:
        return reconstruct(stream.acquisitions, mrdfile.parse_header(stream.header_xml))
    except ValueError as e:
        raise InputError(f"{p}: raw data could not be reconstructed: {e}") from None


def _load_mrd(p: Path, series) -> Volume:
    stream = mrdfile.read(p)
    images = stream.images
    if not images:
        if stream.acquisitions:
            images = _reconstruct_raw(stream, p)
        if not images:
            raise InputError(f"{p} holds no images and no raw data")
    groups = group_series(images)
    if series is not None:
        try:
            key = int(series)
        except (TypeError, ValueError):
            raise InputError(f"{p}: series must be an image series index (a number), got {series!r}") from None
        if key not in groups:
            raise InputError(f"{p} has no image series {key} (it has {sorted(groups)})")
    else:
        key = next(iter(groups))
        if len(groups) > 1:
            log.warning("%s holds image series %s; using series %d", p, sorted(groups), key)
    info = _info_from_mrd_header(stream.header_xml)
    desc = info.get("series_description") or info.get("protocol_name") or p.stem
    vol = assemble_series(groups[key], description=desc)
    vol.info = info
    vol.info.setdefault("source_integer", all(
        np.issubdtype(im.data.dtype, np.integer) for im in groups[key]))
    return vol


# --------------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------------
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
        "PerFrameFunctionalGroupsSequence" in ds and int(ds.get("NumberOfFrames", 1) or 1) > 1)


def _load_dicom_file(p: Path) -> Volume:
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


def _load_dicom_folder(folder: Path, series) -> Volume:
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
            raise InputError(f"folder {folder} holds no DICOM images ({non_image} DICOM file(s) "
                             "without pixel data, such as DICOMDIR or reports)")
        raise InputError(f"folder {folder} holds no DICOM images ({len(files)} file(s), none of "
                         "them DICOM)")
    if skipped:
        log.info("%s: ignored %d non-DICOM file(s)", folder, skipped)
    by_series: dict[str, list] = {}
    for f, ds in headers:
        by_series.setdefault(_str(ds.get("SeriesInstanceUID", "")) or "(no SeriesInstanceUID)", []).append((f, ds))

    def describe(uid):
        ds = by_series[uid][0][1]
        return (f"series {_str(ds.get('SeriesNumber', '?'))} '{_str(ds.get('SeriesDescription', ''))}' "
                f"({len(by_series[uid])} files)")

    if series is not None:
        wanted = str(series).strip()
        match = [u for u in by_series if u == wanted
                 or _str(by_series[u][0][1].get("SeriesNumber", "")) == wanted]
        if not match:
            raise InputError(f"folder {folder} has no series {wanted!r}; it holds "
                             + "; ".join(describe(u) for u in by_series))
        uid = match[0]
    else:
        uid = max(by_series, key=lambda u: (len(by_series[u]), _frames(by_series[u])))
        if len(by_series) > 1:
            log.warning("%s holds %d series (%s); using the one with most files: %s", folder,
                        len(by_series), "; ".join(describe(u) for u in by_series), describe(uid))
    items = by_series[uid]
    multi = [(f, ds) for f, ds in items if _is_multiframe(ds)]
    if multi:
        if len(items) > 1:
            log.warning("%s: series holds %d files including %d multi-frame object(s); using %s",
                        folder, len(items), len(multi), multi[0][0].name)
        return _load_multiframe(multi[0][0])
    return _load_classic(items, f"DICOM series in {folder}")


def _frames(items) -> int:
    return sum(int(ds.get("NumberOfFrames", 1) or 1) for _, ds in items)


def _dicom_info(ds) -> dict:
    """Identity and sequence facts from top-level DICOM attributes."""
    info: dict = {}
    for key, kw in (("patient_name", "PatientName"), ("patient_id", "PatientID"),
                    ("study_uid", "StudyInstanceUID"), ("frame_of_reference_uid", "FrameOfReferenceUID"),
                    ("protocol_name", "ProtocolName"), ("series_description", "SeriesDescription"),
                    ("modality", "Modality"), ("series_uid", "SeriesInstanceUID"),
                    ("study_date", "StudyDate"), ("patient_birth_date", "PatientBirthDate"),
                    ("patient_sex", "PatientSex"), ("series_number", "SeriesNumber"),
                    ("study_description", "StudyDescription"), ("manufacturer", "Manufacturer")):
        v = _str(ds.get(kw, None))
        if v:
            info[key] = v
    for key, kw in (("tr_ms", "RepetitionTime"), ("te_ms", "EchoTime"), ("ti_ms", "InversionTime"),
                    ("field_strength_t", "MagneticFieldStrength")):
        v = _float_or_none(ds.get(kw, None))
        if v is not None:
            info[key] = v
    return info


def _rescale(ds) -> tuple[float, float]:
    slope = _float_or_none(ds.get("RescaleSlope", None))
    intercept = _float_or_none(ds.get("RescaleIntercept", None))
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
        raise InputError(f"{where} is a colour image ({spp} samples per pixel); a greyscale MR "
                         "image is needed")
    try:
        return ds.pixel_array
    except Exception as e:  # noqa: BLE001 - missing codecs, truncated data ...
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        tsn = getattr(ts, "name", ts)
        raise InputError(f"{where}: pixel data could not be decoded (transfer syntax {tsn}: "
                         f"{e}); decompress the images (e.g. with dcmdjpeg/gdcmconv) first") from None


def _is_integral(x: float) -> bool:
    return float(x).is_integer()


def _load_classic(items: list, what: str) -> Volume:
    pydicom, _ = _pydicom()
    slices = []
    for f, ds in items:
        name = f.name
        if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
            raise InputError(f"{what}: {name} has no ImagePositionPatient/ImageOrientationPatient, "
                             "so its position in the patient is unknown")
        if "PixelSpacing" not in ds:
            raise InputError(f"{what}: {name} has no PixelSpacing")
        iop = _vec(ds.ImageOrientationPatient, 6, f"{name}: ImageOrientationPatient")
        slope, intercept = _rescale(ds)
        key = (_first_float(ds.get("EchoNumbers", None)),
               _float_or_none(ds.get("EchoTime", None)),
               _float_or_none(ds.get("TemporalPositionIdentifier", None)),
               _float_or_none(ds.get("InversionTime", None)),
               _str(ds.get("ImageType", [""])[2] if len(ds.get("ImageType", [])) > 2 else ""),
               _float_or_none(ds.get("AcquisitionNumber", None)))
        slices.append(_Slice(
            ipp=_vec(ds.ImagePositionPatient, 3, f"{name}: ImagePositionPatient"),
            row=iop[:3], col=iop[3:],
            spacing_rc=tuple(_vec(ds.PixelSpacing, 2, f"{name}: PixelSpacing")),
            rows=int(ds.Rows), cols=int(ds.Columns), key=key, source=f,
            sop_uid=_str(ds.get("SOPInstanceUID", "")), slope=slope, intercept=intercept,
            extra={"order": _float_or_none(ds.get("InstanceNumber", None)) or 0.0}))
    fields = ["echo number", "echo time", "temporal position", "inversion time", "image type",
              "acquisition number"]
    first_row, first_col = slices[0].row, slices[0].col
    same_orient = all(np.allclose(s.row, first_row, atol=ORIENTATION_TOL)
                      and np.allclose(s.col, first_col, atol=ORIENTATION_TOL) for s in slices)
    if same_orient and len(slices) > 1:
        slices = _select_stack(slices, what, fields)
    thickness = _float_or_none(items[0][1].get("SliceThickness", None)) or \
        _float_or_none(items[0][1].get("SpacingBetweenSlices", None))
    grid, slices = _stack_geometry(slices, what, thickness)
    data = np.empty(grid.shape, dtype=np.float32)
    integer = True
    for k, s in enumerate(slices):
        ds = pydicom.dcmread(str(s.source))
        arr = _pixels(ds, f"{what}: {s.source.name}")
        if arr.shape != (s.rows, s.cols):
            raise InputError(f"{what}: {s.source.name} holds pixel data of shape {arr.shape}, "
                             f"not {s.rows}x{s.cols} (a multi-frame or colour image?)")
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
        raise InputError(f"{what}: PerFrameFunctionalGroupsSequence has "
                         f"{0 if per_frame is None else len(per_frame)} items for {n} frames")
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
            raise InputError(f"{what}: frame {i + 1} has no PlanePositionSequence/"
                             "PlaneOrientationSequence, so its position in the patient is unknown")
        if ps is None:
            raise InputError(f"{what}: frame {i + 1} has no PixelSpacing in PixelMeasuresSequence")
        iopv = _vec(iop, 6, f"{what}: frame {i + 1} ImageOrientationPatient")
        slope = _float_or_none(_fg(shared, fr, "PixelValueTransformationSequence", "RescaleSlope"))
        intercept = _float_or_none(_fg(shared, fr, "PixelValueTransformationSequence", "RescaleIntercept"))
        div = _fg(shared, fr, "FrameContentSequence", "DimensionIndexValues")
        if div is None:
            div = []
        elif hasattr(div, "__iter__") and not isinstance(div, (str, bytes)):
            div = list(div)
        else:
            div = [div]
        dim_key = tuple(int(v) for j, v in enumerate(div) if j >= len(dim_ptrs) or dim_ptrs[j] not in spatial)
        key = (_str(_fg(shared, fr, "FrameContentSequence", "StackID")),
               _float_or_none(_fg(shared, fr, "MREchoSequence", "EffectiveEchoTime")),
               _float_or_none(_fg(shared, fr, "FrameContentSequence", "TemporalPositionIndex")),
               _str(_fg(shared, fr, "MRImageFrameTypeSequence", "ComplexImageComponent")),
               dim_key)
        slices.append(_Slice(
            ipp=_vec(ipp, 3, f"{what}: frame {i + 1} ImagePositionPatient"), row=iopv[:3], col=iopv[3:],
            spacing_rc=tuple(_vec(ps, 2, f"{what}: frame {i + 1} PixelSpacing")),
            rows=int(ds.Rows), cols=int(ds.Columns), key=key, source=i,
            sop_uid=_str(ds.get("SOPInstanceUID", "")),
            slope=slope if slope not in (None, 0.0) else slope0,
            intercept=intercept if intercept is not None else intercept0,
            extra={"thickness": _float_or_none(_fg(shared, fr, "PixelMeasuresSequence", "SliceThickness")),
                   "spacing": _float_or_none(_fg(shared, fr, "PixelMeasuresSequence", "SpacingBetweenSlices")),
                   "tr": _float_or_none(_fg(shared, fr, "MRTimingAndRelatedParametersSequence", "RepetitionTime")),
                   "te": _float_or_none(_fg(shared, fr, "MREchoSequence", "EffectiveEchoTime")),
                   "ti": _first_float(_fg(shared, fr, "MRModifierSequence", "InversionTimes"))}))
    # Stacks: by StackID, then orientation; keep the first (in frame order) and warn.
    stacks: list[list[_Slice]] = []
    for s in slices:
        for st in stacks:
            f0 = st[0]
            if f0.key[0] == s.key[0] and np.allclose(f0.row, s.row, atol=ORIENTATION_TOL) \
                    and np.allclose(f0.col, s.col, atol=ORIENTATION_TOL):
                st.append(s)
                break
        else:
            stacks.append([s])
    if len(stacks) > 1:
        log.warning("%s: frames form %d stacks (different StackID or orientation, sizes %s); "
                    "kept the first (%d frames)", what, len(stacks), [len(st) for st in stacks],
                    len(stacks[0]))
    chosen = _select_stack(stacks[0], what, ["stack", "echo time", "temporal position",
                                             "complex component", "dimension index"])
    e0 = chosen[0].extra
    grid, chosen = _stack_geometry(chosen, what, e0["thickness"] or e0["spacing"])
    pixels = _pixels(ds, what)
    if n == 1 and pixels.ndim == 2:
        pixels = pixels[None]
    if pixels.shape != (n, int(ds.Rows), int(ds.Columns)):
        raise InputError(f"{what}: pixel data has shape {pixels.shape}, expected "
                         f"{n} frames of {ds.Rows}x{ds.Columns}")
    data = np.empty(grid.shape, dtype=np.float32)
    integer = np.issubdtype(pixels.dtype, np.integer)
    for k, s in enumerate(chosen):
        data[k] = pixels[s.source].astype(np.float64) * s.slope + s.intercept
        integer &= _is_integral(s.slope) and _is_integral(s.intercept)
    info = _dicom_info(ds)
    for key, v in (("tr_ms", e0["tr"]), ("te_ms", e0["te"]), ("ti_ms", e0["ti"])):
        if v is not None and key not in info:
            info[key] = v
    info["sop_instance_uids"] = [s.sop_uid for s in chosen]
    info["frame_numbers"] = [int(s.source) + 1 for s in chosen]
    info["source_integer"] = bool(integer)
    desc = info.get("series_description") or info.get("protocol_name") or p.name
    return Volume(data=data, grid=grid, description=desc, info=info)


def _first_float(v) -> float | None:
    """A number, or the first of a multi-valued attribute."""
    if v is None:
        return None
    if hasattr(v, "__iter__") and not isinstance(v, (str, bytes)):
        v = list(v)
        return _float_or_none(v[0]) if v else None
    return _float_or_none(v)
