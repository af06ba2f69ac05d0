"""One synthetic stroke study through the real server, as a scanner sends it: each series on its
own connection, the server with its study cache and DICOM export on. Built once per test
session (conftest fixtures ``served_t1_first`` and ``served_flair_first``) and read by many
tests: the full pipeline costs ~20-30 s per connection on 2 cores.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from openrecon_stroke.geometry import Volume, assemble_series
from openrecon_stroke.server import MrdServer, ServerSettings
from simulator.replay import ReplayResult, replay_file

#: The phantom every full-pipeline test uses: MNI head, seed 11, two lesions (subcortical,
#: 2.7 mL right and 3.3 mL left; its lesions.json).
PHANTOM_ARGS = ("--seed", "11", "--lesions", "2")


def wait_for(predicate, timeout_s: float = 300.0, what: str = "condition"):
    """Poll ``predicate`` every 50 ms; a generous deadline (a loaded CI machine is slow), but
    it returns as soon as the condition holds."""
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout_s:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.05)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@dataclass
class Connection:
    """One replayed series: what came back, and what the server wrote and logged for it."""

    name: str
    sent: Path
    params: dict
    result: ReplayResult
    dicom: Path | None
    log: list[str] = field(default_factory=list)

    def series(self) -> list[tuple[str, list]]:
        """Returned series in arrival order: (name suffix or ORIGINAL, images)."""
        out: dict[int, list] = {}
        for im in self.result.images:
            out.setdefault(int(im.image_series_index), []).append(im)
        return [(ims[0].meta.get("SequenceDescriptionAdditional") or "ORIGINAL", ims) for ims in out.values()]

    def volume(self, suffix: str) -> Volume:
        for name, ims in self.series():
            if name == suffix:
                return assemble_series(ims)
        raise AssertionError(f"no {suffix} series among {[n for n, _ in self.series()]}; texts: {self.result.texts}")

    @property
    def report(self) -> str:
        return next(t for t in self.result.texts if " report (pipeline " in t)


@dataclass
class Served:
    study: Path
    connections: dict[str, Connection]
    #: the server's folder: ``cache`` (its study cache, kept) and ``dicom``
    work: Path | None = None

    def truth(self, contrast: str, what: str = "lesion") -> np.ndarray:
        return sitk.GetArrayFromImage(sitk.ReadImage(str(self.study / f"{contrast}_{what}_mask.nii.gz"))) > 0


def serve_connections(study: Path, work: Path, plan: list[tuple[str, str, dict]]) -> Served:
    """Replay ``plan`` = [(connection name, series file stem, UI parameters), ...] in order to one
    server with its own study cache and DICOM folder under ``work``."""
    srv = MrdServer(("127.0.0.1", 0), ServerSettings(idle_timeout_s=300, cache_dir=work / "cache",
                                                     dicom_dir=work / "dicom"))
    handler = _Records()
    logger = logging.getLogger("openrecon_stroke")
    old_level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    srv.start_background()
    out = {}
    try:
        for n, (name, stem, params) in enumerate(plan, 1):
            before = set((work / "dicom").glob("*")) if (work / "dicom").is_dir() else set()
            first = len(handler.records)
            res = replay_file(study / f"{stem}.h5", port=srv.port, parameters=params, timeout_s=600)
            # the server writes DICOM after its CLOSE; its phase timings are recorded last
            wait_for(lambda: len(srv.stats) >= n, what=f"the server to finish connection {name}")
            new = sorted(set((work / "dicom").glob("*")) - before) if (work / "dicom").is_dir() else []
            out[name] = Connection(name, study / f"{stem}.h5", params, res, new[0] if new else None,
                                   [r.getMessage() for r in handler.records[first:]])
    finally:
        srv.shutdown()
        srv.server_close()
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    return Served(study, out, work)


def write_classic_mr(volume: Volume, folder: Path, identity: dict) -> list[Path]:
    """``volume`` as classic MR Image slices, as a scanner writes them (plain pydicom, none of
    the project's DICOM code): one file per slice, named in reverse slice order so that a reader
    must sort by position. ``identity``: PatientName, PatientID, StudyInstanceUID, StudyDate,
    FrameOfReferenceUID, SeriesDescription."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    g = volume.grid
    nz, ny, nx = g.shape
    dx, dy, dz = g.spacing
    series_uid = generate_uid()
    pixels = np.clip(np.rint(volume.data), 0, 65535).astype(np.uint16)
    files = []
    for k in range(nz):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.Manufacturer = "MR", "SIEMENS"
        ds.PatientName, ds.PatientID = identity["PatientName"], identity["PatientID"]
        ds.StudyInstanceUID, ds.StudyDate = identity["StudyInstanceUID"], identity["StudyDate"]
        ds.SeriesInstanceUID, ds.SeriesNumber = series_uid, 7
        ds.SeriesDescription = ds.ProtocolName = identity["SeriesDescription"]
        ds.FrameOfReferenceUID = identity["FrameOfReferenceUID"]
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [f"{v:.6f}" for v in g.index_to_lps((0, 0, k))]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in list(g.direction[:, 0]) + list(g.direction[:, 1])]
        ds.PixelSpacing = [f"{dy:.6f}", f"{dx:.6f}"]  # row spacing, column spacing
        ds.SliceThickness = f"{dz:.6f}"
        ds.RepetitionTime, ds.EchoTime, ds.InversionTime = 2300, 2.98, 900
        ds.PatientBirthDate, ds.PatientSex, ds.StudyTime, ds.StudyID = "", "O", "120000", "1"
        ds.ReferringPhysicianName = ds.AccessionNumber = ds.PositionReferenceIndicator = ""
        ds.PatientPosition, ds.Laterality = "HFS", ""
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = ["GR", "IR"], ["SP", "MP"], "IR"
        ds.MRAcquisitionType, ds.EchoTrainLength, ds.ImagingFrequency = "3D", 1, 123.25
        ds.MagneticFieldStrength, ds.SliceLocation = 3, f"{float(g.index_to_lps((0, 0, k)) @ g.direction[:, 2]):.6f}"
        ds.Rows, ds.Columns = ny, nx
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = pixels[k].tobytes()
        f = folder / f"IM{nz - k:05d}"
        ds.save_as(f, enforce_file_format=True)
        files.append(f)
    return files
