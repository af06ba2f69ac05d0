"""What the pipeline works on: the input volumes of a study, keyed by contrast, and what the
stages derive from them: series that go back to the scanner (:class:`DerivedSeries`) and typed
results that later stages read (:class:`StudyResult`; the concrete ones are in
:mod:`openrecon_stroke.stages.results`)."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from typing import ClassVar, TypeVar

import numpy as np

from .geometry import GeometryError, Volume
from .params import Params, defaults
from .study_cache import StudyCache

CONTRASTS = ("t1", "flair")

#: Kinds of derived series and how they go back to the scanner.
#: mask: integer labels (0 background); map: float values with a fixed display window;
#: image: float image in the input's intensity range; rgb: (nz, ny, nx, 3) uint8;
#: page: one 2D RGB picture (1, height, width, 3) uint8 that is not on the input grid (the report
#: page; :func:`openrecon_stroke.outputs.page_grid` places it in the input's slice plane).
DERIVED_KINDS = ("mask", "map", "image", "rgb", "page")


@dataclass
class DerivedSeries:
    """A volume computed by a stage, on the grid of one input volume.

    Attributes:
        name: file-system-safe identifier, e.g. ``head_mask`` (also the NIfTI file stem).
        reference: key of the input volume whose grid (and MRD geometry) it shares.
        data: ``(nz, ny, nx)`` array (``(nz, ny, nx, 3)`` uint8 for rgb).
        kind: one of :data:`DERIVED_KINDS`.
        description: series name suffix shown on the scanner (``SequenceDescriptionAdditional``).
        window: (centre, width) display window in the data's units, for kind ``map``.
        comment: free text for ``ImageComments``.
        send_param: id of the boolean UI parameter that switches this series on the scanner.
    """

    name: str
    reference: str
    data: np.ndarray
    kind: str
    description: str
    window: tuple[float, float] | None = None
    comment: str = ""
    send_param: str | None = None

    def __post_init__(self):
        if self.kind not in DERIVED_KINDS:
            raise ValueError(f"derived series {self.name}: unknown kind {self.kind}")
        if not re.fullmatch(r"[a-z0-9_]+", self.name):
            raise ValueError(f"derived series name {self.name!r} must be lower-case letters, digits, _")


class ContractError(RuntimeError):
    """A stage read or wrote a result its declaration does not name (a programming error)."""


class StudyResult:
    """Base of the typed results stages hand to later stages (not sent to the scanner).

    A subclass is a dataclass; one instance per type lives in :attr:`Study.results`.
    ``label`` names the result in the "skipped: it needs ..." sentence; :meth:`findings` is
    what it adds to the report (``report.json``, the scanner's text report).
    """

    label: ClassVar[str] = "result"

    def findings(self) -> dict:
        return {}


R = TypeVar("R", bound=StudyResult)


@dataclass(frozen=True)
class SeriesSpec:
    """One kind of returned series: its name, kind, scanner name suffix, the UI switch that sends
    it and, for maps, its display window (see :class:`DerivedSeries`)."""

    name: str
    kind: str
    description: str
    send_param: str | None = None
    window: tuple[float, float] | None = None

    def on(self, reference: str, data: np.ndarray, comment: str = "") -> DerivedSeries:
        """This series on the grid of input ``reference``."""
        return DerivedSeries(
            self.name, reference, data, self.kind, self.description, self.window, comment, self.send_param
        )


@dataclass
class Study:
    """Inputs, parameters and accumulated results of one run of a pipeline."""

    inputs: dict[str, Volume]
    params: Params = field(default_factory=defaults)
    derived: list[DerivedSeries] = field(default_factory=list)
    #: the report's data (JSON-ready, in the order stages added it)
    findings: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)
    stage_status: dict[str, str] = field(default_factory=dict)
    #: typed results of earlier stages, one per type (read with :meth:`result`)
    results: dict[type, StudyResult] = field(default_factory=dict)
    #: result type -> name of the stage of the running pipeline that declares writing it
    producers: dict[type, str] = field(default_factory=dict)
    #: on-disk cache of earlier series of the same study (server: other connections), or None
    cache: StudyCache | None = None
    #: thread id -> the result types declared by the stage that thread runs (see :attr:`reading`)
    _reading: dict[int, frozenset[type]] = field(default_factory=dict, repr=False)

    @property
    def reading(self) -> frozenset[type] | None:
        """While a pipeline runs a stage in this thread: the result types that stage declares
        reading (None outside a stage: nothing is checked). Per thread, because stages that
        declare :attr:`~openrecon_stroke.stages.base.Stage.overlaps` run side by side."""
        return self._reading.get(threading.get_ident())

    @reading.setter
    def reading(self, kinds: frozenset[type] | None) -> None:
        if kinds is None:
            self._reading.pop(threading.get_ident(), None)
        else:
            self._reading[threading.get_ident()] = kinds

    def result(self, kind: type[R]) -> R | None:
        """The earlier stages' result of type ``kind``, or None. Inside a pipeline a stage may
        only ask for types it declares in ``reads`` or ``optional``."""
        if self.reading is not None and kind not in self.reading:
            raise ContractError(f"a stage read {kind.__name__} without declaring it in reads/optional")
        got = self.results.get(kind)
        return got if isinstance(got, kind) else None

    @property
    def cache_key(self) -> str | None:
        """This study's key in :attr:`cache` (None without a cache or a study identity)."""
        from .study_cache import study_key

        if self.cache is None:
            return None
        infos = [v.info for v in self.inputs.values() if v.info]
        return study_key(infos[0]) if infos else None

    def need(self, kind: type[R]) -> R:
        """Like :meth:`result` for a type the stage declares in ``reads`` (the pipeline checked
        that it exists)."""
        got = self.result(kind)
        if got is None:
            raise ContractError(f"{kind.__name__} is missing although the stage reads it")
        return got

    @property
    def models(self) -> dict[str, str]:
        """Which model produced what (findings ``models``: role -> name and version)."""
        m = self.findings.get("models")
        return dict(m) if isinstance(m, dict) else {}

    def add(self, series: DerivedSeries):
        ref = self.inputs.get(series.reference)
        if ref is None:
            raise GeometryError(f"derived series {series.name} refers to missing input {series.reference}")
        want = ref.grid.shape + ((3,) if series.kind == "rgb" else ())
        if series.kind == "page":
            d = series.data
            if d.ndim != 4 or d.shape[0] != 1 or d.shape[3] != 3 or min(d.shape[1:3]) < 1:
                raise GeometryError(
                    f"derived series {series.name} (page) has shape {d.shape}, expected (1, height, width, 3)"
                )
        elif tuple(series.data.shape) != want:
            raise GeometryError(f"derived series {series.name} has shape {series.data.shape}, input grid is {want}")
        self.derived.append(series)

    def get(self, name: str, reference: str) -> DerivedSeries | None:
        for d in self.derived:
            if d.name == name and d.reference == reference:
                return d
        return None


_FLAIR_WORDS = re.compile(r"flair|tirm|dark[-_ ]?fluid|darkfluid", re.I)
_T1_WORDS = re.compile(r"t1|mprage|mp2rage|tfl|spgr|bravo|tfe", re.I)


def detect_contrast(header, requested: str = "auto", description: str = "") -> tuple[str | None, str]:
    """Contrast of a series: ``"t1"``, ``"flair"`` or None (unknown), and how it was decided.

    ``requested`` (the UI parameter) wins unless it is ``auto``; otherwise the inversion time
    (FLAIR: TI >= 1500 ms) and then the protocol/series name decide.
    """
    if requested in CONTRASTS:
        return requested, "set by the Input contrast parameter"
    names = [description]
    ti = None
    if header is not None:
        mi = getattr(header, "measurementInformation", None)
        if mi is not None:
            names += [mi.protocolName or "", mi.seriesDescription or ""]
        sp = getattr(header, "sequenceParameters", None)
        if sp is not None and sp.TI:
            ti = float(sp.TI[0])
    text = " ".join(dict.fromkeys(n for n in names if n))
    if ti is not None and ti >= 1500:
        return "flair", f"inversion time {ti:.0f} ms"
    if _FLAIR_WORDS.search(text):
        return "flair", f"protocol name '{text.strip()}'"
    if _T1_WORDS.search(text):
        return "t1", f"protocol name '{text.strip()}'"
    if ti is not None and 300 <= ti <= 1400:
        return "t1", f"inversion time {ti:.0f} ms"
    return None, "neither the protocol name nor the inversion time identify it"
