"""Pipelines of named stages.

A stage is one small object (:class:`~openrecon_stroke.stages.base.Stage`): it reads
``study.inputs`` (volumes by contrast), ``study.params``, the typed results of earlier stages
it declares, and returns a :class:`~openrecon_stroke.stages.base.StageResult`. The pipeline
runs stages in order (a stage that declares ``overlaps`` alongside the stages before it, on the
other core), checks each stage's declared contract, times them, and keeps going when one fails:
the failure becomes a warning, stages that need its output are skipped with a reason. Neither
the server nor the offline ``process`` command knows which stages exist: the registry
(:mod:`openrecon_stroke.pipeline_registry`) does.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .pipeline_registry import DEFAULT_PIPELINE, PIPELINE_NAMES, PIPELINES
from .runtime import flush_denormals, study_threads
from .stages.base import SkipStudy, Stage, StageResult
from .study import ContractError, DerivedSeries, Study

log = logging.getLogger(__name__)


@dataclass
class _Outcome:
    """How one stage's run ended: its result, or the exception it raised; seconds it took."""

    result: StageResult | None
    error: BaseException | None
    seconds: float


def _run_stage(stage: Stage, study: Study) -> _Outcome:
    """Run one stage in the calling thread, its declared reads checked (per thread)."""
    t0 = time.perf_counter()
    study.reading = frozenset(stage.reads + stage.optional)
    try:
        result = stage.run(study)
        _check_writes(stage, result)
        return _Outcome(result, None, time.perf_counter() - t0)
    except Exception as e:  # handed to the pipeline, which decides what it means
        return _Outcome(None, e, time.perf_counter() - t0)
    finally:
        study.reading = None


def waves(stages: list[Stage]) -> list[list[Stage]]:
    """Stages grouped into runs that go side by side: a stage joins the group before it when it
    declares every stage of that group in its ``overlaps``."""
    out: list[list[Stage]] = []
    for stage in stages:
        if out and all(s.name in stage.overlaps for s in out[-1]):
            out[-1].append(stage)
        else:
            out.append([stage])
    return out


@dataclass
class Pipeline:
    name: str
    stages: list[Stage]

    def run(self, study: Study, on_stage: Callable[[Study, list[DerivedSeries]], None] | None = None) -> Study:
        """Run every stage on ``study``. ``on_stage(study, derived)``, when given, is called after
        each stage that succeeded with the series it added (the server sends them at once, so the
        scanner shows the brain mask while the later stages still run).

        Stages that declare ``overlaps`` run side by side with the stages before them (one
        thread each; see :func:`waves`) when the study may use two threads or more
        (:func:`~openrecon_stroke.runtime.study_threads`: a cohort worker limited to one thread
        runs them one after the other); their results are filed, and ``on_stage`` called, in
        pipeline order either way, so the study comes out the same."""
        flush_denormals()  # this thread and the stage threads it starts (see the function)
        for stage in self.stages:
            for kind in stage.writes:
                study.producers.setdefault(kind, stage.name)
        t_start = time.perf_counter()
        handing = 0.0  # seconds in on_stage (the server sending series)
        stopped = False
        groups = waves(self.stages) if study_threads() >= 2 else [[st] for st in self.stages]
        for wave in groups:
            if stopped:
                for stage in wave:
                    study.stage_status[stage.name] = "skipped"
                continue
            runnable = []
            for stage in wave:
                missing = stage.missing(study)
                if missing:
                    msg = f"{stage.name} skipped: it needs {', '.join(missing)}, which an earlier stage did not produce"
                    study.warnings.append(msg)
                    study.stage_status[stage.name] = "skipped"
                    log.warning(msg)
                else:
                    runnable.append(stage)
            if not runnable:
                continue
            pool = ThreadPoolExecutor(len(runnable) - 1, "stage") if len(runnable) > 1 else None
            try:
                later = [pool.submit(_run_stage, st, study) for st in runnable[1:]] if pool else []
                outcomes = [_run_stage(runnable[0], study)] + [f.result() for f in later]
            finally:
                if pool is not None:
                    pool.shutdown(wait=True)
            for stage, out in zip(runnable, outcomes):
                if stopped:
                    study.stage_status[stage.name] = "skipped"
                    continue
                study.timings_s[stage.name] = out.seconds
                if isinstance(out.error, SkipStudy):
                    study.stage_status[stage.name] = "skipped"
                    study.warnings.append(f"processing skipped: {out.error}")
                    log.warning("processing skipped by %s: %s", stage.name, out.error)
                    stopped = True
                elif out.error is not None:  # a failed stage must not take the study down
                    study.stage_status[stage.name] = "failed"
                    study.warnings.append(f"{stage.name} failed: {out.error}")
                    log.error("stage %s failed", stage.name, exc_info=out.error)
                else:
                    assert out.result is not None
                    study.stage_status[stage.name] = "ok"
                    file_result(study, out.result)
                    log.info("stage %s done in %.2f s", stage.name, out.seconds)
                    if on_stage is not None and out.result.derived:
                        t0 = time.perf_counter()
                        on_stage(study, list(out.result.derived))
                        handing += time.perf_counter() - t0
        total = time.perf_counter() - t_start
        log.info(
            "pipeline %s ran in %.2f s (stages %.2f s, handing series on %.2f s)",
            self.name,
            total,
            total - handing,
            handing,
        )
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


def overlap_conflicts(pipeline: Pipeline) -> list[str]:
    """Wiring errors of ``overlaps``: a stage declared to run alongside a stage that writes a
    result it reads, or alongside a stage that is not just before it."""
    out = []
    names = [s.name for s in pipeline.stages]
    for i, stage in enumerate(pipeline.stages):
        for name in stage.overlaps:
            if name not in names[:i]:
                out.append(f"{stage.name} overlaps {name}, which does not run before it")
    for wave in waves(pipeline.stages):
        for i, stage in enumerate(wave):
            for other in wave[:i]:
                both = set(stage.reads + stage.optional) & set(other.writes)
                out += [f"{stage.name} runs alongside {other.name} but reads its {t.__name__}" for t in both]
    return out


def warm_up(name: str = DEFAULT_PIPELINE) -> list[str]:
    """Call every stage's :meth:`~Stage.warm_up` (load networks); returns the problems, as
    sentences (an empty list: everything loaded)."""
    problems = []
    flush_denormals()
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
