"""What goes back: overlay and report page rendering, scanner-safe MRD meta of every derived
series, and DICOM export (validated with dciodvfy, read back with pydicom and highdicom, the
SEG overlaying its source slices exactly). Small synthetic oblique volumes keep it fast; the
lesion and anomaly stages are stand-ins that follow the stage contract."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

import openrecon_stroke.offline as offline_mod
import openrecon_stroke.server as server_mod
from openrecon_stroke import render
from openrecon_stroke.cli import main as cli_main
from openrecon_stroke.dicom_export import export_study
from openrecon_stroke.dicom_objects import MR_IMAGE, SECONDARY_CAPTURE, SEGMENTATION, SeriesInfo, mr_slices
from openrecon_stroke.geometry import Grid, Volume, assemble_series
from openrecon_stroke.inputs import load_volume
from openrecon_stroke.mrdfile import MrdStream, make_header_xml, read as read_mrd, volume_to_images, write
from openrecon_stroke.outputs import derived_images, page_grid
from openrecon_stroke.pipeline import Pipeline
from openrecon_stroke.stages.base import Stage, StageResult
from openrecon_stroke.stages.report import Overlay, ReportPage
from openrecon_stroke.study import DerivedSeries, Study
from simulator.__main__ import main as simulator_main

from conftest import rotation

CENTRE = np.array([4.0, -12.0, 18.0])
LESION_CENTRE = CENTRE + np.array([12.0, 6.0, 4.0])
LESION_VALUE = 900.0
PATIENT = "Test^Patient"


# --- a cheap study --------------------------------------------------------------------------
def make_grid(shape=(14, 96, 88), spacing=(1.0, 1.1, 5.0)) -> Grid:
    direction = rotation(10, -15, 5)
    nz, ny, nx = shape
    half = direction @ (np.array(spacing) * (np.array([nx, ny, nz]) - 1) / 2)
    return Grid(shape, spacing, direction, CENTRE - half)


def lps_of(grid: Grid) -> np.ndarray:
    nz, ny, nx = grid.shape
    k, j, i = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    return grid.index_to_lps(np.stack([i, j, k], -1).reshape(-1, 3)).reshape(nz, ny, nx, 3)


def synthetic_volume(grid: Grid | None = None) -> Volume:
    grid = grid or make_grid()
    p = lps_of(grid)
    r_head = np.linalg.norm(p - CENTRE, axis=-1)
    r_les = np.linalg.norm(p - LESION_CENTRE, axis=-1)
    data = np.where(r_head < 33, 300.0 + 2.0 * (p[..., 0] - CENTRE[0]), 5.0)
    data[r_les < 8] = LESION_VALUE
    info = dict(patient_name=PATIENT, patient_id="P0042", study_uid="1.2.826.0.1.3680043.8.498.1",
                frame_of_reference_uid="1.2.826.0.1.3680043.8.498.2", series_description="t1_mprage_tra",
                protocol_name="t1_mprage_tra", tr_ms=2000.0, te_ms=2.5, ti_ms=900.0)
    return Volume(data.astype(np.float32), grid, description="t1_mprage_tra", info=info)


class FakeLesion(Stage):
    """Stand-in for the lesion stage: the bright sphere is the lesion."""

    name = "lesion"

    def run(self, study):
        res = StageResult()
        for c, vol in study.inputs.items():
            mask = (vol.data >= LESION_VALUE - 1).astype(np.uint8)
            res.derived.append(DerivedSeries("lesion_mask", c, mask, "mask", "LESION", send_param="sendlesion",
                                             comment="stroke lesion (test)"))
            ml = float(mask.sum()) * vol.grid.voxel_volume_mm3 / 1000
        res.findings.update(lesions=[{"label": 1, "volume_ml": round(ml, 2), "centroid_lps_mm": list(LESION_CENTRE),
                                      "hemisphere": "left", "region": "subcortical"}],
                            lesion_count=1, lesion_volume_ml=round(ml, 2),
                            models={**study.findings.get("models", {}), "lesion": "fake 0.0"})
        return res


class FakeAnomaly(Stage):
    """Stand-in for the anomaly stage: a score of 2.5 at the lesion centre, 1 = threshold."""

    name = "anomaly"

    def run(self, study):
        res = StageResult()
        for c, vol in study.inputs.items():
            r = np.linalg.norm(lps_of(vol.grid) - LESION_CENTRE, axis=-1)
            score = (2.5 * np.exp(-(r / 14.0) ** 2)).astype(np.float32)
            res.derived.append(DerivedSeries("anomaly_map", c, score, "map", "ANOMALY", window=(1.0, 2.0),
                                             send_param="sendanomaly", comment="anomaly score (test)"))
        res.findings["anomaly"] = {"load_ml": 9.5, "in_lesion_ml": 2.1, "perilesional_ml": 4.0, "remote_ml": 3.4}
        res.findings["models"] = {**study.findings.get("models", {}), "anomaly": "fake-flow 0.0"}
        return res


def fake_pipeline(name="stroke"):
    return Pipeline(name, [FakeLesion(), FakeAnomaly(), Overlay(), ReportPage()])


@pytest.fixture(scope="module")
def study() -> Study:
    s = Study(inputs={"t1": synthetic_volume()})
    fake_pipeline().run(s)
    assert s.stage_status == {"lesion": "ok", "anomaly": "ok", "overlay": "ok", "report_page": "ok"}
    return s


# --- dciodvfy -----------------------------------------------------------------------------
def dciodvfy_errors(files) -> list[str]:
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy (dicom3tools) is not installed: apt-get install dicom3tools")
    errors = []
    for f in files:
        out = subprocess.run([exe, str(f)], capture_output=True, text=True, timeout=60)
        errors += [f"{Path(f).parent.name}/{Path(f).name}: {ln}" for ln in (out.stdout + out.stderr).splitlines()
                   if ln.startswith("Error")]
    return errors


def one_per_series(res) -> list[Path]:
    """The first, middle and last file of each series (all slices are built the same way)."""
    out = []
    for files in res.series.values():
        out += sorted({files[0], files[len(files) // 2], files[-1]})
    return out


# --- rendering ----------------------------------------------------------------------------
def test_overlay_colours_lesion_anomaly_and_legend_without_flipping(study):
    vol = study.inputs["t1"]
    ov = study.get("overlay", "t1").data
    les = study.get("lesion_mask", "t1").data > 0
    assert ov.shape == vol.grid.shape + (3,) and ov.dtype == np.uint8
    r, g, b = (ov[..., i].astype(int) for i in range(3))
    border = render.outline(les)
    inner = les & ~border
    # lesion: red fill inside, yellow outline
    assert np.all(r[inner] > g[inner] + 40) and np.all(r[inner] > b[inner] + 40)
    assert np.all((r[border] > 200) & (g[border] > 180) & (b[border] < 60))
    # anomaly: blue-cyan above the threshold (1.0, the window centre) outside the lesion
    score = study.get("anomaly_map", "t1").data
    ring = (score >= 1.2) & ~les
    ring[:, :26, :] = False  # not under the legend
    assert ring.any() and np.all(b[ring] > r[ring])
    # elsewhere: grey, and the grey follows the input exactly as it is stored (no flip)
    legend = np.zeros(les.shape, bool)
    legend[:, :26, :] = True
    plain = ~les & (score < 1.0) & ~legend
    assert np.array_equal(r[plain], g[plain]) and np.array_equal(g[plain], b[plain])
    head = plain & (vol.data > 100) & (vol.data < 800)
    assert np.corrcoef(r[head], vol.data[head])[0, 1] > 0.98
    # legend in the top-left corner of every slice, also where there is no lesion
    empty = int(np.argmin(les.reshape(les.shape[0], -1).sum(1)))
    corner = ov[empty, :14, :20].astype(int)
    assert (np.abs(corner[..., 0] - corner[..., 1]) > 60).any()


def test_legend_scales_with_the_slice_and_pixel_shape():
    leg = render.Legend(lesion="Lesion", anomaly="Anomaly >= 1")
    small, big = render.legend_patch(leg, 256, 256), render.legend_patch(leg, 512, 512)
    assert small is not None and big is not None
    assert 1.7 < big.shape[0] / small.shape[0] < 2.3
    assert small.shape[0] < 0.3 * 256 and small.shape[1] < 0.6 * 256
    tall = render.legend_patch(leg, 256, 256, spacing_xy=(1.0, 2.0))  # rows twice as tall on screen
    assert tall is not None and tall.shape[0] < 0.6 * small.shape[0]
    assert render.legend_patch(leg, 12, 12) is None  # does not fit: left out, no error
    vol = synthetic_volume(make_grid((3, 12, 10)))
    assert render.overlay_volume(vol.data, vol.data > 800).shape == (3, 12, 10, 3)


def test_report_page_renders_long_warnings_and_failed_stages():
    s = Study(inputs={"flair": synthetic_volume()})
    s.stage_status = {"input_check": "ok", "preprocess": "ok", "lesion": "failed", "anomaly": "skipped"}
    s.timings_s = {"input_check": 0.01, "preprocess": 3.2, "lesion": 0.4}
    s.warnings = ["lesion failed: model file is damaged " + "x" * 900] + \
        [f"warning number {i}: " + "a very long sentence " * 30 for i in range(200)] + ["\u2265 \u00b5 \u2013 \x00 odd"]
    s.findings = {"models": {"hdbet": "HD-BET 1 " * 40}, "lesions": "not a list", "anomaly": {"load_ml": "?"}}
    res = Pipeline("stroke", [Overlay(), ReportPage()]).run(s)
    assert res.stage_status["overlay"] == "ok" and res.stage_status["report_page"] == "ok"
    assert any("no overlay" in w for w in s.warnings)
    page = s.get("report", "flair")
    assert page is not None and page.kind == "page" and page.data.shape == (1, 1024, 1024, 3)
    img = page.data[0].astype(int)
    banner = (img[..., 0] > 150) & (img[..., 1] < 40) & (img[..., 2] < 40)
    assert banner.sum() > 1024 * 30  # the red RESEARCH USE ONLY banner
    assert (img[..., 0] > 200).sum() > banner.sum()  # and text on it / elsewhere
    # no findings at all: still a page
    s2 = Study(inputs={"t1": synthetic_volume()})
    Pipeline("stroke", [ReportPage()]).run(s2)
    assert s2.get("report", "t1") is not None


def test_report_page_keeps_room_for_warnings_below_long_sections():
    """Many lesions fill the sections; the warnings (an experimental model) must still show."""
    sections = [("Lesions", [f"#{i}: 1.00 mL, left cortical" for i in range(80)]), ("Models", ["lesion: x"])]
    warn = render.WARN
    def warn_pixels(warnings):
        img = render.report_page(render.PageContent(title="t", sections=sections, warnings=warnings)).astype(int)
        return int((np.abs(img - np.array(warn)).sum(-1) < 40).sum())
    assert warn_pixels([]) == 0
    assert warn_pixels(["lesion model is experimental; do not interpret its masks clinically"]) > 300


def test_report_stages_respect_the_send_switches():
    from openrecon_stroke.params import coerce

    s = Study(inputs={"t1": synthetic_volume()}, params=coerce({"sendoverlay": "false", "sendreport": "false"}))
    fake_pipeline().run(s)
    assert s.get("overlay", "t1") is None and s.get("report", "t1") is None


# --- MRD meta -----------------------------------------------------------------------------
def check_series_meta(images, kind):
    heads = [im.getHead() for im in images]
    assert len({int(h.image_series_index) for h in heads}) == 1
    pos = {tuple(np.round(np.asarray(h.position), 4)) for h in heads}
    assert len(pos) == len(images), "two images at one position in a series"
    for im in images:
        m = im.meta
        assert m["SequenceDescriptionAdditional"] and m["ImageProcessingHistory"] and m["ImageComments"]
        assert "IceMiniHead" not in m
        if kind in ("rgb", "page"):
            h = im.getHead()
            assert int(h.image_type) == 6 and int(h.channels) == 3
            assert m.get("WindowCenter") is None and m.get("WindowWidth") is None
            assert str(m["InternalSend"]) == "1"
            assert im.data.max() <= 255
        for key in ("WindowCenter", "WindowWidth"):
            if m.get(key) is not None:
                assert str(m[key]).lstrip("-").isdigit(), f"{key}={m[key]} is not an integer"
        assert m["DataRole"] == ("Segmentation" if kind == "mask" else "Image")


def test_mrd_images_of_every_kind_are_scanner_safe(study):
    vol = study.inputs["t1"]
    indices = set()
    for n, d in enumerate(study.derived):
        ims = derived_images(d, vol, 10 + n)
        check_series_meta(ims, d.kind)
        indices.add(int(ims[0].image_series_index))
        if d.kind == "page":
            assert len(ims) == 1
            h = ims[0].getHead()
            assert tuple(h.matrix_size) == (1024, 1024, 1)
            centre = vol.grid.index_to_lps((np.array(vol.grid.shape[::-1]) - 1) / 2)
            assert np.allclose(h.position, centre, atol=1e-3)
            assert np.allclose(h.read_dir, vol.grid.direction[:, 0])
            assert np.allclose(h.phase_dir, vol.grid.direction[:, 1])
            g = assemble_series(ims).grid
            assert g.same_as(page_grid(vol.grid, 1024, 1024))
        else:
            assert assemble_series(ims).grid.same_as(vol.grid)
    assert len(indices) == len(study.derived)


# --- DICOM --------------------------------------------------------------------------------
def test_dicom_export_validates_and_reads_back(study, tmp_path):
    res = export_study(study, tmp_path / "dicom")
    assert res.warnings == []
    assert set(res.series) == {"input_t1", "lesion_mask_t1", "anomaly_map_t1", "overlay_t1", "report_t1"}
    assert dciodvfy_errors(one_per_series(res)) == []
    vol = study.inputs["t1"]
    nz = vol.grid.shape[0]
    # identity from the volume's info, one study, the input's frame of reference; new series UIDs
    series_uids = set()
    for name, files in res.series.items():
        ds = pydicom.dcmread(files[0])
        assert str(ds.PatientName) == PATIENT and ds.PatientID == "P0042"
        assert ds.StudyInstanceUID == vol.info["study_uid"]
        if name != "report_t1":
            assert ds.FrameOfReferenceUID == vol.info["frame_of_reference_uid"]
        series_uids.add(ds.SeriesInstanceUID)
    assert len(series_uids) == len(res.series)
    # the exported input and the anomaly map load back onto the input grid
    back = load_volume(tmp_path / "dicom" / "input_t1")
    assert back.grid.same_as(vol.grid) and np.allclose(back.data, vol.data, atol=0.02)
    amap = load_volume(tmp_path / "dicom" / "anomaly_map_t1")
    assert amap.grid.same_as(vol.grid)
    assert np.array_equal(amap.data, np.rint(study.get("anomaly_map", "t1").data * 1000))
    ds = pydicom.dcmread(res.series["anomaly_map_t1"][0])
    assert ds.SOPClassUID == MR_IMAGE and float(ds.WindowCenter) == 1000 and float(ds.WindowWidth) == 2000
    # overlay: one RGB secondary capture per slice at the slice's position
    ov = study.get("overlay", "t1").data
    for k, f in enumerate(res.series["overlay_t1"]):
        ds = pydicom.dcmread(f)
        assert ds.SOPClassUID == SECONDARY_CAPTURE and ds.PhotometricInterpretation == "RGB"
        assert np.allclose([float(v) for v in ds.ImagePositionPatient], vol.grid.index_to_lps((0, 0, k)), atol=1e-4)
        assert np.array_equal(ds.pixel_array, ov[k])
    page = pydicom.dcmread(res.series["report_t1"][0])
    assert page.SOPClassUID == SECONDARY_CAPTURE and page.pixel_array.shape == (1024, 1024, 3)
    assert_seg_on_source(res.series["lesion_mask_t1"][0], res.series["input_t1"], study.get("lesion_mask", "t1").data)


def assert_seg_on_source(seg_file, source_files, mask):
    """The SEG references the source series and each frame lies exactly on its source slice."""
    seg = hd.seg.segread(seg_file)
    assert seg.SOPClassUID == SEGMENTATION and seg.SegmentationType == "BINARY"
    sources = {ds.SOPInstanceUID: ds for ds in (pydicom.dcmread(f, stop_before_pixels=True) for f in source_files)}
    src0 = next(iter(sources.values()))
    assert seg.StudyInstanceUID == src0.StudyInstanceUID and seg.FrameOfReferenceUID == src0.FrameOfReferenceUID
    assert seg.PatientName == src0.PatientName and seg.PatientID == src0.PatientID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == src0.SeriesInstanceUID
    assert {it.ReferencedSOPInstanceUID for it in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence} \
        == set(sources)
    shared = seg.SharedFunctionalGroupsSequence[0]
    assert np.allclose([float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient],
                       [float(v) for v in src0.ImageOrientationPatient])
    assert np.allclose([float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing],
                       [float(v) for v in src0.PixelSpacing])
    pixels = seg.pixel_array if seg.pixel_array.ndim == 3 else seg.pixel_array[None]
    order = sorted(sources, key=lambda u: int(sources[u].InstanceNumber))
    assert len(seg.PerFrameFunctionalGroupsSequence) == len(sources)
    for f, fr in enumerate(seg.PerFrameFunctionalGroupsSequence):
        uid = fr.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        src = sources[uid]
        assert np.allclose([float(v) for v in fr.PlanePositionSequence[0].ImagePositionPatient],
                           [float(v) for v in src.ImagePositionPatient], atol=1e-4)
        k = order.index(uid)  # our slices are numbered in grid order
        assert np.array_equal(pixels[f] > 0, mask[k] > 0)
    got = seg.get_pixels_by_source_instance(order, segment_numbers=[1])
    assert np.array_equal(got[..., 0] > 0, mask > 0)


def write_dicom_series(vol: Volume, folder: Path) -> list[Path]:
    """Classic MR slices of ``vol`` as a scanner would have written them (test input)."""
    ident = {"PatientName": PATIENT, "PatientID": "P0042", "StudyInstanceUID": vol.info["study_uid"],
             "StudyDate": "20250101"}
    s = SeriesInfo(pydicom.uid.generate_uid(), 7, "t1_mprage_tra", "MR", ident, vol.info["frame_of_reference_uid"])
    files = []
    # files named in reverse slice order: the reader must sort by position
    for n, ds in enumerate(mr_slices(vol.grid, np.rint(vol.data).astype(np.uint16), s, derived=False, info=vol.info)):
        folder.mkdir(parents=True, exist_ok=True)
        files.append(folder / f"IM{vol.grid.shape[0] - n:04d}")
        ds.save_as(files[-1], enforce_file_format=True)
    return files


def test_round_trip_dicom_in_process_dicom_out(tmp_path, monkeypatch):
    vol = synthetic_volume()
    src_files = write_dicom_series(vol, tmp_path / "t1_dicom")
    monkeypatch.setattr(offline_mod, "build_pipeline", lambda name: fake_pipeline(name))
    out = tmp_path / "out"
    assert cli_main(["process", "--t1", str(tmp_path / "t1_dicom"), "--out", str(out), "--dicom"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["dicom"] == {"lesion_mask_t1": 1, "anomaly_map_t1": vol.grid.shape[0],
                               "overlay_t1": vol.grid.shape[0], "report_t1": 1}  # no re-export of the input
    assert (out / "report.png").is_file() and (out / "overlay.nii.gz").is_file()
    dcm = out / "dicom"
    files = sorted(dcm.rglob("*.dcm"))
    assert dciodvfy_errors([f for f in files if f.parent.name in ("lesion_mask_t1", "report_t1")]
                           + [f for f in files if f.name in ("0001.dcm", "0007.dcm")]) == []
    # SEG on the very source slices; identity copied from the source files
    mask = FakeLesion().run(Study(inputs={"t1": vol})).derived[0].data
    assert_seg_on_source(dcm / "lesion_mask_t1" / "0001.dcm", src_files, mask)
    src0 = pydicom.dcmread(src_files[0])
    for sub in ("anomaly_map_t1", "overlay_t1", "report_t1"):
        ds = pydicom.dcmread(sorted((dcm / sub).glob("*.dcm"))[0])
        assert ds.StudyInstanceUID == src0.StudyInstanceUID and ds.StudyDate == "20250101"
        assert ds.PatientName == src0.PatientName and ds.SeriesInstanceUID != src0.SeriesInstanceUID
    # same grid in and out
    assert load_volume(dcm / "anomaly_map_t1").grid.same_as(load_volume(tmp_path / "t1_dicom").grid)
    ov = pydicom.dcmread(dcm / "overlay_t1" / "0003.dcm")
    src_uid = ov.SourceImageSequence[0].ReferencedSOPInstanceUID
    src = next(ds for ds in (pydicom.dcmread(f, stop_before_pixels=True) for f in src_files)
               if ds.SOPInstanceUID == src_uid)
    assert np.allclose([float(v) for v in ov.ImagePositionPatient], [float(v) for v in src.ImagePositionPatient])


def test_server_sends_each_derived_series_scanner_safe_and_replay_writes_dicom(tmp_path, server, monkeypatch):
    monkeypatch.setattr(server_mod, "build_pipeline", lambda name: fake_pipeline(name))
    vol = synthetic_volume()
    xml = make_header_xml(protocol_name="t1_mprage_tra", patient_name=PATIENT, patient_id="P0042",
                          study_uid=vol.info["study_uid"], frame_of_reference_uid=vol.info["frame_of_reference_uid"],
                          matrix=(88, 96, 1), fov_mm=(88.0, 105.6, 5.0), slices=14)
    sent = tmp_path / "t1.h5"
    write(sent, MrdStream(header_xml=xml, images=volume_to_images(vol, 3), config="stroke",
                          parameters={"contrast": "t1"}))
    back = tmp_path / "back.h5"
    assert simulator_main(["replay", str(sent), "--port", str(server.port), "--out", str(back),
                           "--dicom", str(tmp_path / "dcm")]) == 0
    series = {}
    for im in read_mrd(back).images:
        series.setdefault(int(im.image_series_index), []).append(im)
    by_name = {ims[0].meta.get("SequenceDescriptionAdditional") or "ORIGINAL": ims for ims in series.values()}
    assert set(by_name) == {"ORIGINAL", "LESION", "ANOMALY", "OVERLAY", "REPORT"}
    assert len(series) == 5  # each series its own index
    kinds = {"LESION": "mask", "ANOMALY": "map", "OVERLAY": "rgb", "REPORT": "page"}
    for name, kind in kinds.items():
        check_series_meta(by_name[name], kind)
    assert int(by_name["ORIGINAL"][0].image_series_index) == 3
    assert min(int(ims[0].image_series_index) for n, ims in by_name.items() if n != "ORIGINAL") == 4
    pngs = sorted(tmp_path.glob("back_series*_OVERLAY.png"))
    assert len(pngs) == 1
    # DICOM from the returned series: the originals as MR, the SEG on them, identity from the header
    dcm = tmp_path / "dcm"
    folders = {p.name for p in dcm.iterdir()}
    assert folders == {"input_series3", "lesion_series3", "anomaly_series3", "overlay_series3", "report_series3"}
    inp = sorted((dcm / "input_series3").glob("*.dcm"))
    loaded = load_volume(dcm / "input_series3")
    assert loaded.grid.same_as(vol.grid) and np.array_equal(loaded.data, np.rint(vol.data))
    assert_seg_on_source(dcm / "lesion_series3" / "0001.dcm", inp, vol.data >= LESION_VALUE - 1)
    ds = pydicom.dcmread(inp[0])
    assert str(ds.PatientName) == PATIENT and ds.StudyInstanceUID == vol.info["study_uid"]
    assert ds.FrameOfReferenceUID == vol.info["frame_of_reference_uid"]
    amap = load_volume(dcm / "anomaly_series3")
    assert amap.grid.same_as(vol.grid)
    assert dciodvfy_errors([inp[0], dcm / "lesion_series3" / "0001.dcm", dcm / "report_series3" / "0001.dcm",
                            sorted((dcm / "overlay_series3").glob("*.dcm"))[0]]) == []


def test_send_switches_leave_series_out_on_the_scanner_and_in_its_dicom(tmp_path, monkeypatch):
    monkeypatch.setattr(server_mod, "build_pipeline", lambda name: fake_pipeline(name))
    srv = server_mod.MrdServer(("127.0.0.1", 0), server_mod.ServerSettings(idle_timeout_s=20,
                                                                         dicom_dir=tmp_path / "server_dicom"))
    srv.start_background()
    try:
        vol = synthetic_volume(make_grid((10, 24, 20), (4.0, 4.4, 7.0)))
        sent = tmp_path / "t1.h5"
        write(sent, MrdStream(header_xml=make_header_xml(protocol_name="t1"), images=volume_to_images(vol, 1)))
        back = tmp_path / "back.h5"
        assert simulator_main(["replay", str(sent), "--port", str(srv.port), "--out", str(back), "--param",
                               "sendoverlay=false", "--param", "sendanomaly=false", "--param",
                               "sendlesion=false"]) == 0
        for _ in range(200):  # the server writes DICOM after its CLOSE; stats follow the export
            if srv.stats:
                break
            time.sleep(0.05)
    finally:
        srv.shutdown()
        srv.server_close()
    names = {im.meta.get("SequenceDescriptionAdditional") or "ORIGINAL" for im in read_mrd(back).images}
    assert names == {"ORIGINAL", "REPORT"}
    (folder,) = (tmp_path / "server_dicom").iterdir()
    assert {p.name for p in folder.iterdir()} == {"input_t1", "report_t1"}
    assert "dicom" in srv.stats[0]
