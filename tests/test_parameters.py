"""Every UI parameter changes the output the way its manifest text says
(``openrecon_stroke/params.py``, the ``information`` of each parameter).

The analysis parameters run the real stages on one preprocessed T1-w of the stroke phantom
(preprocessing once, then each stage with its parameter set); the send switches and the pipeline
choice are checked on the wire. ``PARAMETER_TESTS`` names the test of each parameter, and a new
parameter without one fails ``test_every_parameter_has_a_test``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from openrecon_stroke import brain_extraction as be
from openrecon_stroke.mrdfile import make_header_xml
from openrecon_stroke.params import BY_ID, coerce
from openrecon_stroke.runtime import model_folder
from openrecon_stroke.pipeline import Pipeline
from openrecon_stroke.stages.anomaly import AnomalyDetection, AnomalyLoadSplit
from openrecon_stroke.stages.brain import Preprocess
from openrecon_stroke.stages.lesion import LesionSegmentation, get_segmenter
from openrecon_stroke.study import Study
from openrecon_stroke.geometry import Grid, Volume
from simulator.replay import send_stream

from conftest import continue_study, marker_series
from test_server import by_role, scanner_messages

#: parameter id -> the test(s) showing its effect (here unless a module is named)
PARAMETER_TESTS = {
    "config": "test_server.py::test_ui_config_choice_selects_pipeline_when_config_message_is_the_clients_default",
    "sendoriginal": "test_pipeline_server.py::test_send_switches_leave_series_out_on_the_wire_and_in_dicom",
    "contrast": "test_contrast_choice_decides_how_a_series_is_filed",
    "betmode": "test_betmode_accurate_runs_every_fold_with_mirroring",
    "sendbrainmask": "test_pipeline_server.py::test_send_switches_leave_series_out_on_the_wire_and_in_dicom",
    "sendmask": "test_sendmask_switches_the_head_mask_series",
    "lesionthreshold": "test_lesion_threshold_and_smallest_lesion",
    "lesionmodel": "test_nnunet.py::test_site_model_folder_from_ui_or_environment",
    "minlesion": "test_lesion_threshold_and_smallest_lesion",
    "anomalysteps": "test_anomaly_steps",
    "sendlesion": "test_pipeline_server.py::test_send_switches_leave_series_out_on_the_wire_and_in_dicom",
    "sendoverlay": "test_pipeline_server.py::test_send_switches_leave_series_out_on_the_wire_and_in_dicom",
    "sendanomaly": "test_pipeline_server.py::test_send_switches_leave_series_out_on_the_wire_and_in_dicom",
    "sendreport": "test_outputs_dicom.py::test_report_stages_respect_the_send_switches",
}


def test_every_parameter_has_a_test():
    assert set(PARAMETER_TESTS) == set(BY_ID), "a UI parameter without a test of its effect"


# --- on the wire (headmask pipeline: cheap) -------------------------------------------------
def test_sendmask_switches_the_head_mask_series(server):
    images, _ = marker_series("axial")
    for value, n_derived in (("true", 1), ("false", 0)):
        res = send_stream("127.0.0.1", server.port, scanner_messages(images, params={"sendmask": value}),
                          timeout_s=30)
        orig, derived = by_role(res)
        assert len(orig) == 1 and len(derived) == n_derived, (value, res.texts)
        assert "head_volume_ml_t1" in next(t for t in res.texts if "report" in t)  # computed either way


@pytest.mark.parametrize("header_kw,contrast,expect", [
    (dict(protocol_name="t2_tirm_tra_dark-fluid", ti_ms=2500), "auto", "flair"),  # TI >= 1500 ms
    (dict(protocol_name="t1_mprage_tra", ti_ms=900), "auto", "t1"),
    (dict(protocol_name="t1_mprage_tra", ti_ms=900), "flair", "flair"),  # the UI choice wins
    (dict(protocol_name="t2_tirm_tra_dark-fluid", ti_ms=2500), "t1", "t1"),
])
def test_contrast_choice_decides_how_a_series_is_filed(server, header_kw, contrast, expect):
    images, _ = marker_series("axial")
    res = send_stream("127.0.0.1", server.port,
                      scanner_messages(images, header=make_header_xml(**header_kw), params={"contrast": contrast}),
                      timeout_s=30)
    report = next(t for t in res.texts if "report" in t)
    assert f"input {expect}: 40x36x12 voxels" in report, report
    assert f"head_volume_ml_{expect}" in report


# --- betmode: all shipped HD-BET networks with mirroring -------------------------------------
@pytest.fixture
def small_grid_extractor(tmp_path, monkeypatch):
    """The shipped HD-BET card and ONNX files, with the minimum network input lowered to 16^3 so
    that 5 networks x 8 mirrorings run in seconds on a 12^3 test image (the networks are fully
    convolutional). Installed as the process-wide extractor for the test."""
    real = model_folder("hdbet")
    card = json.loads((real / "card.json").read_text())
    card["padding"]["min_shape"] = [16, 16, 16]
    card["crop_to_head"]["min_shape"] = [16, 16, 16]
    # both modes on one grid here, so that the test compares networks and mirrorings only (the
    # fast mode's own coarser grid is checked in test_brain_extraction.py)
    card["modes"]["fast"].pop("spacing_mm", None)
    card["modes"]["fast"].pop("fit_spacing_max_mm", None)
    for f in card["files"]:
        f["file"] = str(real / f["file"])
    (tmp_path / "card.json").write_text(json.dumps(card))
    monkeypatch.setenv("OPENRECON_HDBET_DIR", str(tmp_path))
    be._extractors.clear()
    yield be.get_extractor(None, None)  # the key extract_brain() uses
    be._extractors.clear()


def tiny_head() -> Volume:
    n = 12
    z, y, x = np.mgrid[:n, :n, :n]
    r = ((x - 6) / 4.5) ** 2 + ((y - 6) / 5) ** 2 + ((z - 6) / 4.5) ** 2
    data = (np.where(r < 1, 100.0, 0.0) + np.where(r < 0.7, 60.0, 0.0)).astype(np.float32)
    return Volume(data, Grid((n, n, n), (1.5, 1.5, 1.5), np.eye(3), (-9.0, -9.0, -9.0)))


@pytest.mark.skipif(not (model_folder("hdbet") / "card.json").is_file(), reason="HD-BET ONNX models not built")
def test_betmode_accurate_runs_every_fold_with_mirroring(small_grid_extractor):
    ex = small_grid_extractor
    assert ex.n_folds == 5
    vol = tiny_head()
    # through the stage: the UI value reaches HD-BET (a 0.4 mL 'head' is then refused as no brain)
    for mode, sessions in (("fast", {0}), ("accurate", set(range(5)))):
        ex._sessions._sessions.clear()
        study = Study(inputs={"t1": Volume(vol.data.copy(), vol.grid)}, params=coerce({"betmode": mode}))
        Pipeline("p", [Preprocess()]).run(study)
        assert study.stage_status["preprocess"] == "skipped"
        assert any("does not look like a head scan" in w for w in study.warnings)
        assert set(ex._sessions._sessions) == sessions, mode  # the networks that ran
    # what accurate computes: the mean over every shipped network and all 8 mirrorings
    img = vol.to_sitk()
    data, box, _ = ex.network_input(img)
    x = np.zeros((1, 1, 16, 16, 16), np.float32)
    sub = data[box] if box is not None else data
    x[0, 0, :sub.shape[0], :sub.shape[1], :sub.shape[2]] = sub
    flips = [(), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)]
    outs = {}
    for f in range(5):
        sess = ex.session(f)
        name = sess.get_inputs()[0].name
        for ax in flips:
            p = sess.run(None, {name: np.ascontiguousarray(np.flip(x, ax))})[0][0, 0]
            outs[f, ax] = np.flip(p, tuple(a - 2 for a in ax))
    mean_all = np.mean(list(outs.values()), axis=0)[:sub.shape[0], :sub.shape[1], :sub.shape[2]]
    import SimpleITK as sitk

    acc = sitk.GetArrayFromImage(ex.probability(img, "accurate"))
    fast = sitk.GetArrayFromImage(ex.probability(img, "fast"))
    region = box if box is not None else (slice(None),) * 3
    assert np.allclose(acc[region], mean_all, atol=1e-5)
    assert np.allclose(fast[region], outs[0, ()][:sub.shape[0], :sub.shape[1], :sub.shape[2]], atol=1e-5)
    assert np.abs(acc - fast).max() > 0.05  # the ensemble is not the first network


# --- the analysis parameters on the real stages -----------------------------------------------
def run_stage(base: Study, stage, **raw) -> Study:
    """``stage`` on a copy of the preprocessed study with the UI values ``raw``."""
    s = continue_study(base, [stage], **raw)
    assert s.stage_status[stage.name] == "ok", s.warnings
    return s


def run_anomaly(base: Study, **raw) -> Study:
    """The anomaly map then its load split (what the report's "anomaly" finding comes from)."""
    s = continue_study(base, [AnomalyDetection(), AnomalyLoadSplit()], **raw)
    assert s.stage_status == {**base.stage_status, "anomaly": "ok", "anomaly_load": "ok"}, s.warnings
    return s


@pytest.mark.slow
def test_lesion_threshold_and_smallest_lesion(t1_preprocessed, t1_analysed):
    """'Lesion probability at or above which a voxel is lesion' (at the default 0.2: the model
    card's own operating point) and 'Lesions smaller than this are dropped as noise' (mm3)."""
    card_thr = get_segmenter(("t1",)).card.threshold
    vox_mm3 = t1_preprocessed.inputs["t1"].grid.voxel_volume_mm3
    default = t1_analysed  # lesionthreshold 0.2 (the card's threshold), minlesion 10
    strict_thr = round(min(card_thr + 0.2, 0.95), 2)
    strict = run_stage(t1_preprocessed, LesionSegmentation(), lesionthreshold=str(strict_thr))
    m0, m_strict = (s.get("lesion_mask", "t1").data > 0 for s in (default, strict))
    # a higher threshold keeps a strict subset
    assert m0.sum() > m_strict.sum() > 0 and not (m_strict & ~m0).any()
    assert f"p>={strict_thr:g}" in strict.get("lesion_mask", "t1").comment
    assert f"p>={card_thr:g}" in default.get("lesion_mask", "t1").comment
    # the smallest-lesion size keeps exactly the default's lesions of at least that size
    lab, n = ndimage.label(m0, np.ones((3, 3, 3), bool))
    sizes = np.bincount(lab.ravel()) * vox_mm3
    assert n >= 2 and sizes[1:].min() < sizes[1:].max(), "the phantom's mask needs lesions of two sizes"
    cut = float(np.round((sizes[1:].min() + sizes[1:].max()) / 2))
    big = run_stage(t1_preprocessed, LesionSegmentation(), minlesion=f"{cut:g}")
    m_big = big.get("lesion_mask", "t1").data > 0
    keep = sizes >= cut
    keep[0] = False
    assert 0 < keep.sum() < n
    assert np.array_equal(m_big, keep[lab])
    assert big.findings["lesion_count"] == int(keep.sum()) and default.findings["lesion_count"] == n
    assert min(les["volume_ml"] for les in big.findings["lesions"]) >= cut / 1000


@pytest.mark.slow
def test_anomaly_steps(t1_preprocessed):
    """'Euler steps of the flow model that makes the pseudo-healthy brain': the flow runs when the
    study has no template space (its registration failed); the normative map does not step."""
    from openrecon_stroke.stages.results import TemplateResult

    no_template = continue_study(t1_preprocessed, [])
    del no_template.results[TemplateResult]
    one = run_anomaly(no_template, anomalysteps="1")
    four = run_anomaly(no_template)  # the default, 4
    assert one.findings["anomaly"]["steps"] == 1 and four.findings["anomaly"]["steps"] == 4
    assert "(1 Euler step)" in one.findings["models"]["anomaly"]
    assert "(4 Euler steps)" in four.findings["models"]["anomaly"]
    a1, a4 = one.get("anomaly_map", "t1").data, four.get("anomaly_map", "t1").data
    assert a1.shape == a4.shape and np.abs(a1 - a4).max() > 0.01  # a different pseudo-healthy brain
    normative = run_anomaly(t1_preprocessed, anomalysteps="1")
    assert "steps" not in normative.findings["anomaly"] and "normative" in normative.findings["models"]["anomaly"]


@pytest.mark.slow
def test_ventricles_measured_again_without_a_lesion_that_touches_them(t1_preprocessed):
    """``anomaly_load`` takes the segmented lesion out of the ventricle volume where the lesion
    touches what ``anomaly`` counted; a lesion away from the ventricles changes nothing."""
    from openrecon_stroke.stages.results import LESION_MASK, AnomalyMapResult

    mapped = continue_study(t1_preprocessed, [AnomalyDetection()])
    m = mapped.result(AnomalyMapResult)
    assert m is not None and m.ventricles is not None and m.ventricles.reference == "t1"
    before = m.measures.csf["ventricle_ml"]
    shape = t1_preprocessed.inputs["t1"].grid.shape
    counted = np.zeros(shape, bool)
    counted[m.ventricles.box] = m.ventricles.measure.counted
    assert before > 5 and counted.any()
    # a "lesion" over the counted voxels on one side of the brain (index x below their median)
    x = np.indices(shape)[2]
    touching = counted & (x < np.median(np.nonzero(counted)[2]))
    far = np.zeros(shape, bool)
    far[tuple(slice(0, 6) for _ in shape)] = True  # a corner of the grid, outside the brain
    results = {}
    for name, lesion in (("touching", touching), ("far", far)):
        s = continue_study(mapped, [])
        s.add(LESION_MASK.on("t1", lesion.astype(np.uint8)))
        s = continue_study(s, [AnomalyLoadSplit()])
        assert s.stage_status["anomaly_load"] == "ok", s.warnings
        results[name] = s.findings["anomaly"]["ventricle_ml"]
    assert results["far"] == before
    assert results["touching"] < 0.8 * before  # about half of it left out
