"""The UI parameters: one typed definition, from which runtime coercion (and the OpenRecon
manifest) derive.

Scanners send the values chosen in the UI as JSON ``{"parameters": {id: value}}``; values may
arrive as strings ("true", "1.5"). :func:`coerce` turns them into typed values, falls back to
the default on nonsense and says so in words.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .pipeline_registry import DEFAULT_PIPELINE, PIPELINE_NAMES


@dataclass(frozen=True)
class Parameter:
    """One UI parameter. ``kind`` is one of boolean, int, double, choice, string.

    Ids are alphanumeric (OpenRecon forbids underscores). Units are stated in ``unit``.
    """

    id: str
    label: str
    kind: str
    default: Any
    information: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[tuple[str, str], ...] = ()
    unit: str = ""

    def __post_init__(self):
        if not self.id.isalnum():
            raise ValueError(f"parameter id {self.id!r} must be alphanumeric")
        if self.kind not in ("boolean", "int", "double", "choice", "string"):
            raise ValueError(f"parameter {self.id}: unknown kind {self.kind}")
        if self.kind == "choice" and self.default not in [c for c, _ in self.choices]:
            raise ValueError(f"parameter {self.id}: default {self.default!r} is not a choice")
        if self.kind in ("int", "double"):
            if self.minimum is None or self.maximum is None or not (self.minimum <= self.default <= self.maximum):
                raise ValueError(f"parameter {self.id}: default outside [minimum, maximum]")

    @property
    def bounds(self) -> tuple[float, float]:
        """(minimum, maximum) of a number (validated on construction)."""
        assert self.minimum is not None and self.maximum is not None
        return self.minimum, self.maximum

    def coerce(self, raw: Any) -> Any:
        """Typed value of ``raw``; raises ValueError with a readable reason."""
        if self.kind == "boolean":
            if isinstance(raw, bool):
                return raw
            s = str(raw).strip().lower()
            if s in ("true", "1", "yes", "on"):
                return True
            if s in ("false", "0", "no", "off"):
                return False
            raise ValueError(f"expected true or false, got {raw!r}")
        if self.kind in ("int", "double"):
            if isinstance(raw, bool):
                raise ValueError(f"expected a number, got {raw!r}")
            try:
                v = float(str(raw).strip())
            except ValueError:
                raise ValueError(f"expected a number, got {raw!r}") from None
            if not math.isfinite(v):
                raise ValueError(f"expected a finite number, got {raw!r}")
            if self.kind == "int":
                if v != int(v):
                    raise ValueError(f"expected a whole number, got {raw!r}")
                v = int(v)
            lo, hi = self.bounds
            if not (lo <= v <= hi):
                raise ValueError(f"{v} is outside {self.minimum}..{self.maximum} {self.unit}".rstrip())
            return v
        if self.kind == "choice":
            s = str(raw).strip()
            ids = [c for c, _ in self.choices]
            for c in ids:
                if s.lower() == c.lower():
                    return c
            raise ValueError(f"expected one of {', '.join(ids)}, got {raw!r}")
        s = str(raw)
        if len(s) > 256:
            raise ValueError("text longer than 256 characters")
        return s


PARAMETERS: tuple[Parameter, ...] = (
    Parameter(
        "config",
        "Pipeline",
        "choice",
        DEFAULT_PIPELINE,
        "Which processing runs: the full stroke pipeline or only returning the images.",
        choices=tuple((n, n) for n in PIPELINE_NAMES),
    ),
    Parameter(
        "sendoriginal",
        "Send original images",
        "boolean",
        True,
        "Return the input images unchanged, before the derived series. Turn off only if "
        "another step in the chain already keeps them.",
    ),
    Parameter(
        "contrast",
        "Input contrast",
        "choice",
        "auto",
        "Contrast of the incoming series; auto reads it from the protocol (TI, name).",
        choices=(("auto", "auto"), ("t1", "T1-weighted"), ("flair", "FLAIR")),
    ),
    Parameter(
        "betmode",
        "Brain extraction",
        "choice",
        "fast",
        "HD-BET brain extraction: fast (one network, no mirroring) or accurate (all "
        "shipped networks with mirroring; several times slower); none for series already "
        "skull-stripped by another tool (their non-zero voxels are the brain).",
        choices=(("fast", "fast"), ("accurate", "accurate"), ("none", "none (skull-stripped)")),
    ),
    Parameter("sendbrainmask", "Send brain mask", "boolean", True, "Return the brain mask series (HD-BET)."),
    Parameter(
        "sendmask",
        "Send head mask",
        "boolean",
        True,
        "Return the foreground (head) mask series of the headmask check pipeline.",
    ),
    Parameter(
        "lesionthreshold",
        "Lesion threshold",
        "double",
        0.2,
        "Lesion probability (ensemble mean) at or above which a voxel is lesion. Left at 0.2, "
        "a site model uses its own (an imported nnU-Net model: 0.5, its arg-max).",
        minimum=0.05,
        maximum=0.95,
    ),
    Parameter(
        "lesionmodel",
        "Lesion model",
        "string",
        "",
        "Folder name of a site lesion model (e.g. an imported nnU-Net model) in the lesion "
        "models folder; empty: OPENRECON_LESION_MODEL if set, else the shipped models.",
    ),
    Parameter(
        "minlesion",
        "Smallest lesion",
        "double",
        10.0,
        "Lesions smaller than this are dropped as noise.",
        minimum=0.0,
        maximum=5000.0,
        unit="mm3",
    ),
    Parameter(
        "anomalysteps",
        "Anomaly steps",
        "int",
        4,
        "Euler steps of the flow model that makes the pseudo-healthy brain; more is slower.",
        minimum=1,
        maximum=16,
    ),
    Parameter("sendlesion", "Send lesion mask", "boolean", True, "Return the lesion mask series (label 1 = lesion)."),
    Parameter(
        "sendoverlay",
        "Send overlay",
        "boolean",
        True,
        "Return the colour overlay series: anatomy in grey, lesion and anomaly map in colour.",
    ),
    Parameter(
        "sendanomaly",
        "Send anomaly map",
        "boolean",
        True,
        "Return the anomaly map series (difference to the pseudo-healthy brain).",
    ),
    Parameter(
        "sendreport",
        "Send report page",
        "boolean",
        True,
        "Return a one-page summary image: lesions, anomaly load, timings, warnings.",
    ),
)

BY_ID = MappingProxyType({p.id: p for p in PARAMETERS})


@dataclass(frozen=True)
class Params:
    """Validated parameter values (every id present), plus what was wrong with the input."""

    values: MappingProxyType
    warnings: tuple[str, ...] = field(default=())

    def __getitem__(self, key: str):
        return self.values[key]

    def as_dict(self) -> dict:
        return dict(self.values)


def defaults() -> Params:
    return Params(MappingProxyType({p.id: p.default for p in PARAMETERS}))


def coerce(raw: dict | None) -> Params:
    """Validate UI values: unknown ids are ignored, bad values fall back to the default;
    each problem becomes one warning sentence."""
    values = {p.id: p.default for p in PARAMETERS}
    warnings = []
    for key, value in (raw or {}).items():
        p = BY_ID.get(str(key)) or BY_ID.get(str(key).lower())
        if p is None:
            warnings.append(f"unknown parameter '{key}' ignored")
            continue
        try:
            values[p.id] = p.coerce(value)
        except ValueError as e:
            warnings.append(f"parameter '{p.id}': {e}; using the default {p.default!r}")
    return Params(MappingProxyType(values), tuple(warnings))


def parse_parameter_text(text: str) -> dict | None:
    """The ``parameters`` dict from a scanner TEXT message, or None if the text is not one.

    Raises ValueError when the text looks like JSON parameters but is malformed.
    """
    s = text.strip().rstrip("\x00").strip()
    if not s.startswith("{"):
        return None
    try:
        obj = json.loads(s)
    except json.JSONDecodeError as e:
        raise ValueError(f"the UI parameter message is not valid JSON ({e.msg} at character {e.pos})") from None
    if not isinstance(obj, dict):
        raise ValueError("the UI parameter message is not a JSON object")
    p = obj.get("parameters", obj)
    if not isinstance(p, dict):
        raise ValueError("'parameters' in the UI parameter message is not a JSON object")
    return p


def parse_cli_params(items: list[str] | None) -> dict:
    """``key=value`` strings from a command line -> raw dict (coerced later)."""
    out = {}
    for it in items or []:
        if "=" not in it:
            raise ValueError(f"--param expects key=value, got {it!r}")
        k, v = it.split("=", 1)
        out[k.strip()] = v.strip()
    return out
