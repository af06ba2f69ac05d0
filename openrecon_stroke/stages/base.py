"""The stage contract: what a stage reads, what it writes, and what it hands back.

A stage is one class in one module under ``openrecon_stroke/stages/``. It declares the typed
results (:class:`~openrecon_stroke.study.StudyResult` subclasses, see
:mod:`openrecon_stroke.stages.results`) it reads and writes; the pipeline checks the
declaration before and after running it:

* ``reads``: results it cannot run without. When an earlier stage did not produce one, the
  stage is skipped with a sentence saying which (never run on half its inputs);
* ``optional``: results it uses when present (e.g. the T1-w/FLAIR registration);
* ``writes``: results it may return in :attr:`StageResult.results`; returning another type
  fails the stage;
* ``needs``: names of derived series (what goes back to the scanner) it cannot run without;
* ``overlaps``: names of the stages just before it that it may run alongside, on the other
  core: it reads nothing they write (the pipeline refuses a declaration that says otherwise,
  see :func:`openrecon_stroke.pipeline.overlap_conflicts`). Results are still filed, and series
  sent, in pipeline order.

Inside :meth:`Stage.run` a stage reads results with ``study.need(Type)`` (declared in
``reads``: the pipeline checked it exists) or ``study.result(Type)`` (None when absent); asking
for a type
it did not declare raises :class:`~openrecon_stroke.study.ContractError`, so a declaration
cannot drift from the code. Results are handed back, never written into the study by the
stage: the pipeline files them (and their :meth:`~StudyResult.findings`) after the stage
returns. The report reads results by field, not findings by string.

Adding a stage (e.g. registration to the MNI152 template, whose transforms later stages use):

1. a result type in :mod:`openrecon_stroke.stages.results` (a dataclass subclassing
   ``StudyResult``, units and coordinate convention in its docstring)::

       @dataclass
       class TemplateRegistration(StudyResult):
           label: ClassVar[str] = "template_registration"
           to_template: sitk.Transform        # input (LPS) points -> template points
           from_template: sitk.Transform      # its inverse
           images: dict[str, sitk.Image]      # N4 images on the template grid

           def findings(self) -> dict:        # what the report (report.json, TEXT) shows
               return {"template": ...}

2. one module, ``stages/template.py``::

       class TemplateRegistrationStage(Stage):
           name = "template"
           reads = (BrainResult,)
           writes = (TemplateRegistration,)

           def run(self, study):
               brain = study.need(BrainResult)
               ...
               return StageResult(results=[TemplateRegistration(...)])

3. one line in :data:`openrecon_stroke.pipeline_registry.PIPELINES`: ``"template.TemplateRegistrationStage"``
   at its place in the pipeline. A later stage that needs it adds ``TemplateRegistration`` to its
   ``reads`` (or ``optional``). ``tests/test_contracts.py`` checks every registered pipeline:
   each required result is written by an earlier stage.

A series sent back to the scanner is declared once in :mod:`openrecon_stroke.stages.results` as
a :class:`~openrecon_stroke.study.SeriesSpec` (name, kind, suffix, UI switch) and made with
``SPEC.on(reference, data, comment)``; a new switch needs its parameter in
:mod:`openrecon_stroke.params`. A new network of a known family (a retrained or imported lesion
or anomaly model) needs no code: its folder with ``card.json`` (:mod:`openrecon_stroke.model_card`).

A stage that loads networks implements :meth:`Stage.warm_up`; the server calls it for every
stage of the default pipeline at start-up without knowing which stages exist.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..study import DerivedSeries, Study, StudyResult


class SkipStudy(Exception):
    """The input is not something this pipeline should process (a localizer, a knee...).

    The message is shown to the user; remaining stages are skipped, originals still go back.
    """


@dataclass
class StageResult:
    """What one stage hands back: series for the scanner, typed results for later stages,
    report findings beyond those of its results, and warnings (sentences for the user)."""

    derived: list[DerivedSeries] = field(default_factory=list)
    results: list[StudyResult] = field(default_factory=list)
    findings: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


class Stage:
    """Base class. Subclasses set ``name`` and their contract (``reads``, ``optional``,
    ``writes``, ``needs``, ``overlaps``) and implement :meth:`run`."""

    name: ClassVar[str] = "stage"
    reads: ClassVar[tuple[type[StudyResult], ...]] = ()
    optional: ClassVar[tuple[type[StudyResult], ...]] = ()
    writes: ClassVar[tuple[type[StudyResult], ...]] = ()
    needs: ClassVar[tuple[str, ...]] = ()
    overlaps: ClassVar[tuple[str, ...]] = ()

    def run(self, study: Study) -> StageResult:  # pragma: no cover - interface
        raise NotImplementedError

    def warm_up(self) -> None:
        """Load what the first study would otherwise wait for (networks); default: nothing."""

    def missing(self, study: Study) -> list[str]:
        """What this stage needs that earlier stages did not produce (labels / series names)."""
        out = [t.label for t in self.reads if t not in study.results]
        return out + [n for n in self.needs if not any(d.name == n for d in study.derived)]
