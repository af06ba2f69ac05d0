"""The real default pipeline on a synthetic stroke study, through the server, as a scanner
sends it (each series on its own connection, study cache and DICOM export on): the set and
order of returned series, their meta and geometry, the text report, and the DICOM export of
every one of them, read back and compared with what went over the wire.

The study is served once per session (``served_t1_first`` / ``served_flair_first`` in
conftest.py); see ``tests/studies.py``.
"""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pydicom
import pytest

from openrecon_stroke.geometry import assemble_series
from openrecon_stroke.inputs import load_volume
from openrecon_stroke.mrdfile import read as read_mrd, write as write_mrd
from openrecon_stroke.outputs import page_grid
from openrecon_stroke.server import MrdServer, ServerSettings
from simulator.replay import replay_file

from detection import SHIPPED_LESION, check_lesions
from test_outputs_dicom import assert_seg_on_source, check_series_meta
from validators import dciodvfy_errors, first_middle_last, needs_dciodvfy

pytestmark = pytest.mark.slow

#: What the default pipeline returns, in this order (README, "Outputs").
SERIES_ORDER = ["ORIGINAL", "BRAINMASK", "LESION", "ANOMALY", "OVERLAY", "REPORT"]
KINDS = {"BRAINMASK": "mask", "LESION": "mask", "ANOMALY": "map", "OVERLAY": "rgb", "REPORT": "page"}
#: DICOM folder per returned series (``<derived name>_<contrast>``, originals as ``input_``).
FOLDERS = {"ORIGINAL": "input", "BRAINMASK": "brain_mask", "LESION": "lesion_mask", "ANOMALY": "anomaly_map",
           "OVERLAY": "overlay", "REPORT": "report"}
STAGES = ("input_check", "preprocess", "lesion", "anomaly", "overlay", "report_page")
GEOMETRY_FIELDS = ("position", "read_dir", "phase_dir", "slice_dir", "field_of_view", "matrix_size")


def identity(served) -> dict:
    return json.loads((served.study / "lesions.json").read_text())


@pytest.mark.parametrize("name", ["t1", "flair"])
def test_returned_series_order_meta_and_geometry(served_t1_first, name):
    c = served_t1_first.connections[name]
    res = c.result
    assert res.closed_cleanly and res.error is None, res.texts
    series = c.series()
    assert [n for n, _ in series] == SERIES_ORDER
    sent = read_mrd(c.sent).images
    sent_index = int(sent[0].image_series_index)
    # originals first, unchanged byte for byte; then one new series index per derived series
    originals = series[0][1]
    assert len(originals) == len(sent)
    assert [im.to_bytes() for im in originals] == [im.to_bytes() for im in sent]
    assert [int(ims[0].image_series_index) for _, ims in series] == list(range(sent_index, sent_index + 6))
    orig = assemble_series(originals)
    by_pos = {tuple(np.round(im.getHead().position, 3)): im.getHead() for im in originals}
    protocol = identity(served_t1_first)["series"][name]["protocol_name"]
    for suffix, ims in series[1:]:
        check_series_meta(ims, KINDS[suffix])
        for im in ims:
            assert im.meta["SeriesDescription"] == f"{protocol}_{suffix}"
            assert im.meta["ImageProcessingHistory"][-1] == FOLDERS[suffix].upper()
        if suffix == "REPORT":
            assert assemble_series(ims).grid.same_as(page_grid(orig.grid, 1024, 1024))
            continue
        # every derived image carries the geometry of the input image at its position
        assert len(ims) == len(originals)
        for im in ims:
            h = im.getHead()
            src = by_pos[tuple(np.round(h.position, 3))]
            for f in GEOMETRY_FIELDS:
                assert np.allclose(getattr(h, f)[:], getattr(src, f)[:]), (suffix, f)
        if suffix != "OVERLAY":
            assert assemble_series(ims).grid.same_as(orig.grid)
    # masks are binary and inside the head; the map is non-negative
    brain = c.volume("BRAINMASK").data
    assert set(np.unique(brain)) == {0, 1} and set(np.unique(c.volume("LESION").data)) <= {0, 1}
    assert not c.volume("LESION").data[brain == 0].any()


