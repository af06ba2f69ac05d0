"""ISMRMRD HDF5 files: what the simulator writes, the server saves (``--save-data``) and replay sends.

Layout (the ISMRMRD HDF5 format, as the ``ismrmrd`` package's ``Dataset`` writes it): group
``dataset`` with ``xml`` (the MRD header), ``data`` (raw acquisitions, if any) and one group
``image_<series index>`` per image series. Two optional attributes on ``dataset`` record how the
stream was sent, so that a saved stream replays as it arrived: ``openrecon_config`` (the config
name) and ``openrecon_parameters`` (the JSON text of UI parameters). Images and the header go
through ``ismrmrd.Dataset``; the attributes and all readouts at once (the package appends one
readout at a time, resizing every time) through ``h5py`` on the same layout.

Also here: the MRD XML header (parse, identity facts, writing one for a volume).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import ismrmrd
import numpy as np
from ismrmrd.xsd import CreateFromDocument

from .geometry import Volume, images_on_headers
from .values import float_or_none

log = logging.getLogger(__name__)

DATASET = "dataset"


@dataclass
class MrdStream:
    """Everything one connection carries, in order of arrival."""

    header_xml: str = ""
    images: list = field(default_factory=list)  # ismrmrd.Image
    acquisitions: list = field(default_factory=list)  # ismrmrd.Acquisition
    config: str | None = None
    parameters: dict | None = None


def volume_to_images(
    volume: Volume, series_index: int, *, as_3d: bool = False, meta: dict | None = None, dtype=np.uint16
) -> list[ismrmrd.Image]:
    """MRD images of a volume on its own grid: one per slice (default) or a single 3D image.

    Data is cast to ``dtype`` (uint16 magnitude, as scanners send DICOM-like images; values
    are rounded and clipped to the dtype's range).
    """
    data = volume.data
    if np.issubdtype(np.dtype(dtype), np.integer):
        info = np.iinfo(dtype)
        data = np.clip(np.rint(data), info.min, info.max)
    heads = [volume.grid.volume_header()] if as_3d else volume.mrd_headers()

    def meta_of(_header) -> ismrmrd.Meta:
        m = ismrmrd.Meta()
        for key, v in (meta or {}).items():
            m[key] = v
        return m

    return images_on_headers(data.astype(dtype)[None], heads, series_index, meta=meta_of)


def write(path: str | Path, stream: MrdStream) -> Path:
    """Write a stream to an ISMRMRD HDF5 file (overwrites)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()
    ds = ismrmrd.Dataset(str(path), DATASET, create_if_needed=True)
    try:
        if stream.header_xml:
            ds.write_xml_header(stream.header_xml.encode("utf-8"))
        for img in stream.images:
            ds.append_image(f"image_{int(img.image_series_index)}", img)
    finally:
        ds.close()
    with h5py.File(path, "a") as f:
        grp = f.require_group(DATASET)
        if stream.acquisitions:
            grp.create_dataset("data", data=_acquisition_rows(stream.acquisitions), maxshape=(None,), chunks=True)
        _write_attributes(grp, stream.config, stream.parameters)
    return path


def _write_attributes(grp: h5py.Group, config: str | None, parameters: dict | None) -> None:
    if config is not None:
        grp.attrs["openrecon_config"] = config
    if parameters is not None:
        grp.attrs["openrecon_parameters"] = json.dumps(parameters)


def _acquisition_rows(acqs: list) -> np.ndarray:
    """Readouts as rows of the ISMRMRD HDF5 acquisition type."""
    from ismrmrd.hdf5 import acquisition_dtype, acquisition_header_dtype

    rows = np.empty((len(acqs),), dtype=acquisition_dtype)
    for i, a in enumerate(acqs):
        rows[i]["head"] = np.frombuffer(a.getHead(), dtype=acquisition_header_dtype)[0]
        rows[i]["data"] = a.data.view(np.float32).reshape(-1)
        rows[i]["traj"] = a.traj.view(np.float32).reshape(-1)
    return rows


def _read_acquisitions(rows) -> list:
    out = []
    for r in rows:
        a = ismrmrd.Acquisition(r["head"].tobytes())
        if a.data.size:
            a.data[:] = np.asarray(r["data"], np.float32).view(np.complex64).reshape(a.data.shape)
        if a.traj.size:
            a.traj[:] = np.asarray(r["traj"], np.float32).reshape(a.traj.shape)
        out.append(a)
    return out


class StreamFileWriter:
    """Appends a stream to an ISMRMRD file as it arrives (``--save-data``); the config name and
    UI parameters are written when it is closed."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.ds = ismrmrd.Dataset(str(self.path), DATASET, create_if_needed=True)
        self._config: str | None = None
        self._parameters: dict | None = None

    def config(self, name: str):
        self._config = name

    def parameters(self, params: dict):
        self._parameters = params

    def header(self, xml: str):
        self.ds.write_xml_header(xml.encode("utf-8"))

    def image(self, img):
        self.ds.append_image(f"image_{int(img.image_series_index)}", img)

    def acquisition(self, acq):
        self.ds.append_acquisition(acq)

    def close(self):
        self.ds.close()
        with h5py.File(self.path, "a") as f:
            _write_attributes(f.require_group(DATASET), self._config, self._parameters)


def _series_key(name: str) -> tuple:
    m = re.search(r"(\d+)$", name)
    return (int(m.group(1)) if m else 1 << 30, name)


def read(path: str | Path) -> MrdStream:
    """Read an ISMRMRD HDF5 file into a :class:`MrdStream` (images in series order)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    s = MrdStream()
    try:
        with h5py.File(path, "r") as f:
            if DATASET not in f:
                raise ValueError(f"{path}: not an ISMRMRD file (no '{DATASET}' group)")
            grp = f[DATASET]
            keys = list(grp.keys())
            attrs = dict(grp.attrs)
            if "data" in keys:
                s.acquisitions = _read_acquisitions(grp["data"][()])
            image_groups = [k for k in keys if k not in ("xml", "data", "waveforms") and "header" in grp[k]]
    except OSError as e:
        raise ValueError(f"{path}: not a readable HDF5 file ({e})") from None
    ds = ismrmrd.Dataset(str(path), DATASET, create_if_needed=False, mode="r")
    try:
        if "xml" in keys:
            x = ds.read_xml_header()
            s.header_xml = x.decode("utf-8") if isinstance(x, bytes) else str(x)
            s.header_xml = s.header_xml.rstrip("\x00")
        for g in sorted(image_groups, key=_series_key):
            s.images += [ds.read_image(g, i) for i in range(ds.number_of_images(g))]
    finally:
        ds.close()
    if "openrecon_config" in attrs:
        c = attrs["openrecon_config"]
        s.config = c.decode() if isinstance(c, bytes) else str(c)
    if "openrecon_parameters" in attrs:
        p = attrs["openrecon_parameters"]
        s.parameters = json.loads(p.decode() if isinstance(p, bytes) else p)
    return s


def parse_header(xml: str):
    """Parse MRD header XML (trailing NULs tolerated). Raises ValueError with the reason."""
    try:
        return CreateFromDocument(xml.rstrip("\x00").strip())
    except Exception as e:
        raise ValueError(f"the MRD XML header could not be parsed ({type(e).__name__}: {e})") from None


def header_info(hdr) -> dict:
    """Identity and sequence facts from a parsed MRD header, keyed as ``Volume.info``."""
    info: dict = {"modality": "MR"}
    si = hdr.subjectInformation
    if si is not None:
        for key, attr in (("patient_name", "patientName"), ("patient_id", "patientID")):
            if getattr(si, attr, None):
                info[key] = str(getattr(si, attr))
        if si.patientBirthdate is not None:
            info["patient_birth_date"] = str(si.patientBirthdate).replace("-", "")
        if si.patientGender:
            info["patient_sex"] = str(si.patientGender)
    st = hdr.studyInformation
    if st is not None:
        if st.studyInstanceUID:
            info["study_uid"] = str(st.studyInstanceUID)
        if st.studyDate is not None:
            info["study_date"] = str(st.studyDate).replace("-", "")
    mi = hdr.measurementInformation
    if mi is not None:
        for key, attr in (
            ("protocol_name", "protocolName"),
            ("series_description", "seriesDescription"),
            ("frame_of_reference_uid", "frameOfReferenceUID"),
            ("series_uid", "seriesInstanceUIDRoot"),
        ):
            if getattr(mi, attr, None):
                info[key] = str(getattr(mi, attr))
    sp = hdr.sequenceParameters
    if sp is not None:
        for key, attr in (("tr_ms", "TR"), ("te_ms", "TE"), ("ti_ms", "TI")):
            vals = getattr(sp, attr, None) or []
            if vals:
                info[key] = float(vals[0])
    acq = hdr.acquisitionSystemInformation
    if acq is not None and acq.systemFieldStrength_T:
        info["field_strength_t"] = float(acq.systemFieldStrength_T)
    elif hdr.experimentalConditions is not None and hdr.experimentalConditions.H1resonanceFrequency_Hz:
        info["field_strength_t"] = round(hdr.experimentalConditions.H1resonanceFrequency_Hz / 42.576e6, 2)
    return info


def make_header_xml(
    *,
    protocol_name: str,
    series_description: str = "",
    patient_id: str = "PHANTOM",
    patient_name: str = "Phantom^Synthetic",
    study_uid: str = "",
    frame_of_reference_uid: str = "",
    matrix=(256, 256, 1),
    fov_mm=(256.0, 256.0, 5.0),
    encoded_matrix=None,
    encoded_fov_mm=None,
    ti_ms: float | None = None,
    tr_ms: float | None = None,
    te_ms: float | None = None,
    field_strength_t: float = 3.0,
    slices: int = 1,
    ky_max: int | None = None,
    kz_max: int | None = None,
) -> str:
    """A minimal, schema-valid MRD header XML for a synthetic or converted series."""
    from ismrmrd import xsd

    hdr = xsd.ismrmrdHeader(
        experimentalConditions=xsd.experimentalConditionsType(H1resonanceFrequency_Hz=int(42.576e6 * field_strength_t))
    )
    hdr.subjectInformation = xsd.subjectInformationType(patientName=patient_name, patientID=patient_id)
    hdr.studyInformation = xsd.studyInformationType(studyInstanceUID=study_uid or None)
    hdr.measurementInformation = xsd.measurementInformationType(
        protocolName=protocol_name,
        seriesDescription=series_description or protocol_name,
        frameOfReferenceUID=frame_of_reference_uid or None,
        patientPosition=xsd.patientPositionType.HFS,
    )
    hdr.acquisitionSystemInformation = xsd.acquisitionSystemInformationType(
        systemVendor="SIEMENS", systemModel="openrecon-stroke simulator", systemFieldStrength_T=field_strength_t
    )
    em = encoded_matrix or matrix
    ef = encoded_fov_mm or fov_mm
    ky = ky_max if ky_max is not None else int(em[1]) - 1
    kz = kz_max if kz_max is not None else int(em[2]) - 1
    enc = xsd.encodingType(
        encodedSpace=xsd.encodingSpaceType(
            matrixSize=xsd.matrixSizeType(x=int(em[0]), y=int(em[1]), z=int(em[2])),
            fieldOfView_mm=xsd.fieldOfViewMm(x=float(ef[0]), y=float(ef[1]), z=float(ef[2])),
        ),
        reconSpace=xsd.encodingSpaceType(
            matrixSize=xsd.matrixSizeType(x=int(matrix[0]), y=int(matrix[1]), z=int(matrix[2])),
            fieldOfView_mm=xsd.fieldOfViewMm(x=float(fov_mm[0]), y=float(fov_mm[1]), z=float(fov_mm[2])),
        ),
        trajectory=xsd.trajectoryType.CARTESIAN,
        encodingLimits=xsd.encodingLimitsType(
            kspace_encoding_step_1=xsd.limitType(minimum=0, maximum=ky, center=(ky + 1) // 2),
            kspace_encoding_step_2=xsd.limitType(minimum=0, maximum=kz, center=(kz + 1) // 2),
            slice=xsd.limitType(minimum=0, maximum=max(slices - 1, 0), center=0),
        ),
    )
    hdr.encoding.append(enc)
    sp = xsd.sequenceParametersType()
    if tr_ms is not None:
        sp.TR = [float(tr_ms)]
    if te_ms is not None:
        sp.TE = [float(te_ms)]
    if ti_ms is not None:
        sp.TI = [float(ti_ms)]
    hdr.sequenceParameters = sp
    return hdr.toXML("utf-8")


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
    protocol = info.get("protocol_name") or info.get("series_description") or volume.description or "converted"
    kw: dict[str, Any] = dict(
        protocol_name=str(protocol),
        series_description=str(info.get("series_description") or volume.description or protocol),
        matrix=matrix,
        fov_mm=fov,
        slices=slices,
    )
    for key in ("patient_id", "patient_name", "study_uid", "frame_of_reference_uid"):
        if info.get(key):
            kw[key] = str(info[key])
    for key in ("tr_ms", "te_ms", "ti_ms", "field_strength_t"):
        v = float_or_none(info.get(key))
        if v is not None and (key != "field_strength_t" or v > 0):
            kw[key] = v
    xml = make_header_xml(**kw)
    return _add_optional_header_fields(xml, info)


def _add_optional_header_fields(xml: str, info: dict) -> str:
    """Carry birth date, sex, study date and series UID into the header where they are valid."""
    extra = {k: info.get(k) for k in ("patient_birth_date", "patient_sex", "study_date", "series_uid")}
    if not any(extra.values()):
        return xml
    from ismrmrd.xsd.ismrmrdschema.ismrmrd import XmlDate  # xsdata's date type, via ismrmrd

    hdr = parse_header(xml)

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
