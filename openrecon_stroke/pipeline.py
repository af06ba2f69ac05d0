"""Pipelines of named stages.

A stage is one small object: it reads ``study.inputs`` (volumes by contrast), ``study.params``
and the series earlier stages derived, and returns a :class:`StageResult` (derived series,
findings, warnings). The pipeline runs stages in order, times them, and keeps going when one
fails: the failure becomes a warning, stages that need its output are skipped with a reason.
Neither the server nor the offline ``process`` command knows which stages exist.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from .pipeline_registry import DEFAULT_PIPELINE, PIPELINE_NAMES
from .study import DerivedSeries, Study

log = logging.getLogger(__name__)


class SkipStudy(Exception):
    """The input is not something this pipeline should process (a localizer, a knee...).

    The message is shown to the user; remaining stages are skipped, originals still go back.
    """


@dataclass
class StageResult:
    derived: list[DerivedSeries] = field(default_factory=list)
    findings: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


class Stage:
    """Base class. Subclasses set ``name`` and ``needs`` (derived series names they read)
    and implement :meth:`run`."""

    name: str = "stage"
    needs: tuple[str, ...] = ()

    def run(self, study: Study) -> StageResult:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass
class Pipeline:
    name: str
    stages: list[Stage]

    def run(self, study: Study) -> Study:
        for stage in self.stages:
            missing = [n for n in stage.needs if not any(d.name == n for d in study.derived)]
            if missing:
                msg = f"{stage.name} skipped: it needs {', '.join(missing)}, which an earlier stage did not produce"
                study.warnings.append(msg)
                study.stage_status[stage.name] = "skipped"
                log.warning(msg)
                continue
            t0 = time.perf_counter()
            try:
                result = stage.run(study)
            except SkipStudy as e:
                study.timings_s[stage.name] = time.perf_counter() - t0
                study.stage_status[stage.name] = "skipped"
                study.warnings.append(f"processing skipped: {e}")
                log.warning("processing skipped by %s: %s", stage.name, e)
                for later in self.stages[self.stages.index(stage) + 1:]:
                    study.stage_status[later.name] = "skipped"
                break
            except Exception as e:  # a failed stage must not take the study down
                study.timings_s[stage.name] = time.perf_counter() - t0
                study.stage_status[stage.name] = "failed"
                study.warnings.append(f"{stage.name} failed: {e}")
                log.exception("stage %s failed", stage.name)
                continue
            study.timings_s[stage.name] = time.perf_counter() - t0
            study.stage_status[stage.name] = "ok"
            for d in result.derived:
                study.add(d)
            study.findings.update(result.findings)
            study.warnings.extend(result.warnings)
            log.info("stage %s done in %.2f s", stage.name, study.timings_s[stage.name])
        return study


def build_pipeline(name: str) -> Pipeline:
    """The pipeline registered under ``name``; raises KeyError for unknown names."""
    from .stages import anomaly, basic, brain, lesion, report

    factories = {
        DEFAULT_PIPELINE: lambda: [basic.InputCheck(), brain.Preprocess(), lesion.LesionSegmentation(),
                                   anomaly.AnomalyDetection(), report.Overlay(), report.ReportPage()],
        "headmask": lambda: [basic.InputCheck(), basic.HeadMask()],
        "passthrough": lambda: [],
    }
    assert set(factories) == set(PIPELINE_NAMES)
    return Pipeline(name, factories[name]())


def resolve_pipeline_name(config: str | None) -> tuple[str, str | None]:
    """Map a config name from the stream to a registered pipeline.

    Returns ``(name, warning)``; unknown names (e.g. the reference client's own default) fall
    back to the default pipeline with a warning sentence.
    """
    c = (config or "").strip()
    for n in PIPELINE_NAMES:
        if c.lower() == n.lower():
            return n, None
    shown = c if len(c) <= 64 else c[:64] + "..."
    return DEFAULT_PIPELINE, (
        f"config '{shown}' is not one of {', '.join(PIPELINE_NAMES)}; running '{DEFAULT_PIPELINE}'"
    )
