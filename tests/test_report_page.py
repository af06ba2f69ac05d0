"""The report page's text, read directly from what the page is drawn from
(``stages.report.page_content``): lesion lines, anomaly lines, brain and registration, models,
timings, warnings. Once with findings written out here (lesion and anomaly results, failed and skipped stages, exact strings), once from
the real stages on the stroke phantom (the page agrees with the findings it summarises)."""

from __future__ import annotations

import numpy as np
import pytest

from openrecon_stroke import __version__, render
from openrecon_stroke.geometry import Grid, Volume
from openrecon_stroke.stages.report import MAX_LESIONS_LISTED, page_content
from openrecon_stroke.lesion import Lesion
from openrecon_stroke.stages.results import AnomalyResult, LesionResult
from openrecon_stroke.study import Study


def sections(content) -> dict[str, list[tuple[str, tuple]]]:
    """{heading: [(text, colour), ...]} (plain lines are white)."""
    out = {}
    for heading, lines in content.sections:
        out[heading] = [(ln, render.WHITE) if isinstance(ln, str) else (ln[0], tuple(ln[1])) for ln in lines]
    return out


def texts(content, heading) -> list[str]:
    return [t for t, _ in sections(content)[heading]]


def small_study(**kw) -> Study:
    g = Grid((10, 20, 16), (1.0, 1.0, 2.0), np.eye(3), (0.0, 0.0, 0.0))
    vol = Volume(np.zeros(g.shape, np.float32), g, description="t1_mprage_sag")
    return Study(inputs={"t1": vol}, **kw)


def test_page_text_from_known_results():
    sizes = [(12.345, "left", "cortical"), (0.5, "right", "subcortical")] + [(0.01 * k, "left", "subcortical")
                                                                           for k in range(1, 9)]
    lesions = [Lesion(i + 1, v, (10.4, -20.6, 30.0), h, r) for i, (v, h, r) in enumerate(sizes)]
    s = small_study(
        findings={"models": {"brain_extraction": "HD-BET v1 (ONNX, fast)", "lesion": "lesion-t1 0.1.0 (3 folds)"}},
        results={LesionResult: LesionResult(lesions, "lesion-t1 0.1.0 (3 folds)"),
                 AnomalyResult: AnomalyResult({"load_ml": 9.5, "in_lesion_ml": 2.1, "perilesional_ml": 4.0,
                                               "remote_ml": 3.4}, {"ventricle_ml": 37.7, "atrophy_index": 0.109},
                                              "t1+flair", 4, "flow 0.1.0")},
        timings_s={"input_check": 0.01, "preprocess": 15.0, "lesion": 7.5},
        stage_status={"input_check": "ok", "preprocess": "ok", "lesion": "ok"},
        warnings=["lesion model lesion-t1 is experimental (x); do not interpret its masks clinically"])
    c = page_content(s, None)
    assert c.title == f"openrecon-stroke {__version__}: stroke MRI summary"
    assert "inputs: T1-w 't1_mprage_sag' 16x20x10 @ 1.00x1.00x2.00 mm" in c.subtitle
    les = texts(c, "Lesions")
    assert les[0] == f"10 lesions, total volume {render.fmt_ml(sum(round(v, 3) for v, _, _ in sizes))}"
    assert les[1] == "#1: 12.3 mL, left cortical (LPS 10, -21, 30 mm)"  # largest first
    assert les[2] == "#2: 0.50 mL, right subcortical (LPS 10, -21, 30 mm)"
    assert len(les) == 1 + MAX_LESIONS_LISTED + 1 and les[-1] == "... 2 smaller lesion(s) in the text report"
    ano = texts(c, "Anomaly (difference from healthy brains)")
    assert ano[0] == "anomaly load 9.50 mL"
    assert ano[1].startswith("in lesions 2.10 mL; perilesional 4.00 mL; remote 3.40 mL"), ano
    assert "atrophy index 0.11" in ano and ano[-1] == "computed on T1-w+FLAIR", ano
    assert texts(c, "Models") == ["brain_extraction: HD-BET v1 (ONNX, fast)", "lesion: lesion-t1 0.1.0 (3 folds)"]
    assert texts(c, "Processing") == ["input_check: ok, 0.0 s", "preprocess: ok, 15.0 s", "lesion: ok, 7.5 s",
                                      "total so far: 22.5 s"]
    assert c.warnings[0] == "lesion model lesion-t1 is experimental (x); do not interpret its masks clinically"
    assert "not a medical device" in c.footer


