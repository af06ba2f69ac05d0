"""DICOM / NIfTI -> ISMRMRD conversion (``python -m simulator convert``) keeps exact geometry.

Expected geometry is computed here from the DICOM tags and NIfTI affines directly (pydicom,
nibabel/SimpleITK), not from :mod:`openrecon_stroke.geometry`.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
from pathlib import Path

import ismrmrd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from openrecon_stroke import mrdfile
from openrecon_stroke.geometry import Grid, assemble_series, group_series
from openrecon_stroke.inputs import load_volume
from openrecon_stroke.mrdfile import header_xml_for
from simulator import convert

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("OPENRECON_SHARED_DATA", REPO.parent / "shared" / "data"))
SIEMENS = SHARED_DATA / "dicom" / "siemens_t1_mpr_tra"
ENHANCED = SHARED_DATA / "dicom" / "enhanced_mr" / "enh.dcm"

needs_siemens = pytest.mark.skipif(
    not SIEMENS.is_dir() or len(list(SIEMENS.glob("*.dcm"))) < 3,
    reason=f"shared DICOM test data not found at {SIEMENS} (set OPENRECON_SHARED_DATA)")
needs_enhanced = pytest.mark.skipif(
    not ENHANCED.is_file(),
    reason=f"shared enhanced DICOM test data not found at {ENHANCED} (set OPENRECON_SHARED_DATA)")


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def run_convert(src, out, *extra) -> int:
    p = argparse.ArgumentParser()
    convert.add_arguments(p)
    return convert.run(p.parse_args([str(src), "--out", str(out), *map(str, extra)]))


def read_back(path, series_index=1):
    stream = mrdfile.read(path)
    groups = group_series(stream.images)
    assert list(groups) == [series_index]
    return stream, groups[series_index], assemble_series(groups[series_index])


def pixel_lps(h, i, j, k=0):
    """LPS of column i, row j (slice k) of an MRD image from its header (position = FOV centre)."""
    nx, ny, nz = h.matrix_size
    dx, dy, dz = (h.field_of_view[0] / nx, h.field_of_view[1] / ny, h.field_of_view[2] / nz)
    return (np.array(h.position) + (i - (nx - 1) / 2) * dx * np.array(h.read_dir)
            + (j - (ny - 1) / 2) * dy * np.array(h.phase_dir)
            + (k - (nz - 1) / 2) * dz * np.array(h.slice_dir))


def dicom_slices(folder):
    """(dataset, IPP, row cosine, column cosine, normal) sorted along the normal."""
    out = []
    for f in sorted(Path(folder).glob("*.dcm")):
        ds = pydicom.dcmread(str(f))
        iop = np.array(ds.ImageOrientationPatient, float)
        row, col = iop[:3], iop[3:]
        out.append((ds, np.array(ds.ImagePositionPatient, float), row, col, np.cross(row, col)))
    out.sort(key=lambda t: t[1] @ t[4])
    return out


def rotation(ax_deg, ay_deg, az_deg):
    a, b, c = np.deg2rad([ax_deg, ay_deg, az_deg])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


# --------------------------------------------------------------------------------------------
# classic DICOM
# --------------------------------------------------------------------------------------------
@needs_siemens
@pytest.mark.parametrize("as_3d", [False, True])
def test_siemens_classic_slices_keep_exact_geometry(tmp_path, as_3d, capsys):
    out = tmp_path / "t1.h5"
    assert run_convert(SIEMENS, out, *(["--as-3d"] if as_3d else [])) == 0
    printed = capsys.readouterr().out
    assert str(out.resolve()) in printed and "512 x 512 x 3" in printed and "VS-SEG-001" in printed

    stream, images, vol = read_back(out)
    sl = dicom_slices(SIEMENS)
    ds0, ipp0, row, col, normal = sl[0]
    ps = [float(v) for v in ds0.PixelSpacing]  # (row spacing, column spacing)
    g = vol.grid
    assert g.shape == (3, int(ds0.Rows), int(ds0.Columns))
    np.testing.assert_allclose(g.origin, ipp0, atol=1e-4)  # voxel (0,0,0) = lowest slice's IPP
    np.testing.assert_allclose(g.direction[:, 0], row, atol=1e-6)  # x = IOP row cosine
    np.testing.assert_allclose(g.direction[:, 1], col, atol=1e-6)  # y = IOP column cosine
    np.testing.assert_allclose(g.direction[:, 2], normal, atol=1e-6)
    np.testing.assert_allclose(g.spacing, (ps[1], ps[0], 1.5), atol=1e-6)
    for k, (ds, ipp, *_rest) in enumerate(sl):
        np.testing.assert_allclose(g.index_to_lps((0, 0, k)), ipp, atol=1e-4)
        np.testing.assert_array_equal(vol.data[k], ds.pixel_array.astype(np.float32))
    assert all(im.data.dtype == np.uint16 for im in images)

    if as_3d:
        assert len(images) == 1 and tuple(images[0].getHead().matrix_size) == (512, 512, 3)
    else:
        assert len(images) == 3
        heads = sorted((im.getHead() for im in images), key=lambda h: np.array(h.position) @ normal)
        nx, ny = int(ds0.Columns), int(ds0.Rows)
        dx, dy = ps[1], ps[0]
        for h, (ds, ipp, *_rest) in zip(heads, sl):
            expected = ipp + row * (nx * dx / 2 - dx / 2) + col * (ny * dy / 2 - dy / 2)
            np.testing.assert_allclose(h.position, expected, atol=1e-4)  # FOV-centre convention
            np.testing.assert_allclose(pixel_lps(h, 0, 0), ipp, atol=1e-4)
            np.testing.assert_allclose(h.read_dir, row, atol=1e-6)
            np.testing.assert_allclose(h.phase_dir, col, atol=1e-6)

    hdr = mrdfile.parse_header(stream.header_xml)
    assert hdr.subjectInformation.patientID == str(ds0.PatientID)
    assert hdr.studyInformation.studyInstanceUID == str(ds0.StudyInstanceUID)
    assert hdr.measurementInformation.frameOfReferenceUID == str(ds0.FrameOfReferenceUID)
    assert hdr.sequenceParameters.TR[0] == pytest.approx(float(ds0.RepetitionTime))
    assert hdr.acquisitionSystemInformation.systemFieldStrength_T == pytest.approx(1.5)


@needs_siemens
def test_classic_sorted_by_position_not_instance_number_and_junk_ignored(tmp_path):
    """Shuffled file names, reversed InstanceNumbers and non-DICOM files change nothing."""
    src = tmp_path / "dicom"
    (src / "sub").mkdir(parents=True)
    files = sorted(SIEMENS.glob("*.dcm"))
    for n, f in enumerate(files):
        ds = pydicom.dcmread(str(f))
        ds.InstanceNumber = len(files) - n + 7  # reversed relative to position
        ds.save_as(str(src / ("sub" if n == 1 else ".") / f"img_{(n * 2) % 3}"))
    (src / "README.txt").write_text("not dicom")
    (src / "notes.json").write_text("{}")
    (src / "sub" / "empty").write_bytes(b"")
    vol = load_volume(src)
    ref = load_volume(SIEMENS)
    assert vol.grid.same_as(ref.grid, atol=1e-6)
    np.testing.assert_array_equal(vol.data, ref.data)
    sl = dicom_slices(SIEMENS)
    assert vol.info["sop_instance_uids"] == [str(t[0].SOPInstanceUID) for t in sl]
    for key in ("patient_name", "patient_id", "study_uid", "frame_of_reference_uid", "protocol_name",
                "series_description", "modality", "series_uid", "study_date", "patient_sex"):
        assert vol.info[key], key
    assert vol.info["tr_ms"] == pytest.approx(1900.0) and vol.info["field_strength_t"] == pytest.approx(1.5)


@needs_siemens
def test_classic_rescale_slope_intercept_applied(tmp_path):
    src = tmp_path / "dicom"
    src.mkdir()
    for f in SIEMENS.glob("*.dcm"):
        ds = pydicom.dcmread(str(f))
        ds.RescaleSlope, ds.RescaleIntercept = "0.5", "-3"
        ds.save_as(str(src / f.name))
    vol = load_volume(src)
    ref = load_volume(SIEMENS)
    np.testing.assert_allclose(vol.data, ref.data * 0.5 - 3, atol=1e-5)
    assert convert.output_dtype(vol) == np.float32
    assert convert.output_dtype(ref) == np.uint16


@needs_siemens
def test_several_series_takes_the_largest_with_warning(tmp_path, caplog):
    src = tmp_path / "dicom"
    src.mkdir()
    files = sorted(SIEMENS.glob("*.dcm"))
    for f in files:
        shutil.copy(f, src / f.name)
    other = pydicom.dcmread(str(files[0]))
    other.SeriesInstanceUID = pydicom.uid.generate_uid()
    other.SOPInstanceUID = pydicom.uid.generate_uid()
    other.SeriesDescription = "localizer"
    other.save_as(str(src / "other.dcm"))
    with caplog.at_level(logging.WARNING):
        vol = load_volume(src)
    assert vol.grid.shape[0] == 3
    assert any("2 series" in r.getMessage() for r in caplog.records)
    one = load_volume(src, series=str(other.SeriesInstanceUID))
    assert one.grid.shape[0] == 1


@needs_siemens
@pytest.mark.parametrize("change, message", [
    ("ipp", "irregular slice spacing"),
    ("iop", "different orientations"),
    ("dup", "share a position"),
])
def test_inconsistent_classic_series_is_a_clear_error(tmp_path, change, message):
    src = tmp_path / "dicom"
    src.mkdir()
    files = sorted(SIEMENS.glob("*.dcm"), key=lambda f: float(pydicom.dcmread(str(f)).ImagePositionPatient[2]))
    for n, f in enumerate(files):
        ds = pydicom.dcmread(str(f))
        if n == 2 and change == "ipp":
            ipp = [float(v) for v in ds.ImagePositionPatient]
            ds.ImagePositionPatient = [ipp[0], ipp[1], ipp[2] + 1.0]
        if n == 2 and change == "iop":
            ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
        if n == 2 and change == "dup":
            ds.ImagePositionPatient = pydicom.dcmread(str(files[1])).ImagePositionPatient
        ds.save_as(str(src / f.name))
    with pytest.raises(ValueError, match=message):
        load_volume(src)


@needs_siemens
def test_classic_repetitions_keep_first_by_instance_number(tmp_path, caplog):
    src = tmp_path / "dicom"
    src.mkdir()
    for f in SIEMENS.glob("*.dcm"):
        ds = pydicom.dcmread(str(f))
        ds.save_as(str(src / f"a_{f.name}"))
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.InstanceNumber = int(ds.InstanceNumber) + 100
        ds.PixelData = (ds.pixel_array + 1).astype(ds.pixel_array.dtype).tobytes()
        ds.save_as(str(src / f"0_{f.name}"))  # second repetition sorts first by name
    with caplog.at_level(logging.WARNING):
        vol = load_volume(src)
    ref = load_volume(SIEMENS)
    assert vol.grid.same_as(ref.grid, atol=1e-6)
    np.testing.assert_array_equal(vol.data, ref.data)
    assert any("kept the first image at each position" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------------------------
# enhanced (multi-frame) DICOM
# --------------------------------------------------------------------------------------------
@needs_enhanced
@pytest.mark.parametrize("source", ["file", "folder"])
def test_enhanced_multiframe_converts_with_per_frame_geometry(tmp_path, source):
    src = ENHANCED if source == "file" else ENHANCED.parent
    out = tmp_path / "enh.h5"
    assert run_convert(src, out, "--series-index", 4) == 0
    _stream, images, vol = read_back(out, 4)
    ds = pydicom.dcmread(str(ENHANCED))
    shared = ds.SharedFunctionalGroupsSequence[0]
    frames = []
    for n, fr in enumerate(ds.PerFrameFunctionalGroupsSequence):
        ipp = np.array(fr.PlanePositionSequence[0].ImagePositionPatient, float)
        iop = np.array(fr.PlaneOrientationSequence[0].ImageOrientationPatient, float)
        pm = fr.PixelMeasuresSequence[0] if "PixelMeasuresSequence" in fr else shared.PixelMeasuresSequence[0]
        frames.append((ipp, iop, [float(v) for v in pm.PixelSpacing], n))
    row, col = frames[0][1][:3], frames[0][1][3:]
    normal = np.cross(row, col)
    frames.sort(key=lambda t: t[0] @ normal)
    g = vol.grid
    assert g.shape == (len(frames), int(ds.Rows), int(ds.Columns))
    np.testing.assert_allclose(g.origin, frames[0][0], atol=1e-3)
    np.testing.assert_allclose(g.direction[:, 0], row / np.linalg.norm(row), atol=1e-5)
    np.testing.assert_allclose(g.direction[:, 1], col / np.linalg.norm(col), atol=1e-5)
    ps = frames[0][2]
    np.testing.assert_allclose(g.spacing[:2], (ps[1], ps[0]), atol=1e-6)
    np.testing.assert_allclose(g.spacing[2], np.median(np.diff([f[0] @ normal for f in frames])), atol=1e-4)
    pixels = ds.pixel_array
    heads = sorted((im.getHead() for im in images), key=lambda h: np.array(h.position) @ normal)
    for k, (ipp, _iop, _ps, n) in enumerate(frames):
        np.testing.assert_allclose(g.index_to_lps((0, 0, k)), ipp, atol=1e-3)
        np.testing.assert_allclose(pixel_lps(heads[k], 0, 0), ipp, atol=1e-3)
        np.testing.assert_array_equal(vol.data[k], pixels[n].astype(np.float32))
    info = load_volume(src).info
    assert info["patient_id"] == str(ds.PatientID) and info["tr_ms"] == pytest.approx(500.0)
    assert info["te_ms"] == pytest.approx(30.0) and info["field_strength_t"] == pytest.approx(3.0)


@needs_enhanced
def test_enhanced_with_two_echoes_keeps_first_complete_stack(tmp_path, caplog):
    """Duplicate the frames as a second echo (shuffled in): the first echo's stack is kept."""
    import copy

    ds = pydicom.dcmread(str(ENHANCED))
    n = int(ds.NumberOfFrames)
    pixels = ds.pixel_array
    frames = list(ds.PerFrameFunctionalGroupsSequence)
    second = []
    for fr in frames:
        fr2 = copy.deepcopy(fr)
        fr2.MREchoSequence[0].EffectiveEchoTime = 60.0
        second.append(fr2)
    order = [x for pair in zip(second, frames) for x in pair]  # each echo-2 frame comes first
    new_pixels = np.empty((2 * n,) + pixels.shape[1:], pixels.dtype)
    for i in range(n):
        new_pixels[2 * i] = pixels[i] + 1000  # echo-2 pixels are brighter
        new_pixels[2 * i + 1] = pixels[i]
    ds.PerFrameFunctionalGroupsSequence = order
    ds.NumberOfFrames = 2 * n
    ds.PixelData = new_pixels.tobytes()
    path = tmp_path / "two_echoes.dcm"
    ds.save_as(str(path))
    with caplog.at_level(logging.WARNING):
        vol = load_volume(path)
    ref = load_volume(ENHANCED)
    assert vol.grid.same_as(ref.grid)
    np.testing.assert_array_equal(vol.data, ref.data)  # echo at 30 ms, not 60 ms
    assert any("kept the first complete" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------------------------
# NIfTI
# --------------------------------------------------------------------------------------------
def _oblique_image(arr, direction, spacing=(0.9, 1.1, 2.5), origin=(-31.5, 12.25, 40.0)):
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(tuple(np.asarray(direction, float).flatten()))
    return img


@pytest.mark.parametrize("kind", ["float32", "uint16", "int16-negative"])
@pytest.mark.parametrize("handed", ["right", "left"])
@pytest.mark.parametrize("as_3d", [False, True])
def test_nifti_round_trip_oblique(tmp_path, kind, handed, as_3d):
    rng = np.random.default_rng(3)
    shape = (7, 20, 16)  # (nz, ny, nx)
    if kind == "float32":
        arr = rng.normal(100, 30, shape).astype(np.float32)
    elif kind == "uint16":
        arr = rng.integers(0, 4000, shape).astype(np.uint16)
    else:
        arr = rng.integers(-500, 500, shape).astype(np.int16)
    d = rotation(15, -20, 10)
    if handed == "left":
        d = d @ np.diag([1, 1, -1])
    path = tmp_path / "vol.nii.gz"
    sitk.WriteImage(_oblique_image(arr, d), str(path))
    expected = Grid.from_sitk(sitk.ReadImage(str(path)))
    assert expected.same_as(Grid(shape, (0.9, 1.1, 2.5), d, (-31.5, 12.25, 40.0)))

    out = tmp_path / "vol.h5"
    assert run_convert(path, out, *(["--as-3d"] if as_3d else [])) == 0
    _stream, images, vol = read_back(out)
    assert vol.grid.same_as(expected, atol=1e-5)
    np.testing.assert_array_equal(vol.data, arr.astype(np.float32))
    want = {"float32": np.float32, "uint16": np.uint16, "int16-negative": np.float32}[kind]
    assert all(im.data.dtype == want for im in images)


def test_bright_voxel_stays_at_its_lps_point(tmp_path):
    """A NIfTI (RAS affine, written with nibabel where available) with one bright voxel: the
    voxel's LPS point, computed from the affine alone, is where the MRD headers put it."""
    shape_xyz = (30, 26, 11)
    i, j, k = 21, 5, 8
    r = rotation(-12, 25, 33)
    spacing = np.array([1.2, 0.8, 3.0])
    affine_ras = np.eye(4)
    affine_ras[:3, :3] = r * spacing[None, :]
    affine_ras[:3, 3] = (14.0, -60.5, 22.0)
    point_ras = affine_ras @ np.array([i, j, k, 1.0])
    point_lps = point_ras[:3] * np.array([-1, -1, 1])
    data_xyz = np.full(shape_xyz, 7, np.int16)
    data_xyz[i, j, k] = 900
    path = tmp_path / "marker.nii.gz"
    try:
        import nibabel as nib
        nib.save(nib.Nifti1Image(data_xyz, affine_ras), str(path))
    except ImportError:  # same file through SimpleITK (LPS = diag(-1,-1,1) @ RAS)
        flip = np.diag([-1.0, -1.0, 1.0])
        img = sitk.GetImageFromArray(np.ascontiguousarray(data_xyz.transpose(2, 1, 0)))
        img.SetSpacing(tuple(spacing))
        img.SetDirection(tuple((flip @ r).flatten()))
        img.SetOrigin(tuple(flip @ affine_ras[:3, 3]))
        sitk.WriteImage(img, str(path))

    out = tmp_path / "marker.h5"
    assert run_convert(path, out) == 0
    stream, images, vol = read_back(out)
    best = max(images, key=lambda im: im.data.max())
    h = best.getHead()
    _, _, jj, ii = np.unravel_index(int(np.argmax(best.data)), best.data.shape)
    np.testing.assert_allclose(pixel_lps(h, ii, jj), point_lps, atol=1e-3)
    kk, jj, ii = np.unravel_index(int(np.argmax(vol.data)), vol.data.shape)
    np.testing.assert_allclose(vol.grid.index_to_lps((ii, jj, kk)), point_lps, atol=1e-3)


def test_nifti_4d_uses_first_volume(tmp_path, caplog):
    arr = np.stack([np.full((3, 4, 5), t, np.float32) for t in (1, 2, 3)])  # (t, z, y, x)
    img = sitk.JoinSeries([_oblique_image(a, np.eye(3)) for a in arr])
    path = tmp_path / "fmri.nii.gz"
    sitk.WriteImage(img, str(path))
    with caplog.at_level(logging.WARNING):
        vol = load_volume(path)
    assert vol.grid.shape == (3, 4, 5) and np.all(vol.data == 1)
    assert vol.grid.same_as(Grid((3, 4, 5), (0.9, 1.1, 2.5), np.eye(3), (-31.5, 12.25, 40.0)))
    assert any("first volume" in r.getMessage() for r in caplog.records)


def test_header_xml_for_is_valid_and_carries_info(tmp_path):
    arr = np.zeros((4, 6, 5), np.float32)
    path = tmp_path / "x.nii"
    sitk.WriteImage(_oblique_image(arr, np.eye(3)), str(path))
    vol = load_volume(path)
    vol.info.update(patient_id="P1", patient_name="Doe^Jane", tr_ms=2000, te_ms=90, ti_ms=2500,
                    field_strength_t=1.5, patient_birth_date="19700102", patient_sex="F",
                    study_date="20240101", study_uid="1.2.3", frame_of_reference_uid="1.2.4")
    hdr = mrdfile.parse_header(header_xml_for(vol))
    assert hdr.subjectInformation.patientID == "P1"
    assert str(hdr.subjectInformation.patientBirthdate) == "1970-01-02"
    assert hdr.sequenceParameters.TI[0] == pytest.approx(2500)
    assert hdr.acquisitionSystemInformation.systemFieldStrength_T == pytest.approx(1.5)
    rs = hdr.encoding[0].reconSpace
    assert (rs.matrixSize.x, rs.matrixSize.y, rs.matrixSize.z) == (5, 6, 1)
    assert rs.fieldOfView_mm.z == pytest.approx(2.5)
    hdr3 = mrdfile.parse_header(header_xml_for(vol, as_3d=True))
    assert hdr3.encoding[0].reconSpace.matrixSize.z == 4


# --------------------------------------------------------------------------------------------
# ISMRMRD input and errors
# --------------------------------------------------------------------------------------------
def test_ismrmrd_images_load_with_header_info(tmp_path):
    arr = (np.arange(4 * 6 * 5).reshape(4, 6, 5) % 50).astype(np.uint16)
    src = tmp_path / "x.nii.gz"
    sitk.WriteImage(_oblique_image(arr, rotation(5, 10, -20)), str(src))
    first = tmp_path / "first.h5"
    run_convert(src, first, "--series-index", 3)
    vol = load_volume(first)
    assert vol.grid.same_as(load_volume(src).grid, atol=1e-5)
    assert vol.info["protocol_name"] == "x"
    np.testing.assert_array_equal(vol.data, arr)


def test_raw_only_ismrmrd_that_cannot_be_reconstructed_is_a_clear_error(tmp_path):
    acq = ismrmrd.Acquisition.from_array(np.zeros((1, 8), np.complex64))
    acq.idx.kspace_encode_step_1 = 300  # outside the 256-line encoded matrix
    path = tmp_path / "raw.h5"
    mrdfile.write(path, mrdfile.MrdStream(header_xml=mrdfile.make_header_xml(protocol_name="raw"),
                                          acquisitions=[acq]))
    with pytest.raises(ValueError, match="raw data could not be reconstructed.*outside the encoded matrix"):
        load_volume(path)


@needs_enhanced
def test_raw_only_ismrmrd_is_reconstructed_when_recon_exists(tmp_path):
    from simulator import raw
    vol = load_volume(ENHANCED)
    acqs, kw = raw.volume_to_acquisitions(vol)
    path = tmp_path / "raw.h5"
    mrdfile.write(path, mrdfile.MrdStream(
        header_xml=mrdfile.make_header_xml(protocol_name="epi_raw", patient_id="RAW1", **kw),
        acquisitions=acqs))
    got = load_volume(path)
    assert got.grid.same_as(vol.grid)
    np.testing.assert_allclose(got.data, vol.data, atol=1e-2 * float(vol.data.max()))
    assert got.info["patient_id"] == "RAW1" and got.info["protocol_name"] == "epi_raw"


def test_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="is empty"):
        load_volume(tmp_path)


def test_non_dicom_folder_is_a_clear_error(tmp_path):
    (tmp_path / "a.txt").write_text("hello")
    (tmp_path / "b.dcm").write_bytes(b"\x00" * 300)  # not DICOM despite the name
    with pytest.raises(ValueError, match="holds no DICOM images"):
        load_volume(tmp_path)


def test_missing_and_unknown_files_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_volume(tmp_path / "nope.nii.gz")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"junk" * 100)
    with pytest.raises(ValueError, match="is not a DICOM file"):
        load_volume(junk)
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"junk" * 100)
    with pytest.raises(ValueError, match="could not be read"):
        load_volume(bad)
