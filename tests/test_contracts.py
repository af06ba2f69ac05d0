"""Typed stage contracts: the registry's pipelines are wired (every result a stage needs is written
by an earlier stage), the pipeline checks reads before and writes after a stage, results reach
the report by field, and warm-up reaches every stage without the server naming one."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest

from openrecon_stroke import pipeline as pipeline_mod
from openrecon_stroke.anomaly import AnomalyLoad
from openrecon_stroke.geometry import Grid, Volume
from openrecon_stroke.lesion import Lesion
from openrecon_stroke.pipeline import Pipeline, build_pipeline, load_stage, overlap_conflicts, unmet_reads
from openrecon_stroke.pipeline_registry import PIPELINES
from openrecon_stroke.stages import report
from openrecon_stroke.stages.base import SkipStudy, Stage, StageResult
from openrecon_stroke.stages.results import AnomalyResult, LesionResult
from openrecon_stroke.study import ContractError, Study, StudyResult


def small_study() -> Study:
    g = Grid((10, 12, 14), (2.0, 2.0, 3.0), np.eye(3), (0.0, 0.0, 0.0))
    return Study(inputs={"t1": Volume(np.ones(g.shape, np.float32), g)})


@dataclass
class Template(StudyResult):
    """A stand-in for a new result type (e.g. a registration to a template)."""

    label: ClassVar[str] = "template"
    scale: float

    def findings(self) -> dict:
        return {"template_scale": self.scale, "models": {"template": "mni 1"}}


class WritesTemplate(Stage):
    name = "template"
    writes = (Template,)

    def run(self, study):
        return StageResult(results=[Template(2.0)], findings={"extra": 1})


class ReadsTemplate(Stage):
    name = "uses_template"
    reads = (Template,)

    def run(self, study):
        t = study.need(Template)
        return StageResult(findings={"doubled": t.scale * 2, "models": {"user": "x 0"}})


class ReadsUndeclared(Stage):
    name = "sneaky"

    def run(self, study):
        study.result(Template)  # not declared: refused
        return StageResult()  # pragma: no cover


class WritesUndeclared(Stage):
    name = "liar"

    def run(self, study):
        return StageResult(results=[Template(1.0)])


def test_every_registered_pipeline_is_wired():
    for name, specs in PIPELINES.items():
        p = build_pipeline(name)
        assert [type(s) for s in p.stages] == [load_stage(spec) for spec in specs]
        assert unmet_reads(p) == [], name
        assert overlap_conflicts(p) == [], name
        assert len({s.name for s in p.stages}) == len(p.stages), f"{name}: two stages share a name"
        for s in p.stages:
            assert not set(s.reads) & set(s.optional), f"{s.name} declares a result both required and optional"


@dataclass
class Other(StudyResult):
    label: ClassVar[str] = "other"
    value: int


class Meets(Stage):
    """Waits (at most 5 s) for every stage sharing ``barrier``: only stages that really run at
    the same time get past it."""

    writes = (Other,)

    def __init__(self, name, barrier, value, overlaps=(), reads=(), peek=None):
        self.name, self.barrier, self.value, self.overlaps, self.reads = name, barrier, value, overlaps, reads
        self.peek = peek  # a type read without declaring it

    def run(self, study):
        for t in self.reads:
            study.need(t)
        self.barrier.wait(timeout=5)
        if self.peek is not None:
            study.result(self.peek)
        if self.value < 0:
            raise RuntimeError("broken on purpose")
        return StageResult(findings={self.name: self.value}, warnings=[f"{self.name} ran"])


def test_overlapping_stages_run_side_by_side_and_are_filed_in_pipeline_order(monkeypatch):
    monkeypatch.setenv("OPENRECON_THREADS", "2")
    meet = threading.Barrier(2)
    first = Meets("first", meet, 1, reads=(Template,))
    second = Meets("second", meet, 2, overlaps=("first",), reads=(Template,))
    sent = []
    s = Pipeline("x", [WritesTemplate(), first, second, ReadsTemplate()]).run(
        small_study(), on_stage=lambda st, d: sent.append(d))
    assert s.stage_status == {"template": "ok", "first": "ok", "second": "ok", "uses_template": "ok"}, s.warnings
    assert list(s.findings)[-3:] == ["first", "second", "doubled"]
    assert s.warnings == ["first ran", "second ran"]
    assert s.reading is None
    # a study limited to one thread (a cohort worker) runs them one after the other
    monkeypatch.setenv("OPENRECON_THREADS", "1")
    meet = threading.Barrier(2)
    s = Pipeline("x", [WritesTemplate(), Meets("first", meet, 1), Meets("second", meet, 2, overlaps=("first",))]).run(
        small_study())
    assert s.stage_status == {"template": "ok", "first": "failed", "second": "failed"}  # nobody to meet
    monkeypatch.setenv("OPENRECON_THREADS", "2")
    # without the declaration they run one after the other: the barrier times out
    alone = Meets("second", threading.Barrier(2), 2)
    s = Pipeline("x", [Meets("first", threading.Barrier(1), 1), alone]).run(small_study())
    assert s.stage_status == {"first": "ok", "second": "failed"}
    # a failure beside another stage fails that stage only; the declared reads are checked per thread
    meet = threading.Barrier(2)
    s = Pipeline("x", [WritesTemplate(), Meets("first", meet, -1), Meets("second", meet, 2, overlaps=("first",))]).run(
        small_study())
    assert s.stage_status == {"template": "ok", "first": "failed", "second": "ok"}
    meet = threading.Barrier(2)
    s = Pipeline("x", [WritesTemplate(), Meets("first", meet, 1, peek=Template),
                       Meets("second", meet, 2, overlaps=("first",), reads=(Template,))]).run(small_study())
    assert s.stage_status["second"] == "ok" and s.stage_status["first"] == "failed"  # first read Template undeclared
    assert any("first failed" in w and "without declaring it" in w for w in s.warnings)


def test_overlap_declarations_are_checked():
    b = threading.Barrier(1)
    writes_other = Meets("a", b, 1)
    reads_other = Meets("b", b, 1, overlaps=("a",), reads=(Other,))
    assert overlap_conflicts(Pipeline("x", [writes_other, reads_other])) == ["b runs alongside a but reads its Other"]
    assert overlap_conflicts(Pipeline("x", [Meets("b", b, 1, overlaps=("a",))])) == [
        "b overlaps a, which does not run before it"]


def test_wiring_check_names_what_is_missing():
    assert unmet_reads(Pipeline("x", [ReadsTemplate(), WritesTemplate()])) == [
        "uses_template reads Template, which no earlier stage writes"]
    with pytest.raises(TypeError):
        load_stage("base.SkipStudy")


def test_results_flow_to_later_stages_and_into_the_findings():
    s = Pipeline("x", [WritesTemplate(), ReadsTemplate()]).run(small_study())
    assert s.stage_status == {"template": "ok", "uses_template": "ok"}
    assert s.result(Template) == Template(2.0)
    assert s.findings == {"template_scale": 2.0, "models": {"template": "mni 1", "user": "x 0"}, "extra": 1,
                          "doubled": 4.0}
    assert s.producers == {Template: "template"}


def test_a_stage_whose_result_is_missing_is_skipped_with_the_reason():
    s = Pipeline("x", [ReadsTemplate()]).run(small_study())
    assert s.stage_status == {"uses_template": "skipped"}
    assert s.warnings == ["uses_template skipped: it needs template, which an earlier stage did not produce"]


def test_undeclared_reads_and_writes_fail_the_stage_not_the_study():
    s = Pipeline("x", [WritesTemplate(), ReadsUndeclared(), WritesUndeclared()]).run(small_study())
    assert s.stage_status == {"template": "ok", "sneaky": "failed", "liar": "failed"}
    assert any("sneaky failed" in w and "without declaring it" in w for w in s.warnings)
    assert any("liar failed" in w and "does not declare in writes" in w for w in s.warnings)
    assert s.reading is None  # outside a stage, reads are not checked
    with pytest.raises(ContractError):
        small_study().need(Template)


def test_skip_study_skips_the_rest():
    class Refuse(Stage):
        name = "refuse"

        def run(self, study):
            raise SkipStudy("a knee")

    s = Pipeline("x", [Refuse(), WritesTemplate()]).run(small_study())
    assert s.stage_status == {"refuse": "skipped", "template": "skipped"}
    assert s.warnings == ["processing skipped: a knee"] and not s.results


def test_the_report_reads_result_fields():
    s = small_study()
    les = [Lesion(1, 2.34567, (10.04, -5.06, 30.0), "left", "cortical", "t1"),
           Lesion(2, 0.5, (-20.0, 1.0, 2.0), "right", "", "t1")]
    s.results[LesionResult] = LesionResult(les, "lesion-fusion 0.1 (3 folds)")
    s.results[AnomalyResult] = AnomalyResult(
        load=AnomalyLoad(load_ml=3.0, in_lesion_ml=1.0, perilesional_ml=0.5, remote_ml=1.5), csf=None,
        contrasts="t1+flair", steps=4, model="flow", threshold=1.5)
    assert report.lesion_lines(s) == ["2 lesions, total volume 2.85 mL", "#1: 2.35 mL, left cortical (LPS 10, -5, 30 mm)",
                                      "#2: 0.50 mL, right (LPS -20, 1, 2 mm)"]
    assert report.anomaly_lines(s) == ["anomaly load 3.00 mL", "in lesions 1.00 mL; perilesional 0.50 mL; remote 1.50 mL",
                                       "computed on T1-w+FLAIR"]
    assert report.anomaly_display(s.results[AnomalyResult], None)[0] == 1.5
    f = s.results[LesionResult].findings()
    assert f["lesion_count"] == 2 and f["lesion_volume_ml"] == 2.846 and f["lesions"][0]["series"] == "t1"


def test_the_report_says_why_a_result_is_missing():
    s = Pipeline("x", [Stage()]).run(small_study())  # the base stage fails (not implemented)
    s.producers[LesionResult] = "stage"
    assert report.lesion_lines(s)[0][0] == "not available (stage failed: see warnings)"
    assert report.anomaly_lines(s)[0][0] == "anomaly detection was not run"


def test_server_warm_up_reaches_every_stage(monkeypatch):
    called = []

    class Loads(Stage):
        name = "loads"

        def warm_up(self):
            called.append(self.name)

    class Broken(Stage):
        name = "broken"

        def warm_up(self):
            raise RuntimeError("model file missing")

    monkeypatch.setattr(pipeline_mod, "build_pipeline", lambda name: Pipeline(name, [Loads(), Broken(), Stage()]))
    assert pipeline_mod.warm_up() == ["broken: model file missing"]
    assert called == ["loads"]
