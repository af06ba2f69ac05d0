"""What goes back: overlay and report page rendering, scanner-safe MRD meta of every derived
series, and DICOM export (validated with dciodvfy, read back with pydicom and highdicom, the
SEG overlaying its source slices exactly). Small synthetic oblique volumes keep it fast; the
lesion and anomaly stages are stand-ins that follow the stage contract, used only as input to the
rendering and export units (never patched into the server or ``process``: the real stages on
the wire, as DICOM, and DICOM in -> ``process`` -> DICOM out are in test_pipeline_server.py and
test_dicom_round_trip.py)."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from openrecon_stroke import render
from openrecon_stroke.dicom_export import export_study
from openrecon_stroke.dicom_objects import MR_IMAGE, SECONDARY_CAPTURE, SEGMENTATION
from openrecon_stroke.geometry import Grid, Volume, assemble_series
from openrecon_stroke.inputs import load_volume
from openrecon_stroke.outputs import derived_images, page_grid
from openrecon_stroke.pipeline import Pipeline
from openrecon_stroke.stages.base import Stage, StageResult
from openrecon_stroke.stages.report import Overlay, ReportPage
from openrecon_stroke.study import DerivedSeries, Study

from conftest import rotation
from validators import dciodvfy_errors, first_middle_last, needs_dciodvfy

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


def one_per_series(res) -> list[Path]:
    """The first, middle and last file of each series (all slices are built the same way)."""
    return [f for files in res.series.values() for f in first_middle_last(files)]


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
    # the red RESEARCH USE ONLY banner: a full-width band 48 px high (render.report_page at 1024 px),
    # red wherever its white text is not
    rows = np.nonzero(banner.sum(1) > 0.5 * 1024)[0]
    assert 40 <= len(rows) <= 49 and rows.max() - rows.min() == len(rows) - 1, rows  # 48 + 1: both edges drawn
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
    warning = "lesion model is experimental; do not interpret its masks clinically"
    assert warn_pixels([]) == 0
    # drawn in full: as many warning-coloured pixels as on a page with nothing else on it
    alone = int((np.abs(render.report_page(render.PageContent(title="t", warnings=[warning])).astype(int)
                        - np.array(warn)).sum(-1) < 40).sum())
    assert alone > 0 and warn_pixels([warning]) == alone


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
def test_dicom_export_reads_back(study, tmp_path):
    res = export_study(study, tmp_path / "dicom")
    assert res.warnings == []
    assert set(res.series) == {"input_t1", "lesion_mask_t1", "anomaly_map_t1", "overlay_t1", "report_t1"}
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


@needs_dciodvfy
def test_dicom_export_of_every_kind_passes_dciodvfy(study, tmp_path):
    res = export_study(study, tmp_path / "dicom")
    assert len(res.series) == 5
    assert dciodvfy_errors(one_per_series(res)) == []


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