@pytest.mark.parametrize("name", ["t1", "flair"])
def test_text_report_names_pipeline_models_and_every_stage(served_t1_first, name):
    c = served_t1_first.connections[name]
    report = c.report
    assert "(pipeline 'openrecon-stroke', RESEARCH USE ONLY)" in report
    for stage in STAGES:
        assert any(ln.startswith(f"time {stage}: ") and ln.endswith("(ok)") for ln in report.splitlines()), \
            (stage, report)
    model = "lesion-voxel-fusion" if name == "flair" else "lesion-voxel-t1 "
    assert any(ln.startswith("lesion_model: ") and model in ln for ln in report.splitlines()), report
    assert "HD-BET" in report and "normative" in report
    assert any("is experimental" in t for t in c.result.texts)  # every report says so while they are
    # the server's log tells the same story
    assert any("stage lesion done" in m for m in c.log) and any("DICOM written to" in m for m in c.log)


@pytest.mark.parametrize("name", ["t1", "flair"])
def test_dicom_export_of_every_returned_series(served_t1_first, name):
    c = served_t1_first.connections[name]
    assert c.dicom is not None and c.dicom.is_dir(), c.log
    ident = identity(served_t1_first)
    series = dict(c.series())
    folders = {p.name: sorted(p.glob("*.dcm")) for p in c.dicom.iterdir()}
    assert set(folders) == {f"{FOLDERS[s]}_{name}" for s in SERIES_ORDER}
    orig = assemble_series(series["ORIGINAL"])
    nz = orig.grid.shape[0]
    counts = {k: len(v) for k, v in folders.items()}
    assert counts == {f"input_{name}": nz, f"brain_mask_{name}": 1, f"lesion_mask_{name}": 1,
                      f"anomaly_map_{name}": nz, f"overlay_{name}": nz, f"report_{name}": 1}
    # one study and patient (from the MRD header), the input's frame of reference, new series
    uids = set()
    for folder, files in folders.items():
        ds = pydicom.dcmread(files[0], stop_before_pixels=True)
        assert str(ds.PatientName) == f"Phantom^Stroke{ident['seed']}" and ds.PatientID == ident["patient_id"]
        assert ds.StudyInstanceUID == ident["study_uid"]
        if not folder.startswith("report"):
            assert ds.FrameOfReferenceUID == ident["frame_of_reference_uid"]
        uids.add(ds.SeriesInstanceUID)
    assert len(uids) == len(folders)
    # pixels: what the DICOM holds is what went over the wire, on the same grid
    inp = load_volume(c.dicom / f"input_{name}")
    assert inp.grid.same_as(orig.grid) and np.array_equal(inp.data, orig.data)
    amap = load_volume(c.dicom / f"anomaly_map_{name}")
    wire_map = assemble_series(series["ANOMALY"])
    assert amap.grid.same_as(orig.grid) and np.array_equal(amap.data, wire_map.data)
    for suffix in ("BRAINMASK", "LESION"):
        seg = folders[f"{FOLDERS[suffix]}_{name}"][0]
        assert_seg_on_source(seg, folders[f"input_{name}"], assemble_series(series[suffix]).data)
    order = np.argsort([float(np.asarray(im.getHead().position) @ orig.grid.direction[:, 2])
                        for im in series["OVERLAY"]])
    for k, f in enumerate(folders[f"overlay_{name}"]):
        ds = pydicom.dcmread(f)
        wire = np.moveaxis(series["OVERLAY"][order[k]].data[:, 0], 0, -1)
        assert ds.PhotometricInterpretation == "RGB" and np.array_equal(ds.pixel_array, wire)
        assert np.allclose([float(v) for v in ds.ImagePositionPatient], orig.grid.index_to_lps((0, 0, k)), atol=1e-3)
    page = pydicom.dcmread(folders[f"report_{name}"][0])
    assert np.array_equal(page.pixel_array, np.moveaxis(series["REPORT"][0].data[:, 0], 0, -1))


@needs_dciodvfy
@pytest.mark.parametrize("name", ["t1", "flair"])
def test_dicom_export_passes_dciodvfy(served_t1_first, name):
    c = served_t1_first.connections[name]
    files = [f for p in sorted(c.dicom.iterdir()) for f in first_middle_last(p.glob("*.dcm"))]
    assert len(files) >= 6
    assert dciodvfy_errors(files) == []


