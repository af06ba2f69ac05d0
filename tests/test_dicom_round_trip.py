"""DICOM in -> the real pipeline -> DICOM out: the phantom's T1-w as classic DICOM slices (written
with plain pydicom, as a scanner exports them), every output of the real stages exported
against those very files (what ``process --dicom`` does): segmentations on the source slices,
identity copied from the sources, maps and overlays on the source geometry; dciodvfy on all.
"""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest

from openrecon_stroke.cli import main as cli_main
from openrecon_stroke.dicom_export import export_study
from openrecon_stroke.inputs import load_volume

from test_outputs_dicom import assert_seg_on_source
from validators import dciodvfy_errors, first_middle_last, needs_dciodvfy

pytestmark = pytest.mark.slow
DERIVED = {"brain_mask_t1", "lesion_mask_t1", "anomaly_map_t1", "overlay_t1", "report_t1"}


@pytest.fixture(scope="module")
def exported(t1_analysed, stroke_phantom_t1_dicom, tmp_path_factory):
    out = tmp_path_factory.mktemp("dicom_out")
    res = export_study(t1_analysed, out, sources={"t1": str(stroke_phantom_t1_dicom)})
    assert res.warnings == []
    return res


def test_outputs_reference_and_overlay_their_source_slices(t1_analysed, stroke_phantom_t1_dicom, exported):
    src_files = sorted(stroke_phantom_t1_dicom.iterdir())
    assert set(exported.series) == DERIVED  # the input is referenced, not written again
    nz = t1_analysed.inputs["t1"].grid.shape[0]
    assert {k: len(v) for k, v in exported.series.items()} == {
        "brain_mask_t1": 1, "lesion_mask_t1": 1, "anomaly_map_t1": nz, "overlay_t1": nz, "report_t1": 1}
    for name in ("brain_mask", "lesion_mask"):
        assert_seg_on_source(exported.series[f"{name}_t1"][0], src_files, t1_analysed.get(name, "t1").data)
    src0 = pydicom.dcmread(src_files[0], stop_before_pixels=True)
    for name, files in exported.series.items():
        ds = pydicom.dcmread(files[0], stop_before_pixels=True)
        assert ds.StudyInstanceUID == src0.StudyInstanceUID and ds.StudyDate == "20260101", name
        assert ds.PatientName == src0.PatientName and ds.PatientID == src0.PatientID, name
        assert ds.SeriesInstanceUID != src0.SeriesInstanceUID, name
    # the anomaly map on the source grid, stored as score x 1000
    amap = load_volume(exported.series["anomaly_map_t1"][0].parent)
    assert amap.grid.same_as(load_volume(stroke_phantom_t1_dicom).grid)
    assert np.array_equal(amap.data, np.rint(t1_analysed.get("anomaly_map", "t1").data * 1000))
    # each overlay slice names its source slice and sits where it does
    by_uid = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: f for f in src_files}
    for f in first_middle_last(exported.series["overlay_t1"]):
        ov = pydicom.dcmread(f)
        src = pydicom.dcmread(by_uid[ov.SourceImageSequence[0].ReferencedSOPInstanceUID], stop_before_pixels=True)
        assert np.allclose([float(v) for v in ov.ImagePositionPatient], [float(v) for v in src.ImagePositionPatient])


@needs_dciodvfy
def test_outputs_pass_dciodvfy(exported):
    files = [f for files in exported.series.values() for f in first_middle_last(files)]
    assert dciodvfy_errors(files) == []


def test_process_cli_dicom_flag_exports_against_the_source_files(stroke_phantom_t1_dicom, tmp_path):
    """The ``process --dicom`` wiring, on the cheap head-mask pipeline."""
    out = tmp_path / "out"
    assert cli_main(["process", "--t1", str(stroke_phantom_t1_dicom), "--out", str(out), "--dicom",
                     "--param", "config=headmask"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["dicom"] == {"head_mask_t1": 1}
    assert_seg_on_source(out / "dicom" / "head_mask_t1" / "0001.dcm", sorted(stroke_phantom_t1_dicom.iterdir()),
                         (load_volume(out / "head_mask.nii.gz").data > 0))
