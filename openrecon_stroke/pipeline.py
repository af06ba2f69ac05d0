"""Pipelines of named stages.

A stage is one small object (:class:`~openrecon_stroke.stages.base.Stage`): it reads
``study.inputs`` (volumes by contrast), ``study.params``, the typed results of earlier stages
it declares, and returns a :class:`~openrecon_stroke.stages.base.StageResult`. The pipeline
runs stages in order, checks each stage's declared contract, times them, and keeps going when
one fails: the failure becomes a warning, stages that need its output are skipped with a
reason. Neither the server nor the offline ``process`` command knows which stages exist: the
registry (:mod:`openrecon_stroke.pipeline_registry`) does.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from .pipeline_registry import DEFAULT_PIPELINE, PIPELINE_NAMES, PIPELINES
from .stages.base import SkipStudy, Stage, StageResult
from .study import ContractError, DerivedSeries, Study

log = logging.getLogger(__name__)


@dataclass
class Pipeline:
    name: str
    stages: list[Stage]

    def run(self, study: Study, on_stage: Callable[[Study, list[DerivedSeries]], None] | None = None) -> Study:
        """Run every stage on ``study``. ``on_stage(study, derived)``, when given, is called after
        each stage that succeeded with the series it added (the server sends them at once, so the
        scanner shows the brain mask while the later stages still run)."""
        for stage in self.stages:
            for kind in stage.writes:
                study.producers.setdefault(kind, stage.name)
        for n, stage in enumerate(self.stages):
            missing = stage.missing(study)
            if missing:
                msg = f"{stage.name} skipped: it needs {', '.join(missing)}, which an earlier stage did not produce"
                study.warnings.append(msg)
                study.stage_status[stage.name] = "skipped"
                log.warning(msg)
                continue
            t0 = time.perf_counter()
            study.reading = frozenset(stage.reads + stage.optional)
            try:
                result = stage.run(study)
                _check_writes(stage, result)
            except SkipStudy as e:
                study.timings_s[stage.name] = time.perf_counter() - t0
                study.stage_status[stage.name] = "skipped"
                study.warnings.append(f"processing skipped: {e}")
                log.warning("processing skipped by %s: %s", stage.name, e)
                for later in self.stages[n + 1 :]:
                    study.stage_status[later.name] = "skipped"
                break
            except Exception as e:  # a failed stage must not take the study down
                study.timings_s[stage.name] = time.perf_counter() - t0
                study.stage_status[stage.name] = "failed"
                study.warnings.append(f"{stage.name} failed: {e}")
                log.exception("stage %s failed", stage.name)
                continue
            finally:
                study.reading = None
            study.timings_s[stage.name] = time.perf_counter() - t0
            study.stage_status[stage.name] = "ok"
            file_result(study, result)
            log.info("stage %s done in %.2f s", stage.name, study.timings_s[stage.name])
            if on_stage is not None and result.derived:
                on_stage(study, list(result.derived))
        return study


def _check_writes(stage: Stage, result: StageResult) -> None:
    for r in result.results:
        if type(r) not in stage.writes:
            raise ContractError(f"it returned a {type(r).__name__}, which it does not declare in writes")


def file_result(study: Study, result: StageResult) -> None:
    """Add a stage's result to the study: series, typed results, findings, warnings. The
    ``models`` finding (role -> model) is merged across stages, every other key replaced."""
    for d in result.derived:
        study.add(d)
    findings: list[dict] = [r.findings() for r in result.results] + [result.findings]
    for r in result.results:
        study.results[type(r)] = r
    for f in findings:
        for key, value in f.items():
            if key == "models" and isinstance(value, dict):
                value = {**study.models, **value}
            study.findings[key] = value
    study.warnings.extend(result.warnings)


def load_stage(spec: str) -> type[Stage]:
    """The stage class named ``"module.Class"`` under :mod:`openrecon_stroke.stages`."""
    module, _, cls = spec.rpartition(".")
    obj = getattr(importlib.import_module(f"{__package__}.stages.{module}"), cls)
    if not (isinstance(obj, type) and issubclass(obj, Stage)):
        raise TypeError(f"registry entry {spec} is not a Stage")
    return obj


def build_pipeline(name: str) -> Pipeline:
    """The pipeline registered under ``name``; raises KeyError for unknown names."""
    return Pipeline(name, [load_stage(spec)() for spec in PIPELINES[name]])


def unmet_reads(pipeline: Pipeline) -> list[str]:
    """Wiring errors: required results that no earlier stage of ``pipeline`` declares writing."""
    written: set[type] = set()
    out = []
    for stage in pipeline.stages:
        out += [
            f"{stage.name} reads {t.__name__}, which no earlier stage writes" for t in stage.reads if t not in written
        ]
        written.update(stage.writes)
    return out


def warm_up(name: str = DEFAULT_PIPELINE) -> list[str]:
    """Call every stage's :meth:`~Stage.warm_up` (load networks); returns the problems, as
    sentences (an empty list: everything loaded)."""
    problems = []
    for stage in build_pipeline(name).stages:
        try:
            stage.warm_up()
        except Exception as e:  # reported again, with context, when a study needs it
            problems.append(f"{stage.name}: {e}")
    return problems


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