def test_page_text_when_stages_fail_or_are_skipped():
    s = small_study(timings_s={"preprocess": 3.0, "lesion": 0.4},
                    stage_status={"preprocess": "ok", "lesion": "failed", "anomaly": "skipped"},
                    producers={LesionResult: "lesion", AnomalyResult: "anomaly"},
                    warnings=["lesion failed: model file is damaged"])
    c = page_content(s, None)
    sec = sections(c)
    assert sec["Lesions"] == [("not available (lesion failed: see warnings)", render.WARN)]
    assert sec["Anomaly (difference from healthy brains)"] == [("not available (anomaly skipped: see warnings)", render.WARN)]
    assert sec["Processing"] == [("preprocess: ok, 3.0 s", render.WHITE), ("lesion: failed, 0.4 s", render.WARN),
                                 ("anomaly: skipped, -", render.WARN), ("total so far: 3.4 s", render.WHITE)]
    assert "Models" not in sec
    assert c.warnings[0] == "lesion failed: model file is damaged"
    # nothing run at all
    c = page_content(small_study(), None)
    assert sections(c)["Lesions"] == [("lesion segmentation was not run", render.WARN)]
    assert texts(c, "Processing") == []


@pytest.mark.slow
def test_page_text_agrees_with_the_real_findings(t1_analysed):
    s = t1_analysed
    f = s.findings
    c = page_content(s, "t1")
    les = texts(c, "Lesions")
    n = f["lesion_count"]
    assert n == len(f["lesions"]) > 0
    assert les[0] == f"{n} lesion{'s' if n != 1 else ''}, total volume {render.fmt_ml(f['lesion_volume_ml'])}"
    largest = sorted(f["lesions"], key=lambda x: -x["volume_ml"])[:MAX_LESIONS_LISTED]
    for line, lesion in zip(les[1:], largest):  # located through the template
        assert line.startswith(f"#{lesion['label']}: {render.fmt_ml(lesion['volume_ml'])}, "
                               f"{lesion['location']} ({lesion['region']}) (MNI "), line
        assert lesion["hemisphere"] in lesion["location"] or lesion["location"] == "brainstem", lesion
    if n > MAX_LESIONS_LISTED:
        assert les[-1] == f"... {n - MAX_LESIONS_LISTED} smaller lesion(s) in the text report"
    a = f["anomaly"]
    ano = texts(c, "Anomaly (difference from healthy brains)")
    assert ano[0] == f"anomaly load {render.fmt_ml(a['load_ml'])}" and ano[-1] == "computed on T1-w"
    assert f"atrophy index {a['atrophy_index']:.2f}" in ano
    assert texts(c, "Brain")[0] == f"brain volume: T1-w {render.fmt_ml(f['brain_volume_ml_t1'])} (HD-BET fast)"
    models = texts(c, "Models")
    assert any(m.startswith("brain_extraction: ") and "(ONNX, fast)" in m for m in models)
    assert any(m.startswith("lesion: lesion-voxel-t1 ") for m in models)
    assert any(m.startswith("anomaly: normative-") and "(normative z-map)" in m for m in models)
    proc = texts(c, "Processing")
    for stage in ("input_check", "preprocess", "lesion", "anomaly", "overlay"):
        assert any(p.startswith(f"{stage}: ok, ") for p in proc), (stage, proc)
    assert proc[-1].startswith("total so far: ")
    assert any("is experimental" in w for w in c.warnings)
    assert any("FLAIR missing" in w for w in c.warnings)
    assert c.image is not None and c.image_caption.startswith("T1-w slice ")
    # the page the stage drew is there, one 1024 x 1024 RGB picture
    assert s.get("report", "t1").data.shape == (1, 1024, 1024, 3)