def test_send_switches_leave_series_out_on_the_wire_and_in_dicom(served_t1_first):
    c = served_t1_first.connections["flair_switches_off"]
    assert c.result.closed_cleanly, c.result.texts
    assert [n for n, _ in c.series()] == ["REPORT"]
    assert {p.name for p in c.dicom.iterdir()} == {"input_flair", "report_flair"}
    # the analysis itself still ran in full (the switches only choose what is sent)
    for stage in STAGES:
        assert f"time {stage}: " in c.report
    assert "lesion_count: " in c.report and "anomaly: {" in c.report


def test_t1_arriving_after_flair_is_fused_with_it(served_flair_first):
    flair, t1 = served_flair_first.connections["flair"], served_flair_first.connections["t1"]
    # FLAIR alone first: brain extraction on the FLAIR, the FLAIR model, and it says what is lost
    assert [n for n, _ in flair.series()] == SERIES_ORDER
    assert "lesion-voxel-flair" in flair.report and "brain_extraction" in flair.report
    assert any("T1-w missing" in t for t in flair.result.texts), flair.result.texts
    # then the T1-w: the cached FLAIR is registered to it and the fused model runs on both
    assert [n for n, _ in t1.series()] == SERIES_ORDER
    lines = t1.report.splitlines()
    assert any(ln.startswith("flair_from_earlier_series:") for ln in lines), t1.report
    assert any(ln.startswith("registration:") and "'ok': True" in ln for ln in lines), t1.report
    assert any(ln.startswith("lesion_model: ") and "lesion-voxel-fusion" in ln for ln in lines), t1.report
    assert "'contrasts': 't1+flair'" in t1.report
    assert not any("T1-w missing" in t or "FLAIR missing" in t for t in t1.result.texts)


def test_a_flair_that_fails_its_registration_is_analysed_alone(served_t1_first, tmp_path):
    """The FLAIR's scanner geometry is wrong by 40 mm (to the patient's left): the T1-w/FLAIR
    registration must fail its check (translation <= 20 mm: it finds the 40 mm), and the FLAIR
    is then analysed on its own, with the reasons on the scanner and in the report."""
    cache = tmp_path / "cache"
    shutil.copytree(served_t1_first.work / "cache", cache)  # the T1-w of this study, preprocessed
    stream = read_mrd(served_t1_first.study / "flair.h5")
    for im in stream.images:
        h = im.getHead()
        h.position[0] += 40.0
        im.setHead(h)
    moved = write_mrd(tmp_path / "flair_moved.h5", stream)
    srv = MrdServer(("127.0.0.1", 0), ServerSettings(idle_timeout_s=300, cache_dir=cache))
    srv.start_background()
    try:
        res = replay_file(moved, port=srv.port, timeout_s=600)
    finally:
        srv.shutdown()
        srv.server_close()
    assert res.closed_cleanly and res.error is None, res.texts
    warnings = [t for t in res.texts if "WARNING" in t]
    assert any("T1-w/FLAIR registration failed its check (" in w and "analysed separately, not fused" in w
               and "translation 4" in w for w in warnings), warnings
    assert any("lesion segmentation ran on each series alone" in w for w in warnings), warnings
    assert any("anomaly map from T1-w only: FLAIR could not be registered" in w for w in warnings), warnings
    report = next(t for t in res.texts if " report (pipeline " in t)
    lines = report.splitlines()
    assert any(ln.startswith("registration: {'ok': False") for ln in lines), report
    assert any(ln.startswith("lesion_model: ") and "lesion-voxel-flair " in ln for ln in lines), report
    timings = next(ln for ln in lines if ln.startswith("preprocess_timings_s:"))
    assert "brain_extraction_flair" in timings  # its own HD-BET: the T1-w mask cannot be carried over
    # what comes back: no anomaly map on a FLAIR that is not registered to the T1-w it is computed on
    names = [ims[0].meta.get("SequenceDescriptionAdditional") or "ORIGINAL" for ims in res.series().values()]
    assert names == ["ORIGINAL", "BRAINMASK", "LESION", "OVERLAY", "REPORT"]
    # and the FLAIR model alone still finds the lesions (same voxels, moved geometry)
    lesion = assemble_series(next(ims for ims in res.series().values()
                                  if ims[0].meta.get("SequenceDescriptionAdditional") == "LESION"))
    check_lesions(served_t1_first.truth("flair"), lesion.data, float(np.prod(lesion.grid.spacing)) / 1000,
                  SHIPPED_LESION, what="FLAIR analysed alone")


def test_replay_writes_dicom_of_the_real_returned_series(served_t1_first, tmp_path):
    """``replay --dicom``: DICOM from the MRD images as they came back."""
    from openrecon_stroke.dicom_export import export_study
    from openrecon_stroke.outputs import study_from_mrd

    c = served_t1_first.connections["flair"]
    stream = read_mrd(c.sent)
    res = export_study(study_from_mrd(c.result.images, stream.header_xml, stream.images), tmp_path / "dcm")
    idx = int(stream.images[0].image_series_index)
    assert set(res.series) == {f"input_series{idx}"} | {f"{s.lower()}_series{idx}" for s in SERIES_ORDER[1:]}
    series = dict(c.series())
    for suffix in ("BRAINMASK", "LESION"):
        assert_seg_on_source(res.series[f"{suffix.lower()}_series{idx}"][0], res.series[f"input_series{idx}"],
                             assemble_series(series[suffix]).data)
    ident = identity(served_t1_first)
    ds = pydicom.dcmread(res.series[f"report_series{idx}"][0])
    assert ds.StudyInstanceUID == ident["study_uid"] and ds.PatientID == ident["patient_id"]
    assert np.array_equal(ds.pixel_array, np.moveaxis(series["REPORT"][0].data[:, 0], 0, -1))
    amap = load_volume(res.series[f"anomaly_series{idx}"][0].parent)
    assert np.array_equal(amap.data, assemble_series(series["ANOMALY"]).data)


def test_replay_cli_dicom_flag(server, stroke_phantom, tmp_path):
    """The ``replay --dicom DIR`` wiring, on the cheap head-mask pipeline."""
    from simulator.__main__ import main as simulator_main

    assert simulator_main(["replay", str(stroke_phantom / "flair.h5"), "--port", str(server.port), "--config",
                           "headmask", "--out", str(tmp_path / "back.h5"), "--dicom", str(tmp_path / "dcm")]) == 0
    assert {p.name for p in (tmp_path / "dcm").iterdir()} == {"input_series2", "headmask_series2"}


def test_the_flair_connection_reuses_what_the_t1w_connection_computed(served_t1_first):
    """Work done once per study: on the FLAIR connection the fused lesion model takes its T1-w
    feature columns (when the T1-w card reads the T1-w the same way: since the T1-w card 0.4.0
    reads it tissue-standardised and the fused card 0.3.0 white-matter-relative, it does not),
    and the anomaly stage the T1-w's ventricles, from what the T1-w connection computed (keyed by
    the content they are made from: the same values)."""
    from openrecon_stroke.model_card import VoxelClassifierCard
    from openrecon_stroke.runtime import model_folder

    t1, flair = served_t1_first.connections["t1"], served_t1_first.connections["flair"]
    assert not any("reused from an earlier series" in m or "as measured on its own connection" in m for m in t1.log)
    t1_card = VoxelClassifierCard.load(model_folder("lesion") / "t1")
    fused_t1 = [n for n in VoxelClassifierCard.load(model_folder("lesion") / "fusion").features if n.startswith("t1_")]
    if set(fused_t1) <= set(t1_card.features):  # the two cards read the T1-w alike: its columns come from the cache
        want = f"{len(fused_t1)} feature column(s) reused from an earlier series of this study"
        assert any(m.startswith(want) for m in flair.log)
    assert any(m.startswith("ventricles of the t1 series as measured on its own connection") for m in flair.log)

    # the measure reused is the T1-w connection's (before the lesion is left out of it)
    reused = next(m for m in flair.log if m.startswith("ventricles of the t1 series as measured"))
    ml = re.search(r"\(([0-9.]+) mL\)", reused).group(1)
    report = next(t for t in t1.result.texts if " report (pipeline " in t)
    assert f"({ml} mL with it)" in " ".join(t1.log) or f"'ventricle_ml': {ml}," in report, (reused, t1.log)
