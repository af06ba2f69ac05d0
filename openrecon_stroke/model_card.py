"""Model cards: a model is ONNX files plus this description, not code. One format, one loader.

A card is ``card.json`` beside the ONNX files. Every card has:

* ``kind``: the model family, a key of :data:`CARD_KINDS` (``"segmentation"``: lesion models,
  own or imported nnU-Net; ``"anomaly"``; ``"brain_extraction"``: HD-BET). A card without it
  is read as the family asked for (``AnomalyCard.load``), or, by :func:`load_card`, as the
  family its keys show;
* ``name``, ``version``: shown on the report;
* ``files``: ``[{"file": "fold0.onnx", "sha256": "..."}]`` (an ensemble's folds), or one
  ``file`` + ``sha256``; each file must exist and match its sha256 (checked on load);
* optional ``status`` ("validated" / "experimental": an experimental model is flagged on every
  report) and ``status_note``.

Family keys (validated on load, so that a wrong card cannot be built):

**segmentation** (:class:`ModelCard`): ``inputs`` (contrasts in channel order, e.g.
``["t1", "flair"]``); ``spacing_mm`` (network voxel size x, y, z in mm); ``orientation`` (voxel
axis directions of the network grid as an ITK code, ``"RAS"``: x towards patient Right, y
Anterior, z Superior); ``normalisation`` (``"zscore_brain"``: each channel minus its mean, over
its standard deviation, inside the brain mask, 0 outside; or ``"zscore"``: whole volume);
``patch_size`` ((z, y, x) voxels of one network input); ``output`` (``{"activation":
"softmax"|"sigmoid"|"probability", "channel": k}``, the lesion class); ``threshold``
(probability, default 0.2), ``min_lesion_mm3`` (default 10); optional ``size_divisor`` and
``max_window_voxels`` (the network is fully convolutional and takes any (z, y, x) size
divisible by ``size_divisor``; a volume (the brain box) of at most ``max_window_voxels`` once
rounded up is then predicted in one window of its own size instead of sliding ``patch_size``
windows over it, for a network whose output does not depend on the window, e.g. batch norm
with running statistics); ``overlap`` (0-0.9, default 0.5), ``mirror_axes`` (default none),
``margin_mm``; optional ``preprocessing``: a section that replaces the runner's own grid and
normalisation by another scheme's exact inference. The one scheme is ``"nnunet_v2"``
(:class:`openrecon_stroke.nnunet.NnUNetPreprocessing`, written by ``openrecon-stroke
import-nnunet``); with it ``normalisation`` is ``"nnunet_v2"`` and ``spacing_mm``,
``orientation`` and ``margin_mm`` are informative only.

**anomaly** (:class:`AnomalyCard`): see its fields.

**brain_extraction** (:class:`BrainExtractionCard`): HD-BET's grid, padding, crop, modes; see
``models/hdbet/MODEL_CARD.md``.

**voxel_classifier** (:class:`VoxelClassifierCard`): a template-space voxel classifier (the
lesion models); see its fields.

**normative** (:class:`NormativeCard`): healthy-brain statistics in template space (the anomaly
map, and features of the lesion models); see its fields.

A new family is a :class:`Card` subclass with its ``kind`` and :meth:`Card.parse`, and one entry
in :data:`CARD_KINDS`. Keys a family does not model (training notes, metrics) stay readable as
``card["key"]``. Sessions, threads and folders are :mod:`openrecon_stroke.runtime`'s.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np

from .nnunet import SCHEME as NNUNET_SCHEME
from .nnunet import NnUNetPreprocessing

C = TypeVar("C", bound="Card")
S = TypeVar("S")

ACTIVATIONS = ("softmax", "sigmoid", "probability")
NORMALISATIONS = ("zscore_brain", "zscore")


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class ModelCardError(ValueError):
    """The card is missing something or contradicts itself (the message says what)."""


@dataclass(frozen=True, kw_only=True)
class Card:
    """What every card holds; a family's card adds its own fields."""

    kind: ClassVar[str] = ""
    #: status of a card that does not state one
    default_status: ClassVar[str] = ""

    path: Path
    name: str
    version: str
    files: tuple[Path, ...]
    sha256: tuple[str, ...]
    status: str = ""
    status_note: str = ""
    #: the card's JSON as written (``card["key"]``)
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    def __getitem__(self, key: str) -> Any:
        return self.raw[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.raw.get(key, default)

    def __post_init__(self):
        if not self.files:
            raise ModelCardError(f"{self.path}: no model files listed")

    @classmethod
    def parse(cls: type[C], common: dict[str, Any], d: dict) -> C:
        """The card from its JSON ``d``; ``common`` holds the fields of :class:`Card`, already
        read. Raises KeyError / ValueError / TypeError / :class:`ModelCardError`."""
        return cls(**common)

    @classmethod
    def load(cls: type[C], path: str | Path, verify: bool = True) -> C:
        """The card of a model folder (its ``card.json``) or a card file, of this family."""
        card = load_card(path, cls.kind, verify=verify)
        assert isinstance(card, cls)
        return card

    def verify_files(self) -> None:
        for f, s in zip(self.files, self.sha256):
            verify_model_file(f, s, self.path)

    def session_options(self) -> dict:
        """Options of :func:`openrecon_stroke.runtime.ort_session` for this family's files."""
        return {}


@dataclass(frozen=True, kw_only=True)
class ModelCard(Card):
    """A segmentation model (the lesion models, own or imported nnU-Net)."""

    kind: ClassVar[str] = "segmentation"

    inputs: tuple[str, ...]
    spacing_mm: tuple[float, float, float]
    orientation: str
    normalisation: str
    patch_size: tuple[int, int, int]
    activation: str
    channel: int
    threshold: float = 0.2
    min_lesion_mm3: float = 10.0
    overlap: float = 0.5
    mirror_axes: tuple[int, ...] = ()
    margin_mm: float = 8.0
    size_divisor: int = 0
    max_window_voxels: int = 0
    #: another scheme's exact preprocessing and inference (nnU-Net v2), or None: the runner's own
    preprocessing: NnUNetPreprocessing | None = None

    def __post_init__(self):
        super().__post_init__()
        if not self.inputs or any(c not in ("t1", "flair") for c in self.inputs):
            raise ModelCardError(f"{self.path}: inputs must be contrasts among t1, flair; got {self.inputs}")
        if len(self.spacing_mm) != 3 or min(self.spacing_mm) <= 0:
            raise ModelCardError(f"{self.path}: spacing_mm must be three positive numbers")
        if len(self.patch_size) != 3 or min(self.patch_size) < 8:
            raise ModelCardError(f"{self.path}: patch_size must be three sizes >= 8")
        if self.activation not in ACTIVATIONS:
            raise ModelCardError(f"{self.path}: output activation must be one of {ACTIVATIONS}")
        if self.preprocessing is not None:
            if self.normalisation != NNUNET_SCHEME:
                raise ModelCardError(
                    f"{self.path}: with a {NNUNET_SCHEME} preprocessing section, "
                    f"normalisation must be {NNUNET_SCHEME!r}"
                )
            if len(self.inputs) != self.preprocessing.n_channels:
                raise ModelCardError(
                    f"{self.path}: {len(self.inputs)} inputs but {self.preprocessing.n_channels} "
                    "normalisation entries in the preprocessing section"
                )
            if not 0 <= self.channel < len(self.preprocessing.labels):
                raise ModelCardError(f"{self.path}: output channel {self.channel} is not one of the labels")
        elif self.normalisation not in NORMALISATIONS:
            raise ModelCardError(f"{self.path}: normalisation must be one of {NORMALISATIONS}")
        if not 0 < self.threshold < 1:
            raise ModelCardError(f"{self.path}: threshold must be in (0, 1)")
        if not 0 <= self.overlap < 0.95:
            raise ModelCardError(f"{self.path}: overlap must be in [0, 0.95)")
        if any(a not in (0, 1, 2) for a in self.mirror_axes):
            raise ModelCardError(f"{self.path}: mirror_axes are spatial axes 0, 1, 2")
        if self.size_divisor < 0 or self.max_window_voxels < 0 or (self.max_window_voxels and not self.size_divisor):
            raise ModelCardError(f"{self.path}: max_window_voxels needs a size_divisor (both >= 1)")
        if self.preprocessing is None and len(self.orientation) != 3:
            raise ModelCardError(f"{self.path}: orientation must be a 3-letter code such as RAS")

    @classmethod
    def parse(cls, common, d):
        out = d["output"]
        pre = None
        if d.get("preprocessing") is not None:
            try:
                pre = NnUNetPreprocessing.from_dict(d["preprocessing"])
            except (TypeError, ValueError) as e:
                raise ModelCardError(f"{common['path']}: preprocessing section: {e}") from None
        return cls(
            **common,
            inputs=tuple(d["inputs"]),
            spacing_mm=_floats3(d["spacing_mm"]),
            orientation=str(d.get("orientation", pre.orientation if pre else "RAS")),
            normalisation=str(d["normalisation"]),
            patch_size=_ints3(d["patch_size"]),
            activation=str(out["activation"]),
            channel=int(out["channel"]),
            threshold=float(d.get("threshold", 0.2)),
            min_lesion_mm3=float(d.get("min_lesion_mm3", 10.0)),
            overlap=float(d.get("overlap", 0.5)),
            mirror_axes=tuple(int(a) for a in d.get("mirror_axes", ())),
            margin_mm=float(d.get("margin_mm", 8.0)),
            size_divisor=int(d.get("size_divisor", 0)),
            max_window_voxels=int(d.get("max_window_voxels", 0)),
            preprocessing=pre,
        )

    def window_for(self, shape_zyx) -> tuple[int, int, int]:
        """The network window for a (z, y, x) volume: the volume itself rounded up to
        ``size_divisor`` when the card allows whole-volume windows and that has at most
        ``max_window_voxels``; otherwise ``patch_size`` (slid over the volume)."""
        if self.size_divisor and self.max_window_voxels:
            k = self.size_divisor
            whole = _ints3(-(-int(n) // k) * k for n in shape_zyx)
            if int(np.prod(whole)) <= self.max_window_voxels:
                return whole
        return self.patch_size


@dataclass(frozen=True, kw_only=True)
class AnomalyCard(Card):
    """The rectified-flow anomaly model (:mod:`openrecon_stroke.anomaly`): one file; contrasts
    and their channel flag, network grid (RAS, ``spacing_mm``, brain box + ``margin_mm``), default
    Euler ``steps``, smoothing, and the healthy-brain calibration."""

    kind: ClassVar[str] = "anomaly"
    default_status: ClassVar[str] = "experimental"

    contrast_flag: dict
    spacing_mm: tuple[float, float, float]
    orientation: str
    margin_mm: float
    steps: int
    smoothing_mm: float
    #: per number of Euler steps: ``scale`` (contrast -> the smoothed |input - pseudo-healthy|
    #: that healthy brains reach) and ``threshold`` (contrast combination "t1", "flair",
    #: "t1+flair" -> threshold on the mean scaled score), both from healthy calibration brains
    calibration: dict
    #: anomalies smaller than this are dropped from the anomaly mask (mm³)
    min_volume_mm3: float = 50.0
    #: the brain mask is eroded by this much before scoring (edge of the mask, mm)
    edge_mm: float = 2.0

    def __post_init__(self):
        super().__post_init__()
        if (
            self.steps < 1
            or not self.calibration
            or any(not set(v["scale"]) <= set(self.contrast_flag) for v in self.calibration.values())
        ):
            raise ModelCardError(f"{self.path}: needs steps >= 1 and a calibration whose scales name known contrasts")

    @classmethod
    def parse(cls, common, d):
        return cls(
            **common,
            contrast_flag={k: float(v) for k, v in d["contrast_flag"].items()},
            spacing_mm=_floats3(d["spacing_mm"]),
            orientation=str(d.get("orientation", "RAS")),
            margin_mm=float(d.get("margin_mm", 8.0)),
            steps=int(d["steps"]),
            smoothing_mm=float(d["smoothing_mm"]),
            calibration={
                int(k): {
                    "scale": {c: float(x) for c, x in v["scale"].items()},
                    "threshold": {c: float(x) for c, x in v["threshold"].items()},
                }
                for k, v in d["calibration"].items()
            },
            min_volume_mm3=float(d.get("min_volume_mm3", 50.0)),
            edge_mm=float(d.get("edge_mm", 2.0)),
        )

    @property
    def file(self) -> Path:
        return self.files[0]

    def combination(self, contrasts) -> str:
        return "+".join(c for c in ("t1", "flair") if c in contrasts)

    def calibrated(self, steps: int) -> dict:
        """Calibration for ``steps`` Euler steps (the nearest calibrated number of steps)."""
        k = min(self.calibration, key=lambda n: (abs(n - steps), n))
        return self.calibration[k]


@dataclass(frozen=True, kw_only=True)
class VoxelClassifierCard(Card):
    """A voxel classifier in template space (:mod:`openrecon_stroke.lesion_voxel`): ``inputs``
    (contrasts), ``template`` (``{"name", "spacing_mm"}``: the template grid of
    :func:`openrecon_stroke.template.template_grid` its features are computed on), ``features``
    (names in the model's column order, :mod:`openrecon_stroke.voxel_features`), ``normative``
    (folder of the normative model, relative to the card, when a feature needs one), ``output``
    (``{"channel": k}``: the lesion column of the ONNX ``probabilities``), ``smoothing_mm`` of
    the probability map, ``threshold`` and ``min_lesion_mm3``."""

    kind: ClassVar[str] = "voxel_classifier"

    inputs: tuple[str, ...]
    spacing_mm: float
    features: tuple[str, ...]
    channel: int = 1
    normative: Path | None = None
    smoothing_mm: float = 0.0
    threshold: float = 0.2
    min_lesion_mm3: float = 10.0
    #: hysteresis: a lesion's highest probability must reach this (None: no such rule)
    seed_probability: float | None = None
    #: a two-step prediction (optional, :class:`Cascade`): the first trees on every voxel, the
    #: whole model only where they reach the cascade's probability
    cascade: Cascade | None = None
    #: a second classifier over whole lesion candidates (optional, :class:`CandidateFilter`)
    candidate_filter: CandidateFilter | None = None
    #: each lesion grown to its own intensity edge (optional, :class:`EdgeRefinement`)
    edge_refinement: EdgeRefinement | None = None

    def __post_init__(self):
        super().__post_init__()
        from .voxel_features import check_names

        if self.candidate_filter is not None:
            self.candidate_filter.check(self)

        if self.edge_refinement is not None and self.edge_refinement.contrast not in self.inputs:
            raise ModelCardError(
                f"{self.path}: edge_refinement reads {self.edge_refinement.contrast}, which is not among the inputs"
            )

        if self.cascade is not None and len(self.files) != 1:
            raise ModelCardError(
                f"{self.path}: a cascade needs exactly one model file, the card lists {len(self.files)}"
            )

        if not self.inputs or any(c not in ("t1", "flair") for c in self.inputs):
            raise ModelCardError(f"{self.path}: inputs must be contrasts among t1, flair; got {self.inputs}")
        if not 0.5 <= self.spacing_mm <= 4:
            raise ModelCardError(f"{self.path}: template spacing_mm must be 0.5-4 mm")
        problem = check_names(self.features, self.inputs, has_normative=self.normative is not None)
        if problem:
            raise ModelCardError(f"{self.path}: {problem}")
        if not 0 < self.threshold < 1:
            raise ModelCardError(f"{self.path}: threshold must be in (0, 1)")

    @classmethod
    def parse(cls, common, d):
        return cls(
            **common,
            inputs=tuple(d["inputs"]),
            spacing_mm=float(d["template"]["spacing_mm"]),
            features=tuple(str(f) for f in d["features"]),
            channel=int(d.get("output", {}).get("channel", 1)),
            normative=(common["path"].parent / d["normative"]) if d.get("normative") else None,
            smoothing_mm=float(d.get("smoothing_mm", 0.0)),
            threshold=float(d.get("threshold", 0.2)),
            min_lesion_mm3=float(d.get("min_lesion_mm3", 10.0)),
            seed_probability=float(d["seed_probability"]) if d.get("seed_probability") is not None else None,
            cascade=Cascade.parse(common["path"], d["cascade"]) if d.get("cascade") else None,
            candidate_filter=(
                CandidateFilter.parse(common["path"], d["candidate_filter"]) if d.get("candidate_filter") else None
            ),
            edge_refinement=(
                EdgeRefinement.parse(common["path"], d["edge_refinement"]) if d.get("edge_refinement") else None
            ),
        )

    def verify_files(self) -> None:
        super().verify_files()
        if self.cascade is not None:
            verify_model_file(self.cascade.file, self.cascade.sha256, self.path)
        if self.candidate_filter is not None:
            verify_model_file(self.candidate_filter.file, self.candidate_filter.sha256, self.path)


def _section(card_file: Path, what: str, build: Callable[[], S]) -> S:
    """``build()`` a card section, a missing or malformed field reported as ``card_file: what (...)``."""
    try:
        return build()
    except (KeyError, TypeError, ValueError) as e:
        raise ModelCardError(f"{card_file}: {what} ({e})") from e


@dataclass(frozen=True)
class Cascade:
    """``cascade`` of a voxel-classifier card: ``file`` holds the model's first ``trees`` trees
    (``models/lesion/cascade.py`` cuts and calibrates it); voxels where it gives a lesion
    probability below ``min_probability`` keep that probability and skip the whole model.
    ``min_probability`` is chosen on training heads so that no voxel the whole model puts at
    ``safe_probability`` or more is skipped."""

    file: Path
    sha256: str
    trees: int
    min_probability: float
    safe_probability: float

    @classmethod
    def parse(cls, card_file: Path, d: dict) -> Cascade:
        c = _section(
            card_file,
            "cascade needs file, trees, min_probability and safe_probability",
            lambda: cls(
                file=card_file.parent / str(d["file"]),
                sha256=str(d.get("sha256", "")),
                trees=int(d["trees"]),
                min_probability=float(d["min_probability"]),
                safe_probability=float(d["safe_probability"]),
            ),
        )
        if c.trees < 1 or not 0 <= c.min_probability < c.safe_probability < 1:
            raise ModelCardError(
                f"{card_file}: cascade needs trees >= 1 and 0 <= min_probability < safe_probability < 1"
            )
        return c


@dataclass(frozen=True)
class CandidateFilter:
    """``candidate_filter`` of a voxel-classifier card: ``file`` is a classifier over lesion
    candidates (:mod:`openrecon_stroke.lesion_candidates`: components of ``probability >=
    threshold`` whose peak reaches ``seed_probability``), columns ``features`` in that order
    (``models/lesion/candidate_train.py`` trains it on out-of-fold candidates). A candidate it
    gives less than ``min_probability`` (chosen on validation heads) is removed from the map."""

    file: Path
    sha256: str
    features: tuple[str, ...]
    threshold: float
    seed_probability: float
    min_probability: float

    @classmethod
    def parse(cls, card_file: Path, d: dict) -> CandidateFilter:
        f = _section(
            card_file,
            "candidate_filter needs file, features, threshold and min_probability",
            lambda: cls(
                file=card_file.parent / str(d["file"]),
                sha256=str(d.get("sha256", "")),
                features=tuple(str(n) for n in d["features"]),
                threshold=float(d["threshold"]),
                seed_probability=float(d.get("seed_probability") or 0.0),
                min_probability=float(d["min_probability"]),
            ),
        )
        if not (0 < f.threshold < 1 and 0 <= f.seed_probability < 1 and 0 <= f.min_probability < 1):
            raise ModelCardError(
                f"{card_file}: candidate_filter needs 0 < threshold < 1, seed_probability and min_probability in [0, 1)"
            )
        return f

    @property
    def uses_anatomy(self) -> bool:
        """Whether its columns include the features of the head's own anatomy
        (:data:`openrecon_stroke.lesion_candidates.ANATOMY_FEATURES`)."""
        from . import lesion_candidates as lc

        return any(n in lc.ANATOMY_FEATURES for n in self.features)

    def check(self, card: VoxelClassifierCard) -> None:
        """The filter's columns are the candidate features of the card's contrasts, and the card's
        voxel features include those a candidate description reads."""
        from . import lesion_candidates as lc

        want = lc.feature_names(card.inputs, card.features, self.uses_anatomy)
        if list(self.features) != want:
            raise ModelCardError(f"{card.path}: candidate_filter features must be {want}, got {list(self.features)}")
        missing = [k for k in lc.voxel_keys(card.inputs, card.features) if k not in card.features]
        if missing:
            raise ModelCardError(f"{card.path}: candidate_filter needs the voxel features {missing}")


@dataclass(frozen=True)
class EdgeRefinement:
    """``edge_refinement`` of a voxel-classifier card (:func:`openrecon_stroke.lesion_edges.grow_to_edges`):
    each lesion at the card's operating point grows, by at most ``reach_mm``, into voxels of
    ``contrast`` darker than ``edge_fraction`` of the way from its own median intensity to the
    healthy intensity expected there, where that is at least ``min_contrast`` (relative to white
    matter) brighter; never into voxels under ``p_floor``; with ``fill_holes`` what it encloses
    joins it. With ``mirror``, the healthy intensity is also no brighter than the mirrored voxel
    of the other hemisphere (smoothed 2 mm): tissue dark on both sides is not missing tissue."""

    contrast: str = "t1"
    reach_mm: float = 4.5
    edge_fraction: float = 0.5
    min_contrast: float = 0.1
    p_floor: float = 0.0
    fill_holes: bool = True
    mirror: bool = False

    def __post_init__(self):
        problem = None
        if self.contrast not in ("t1", "flair"):
            problem = f"contrast must be t1 or flair, not {self.contrast!r}"
        elif not 0 <= self.reach_mm <= 20:
            problem = "reach_mm must be 0-20"
        elif not 0 < self.edge_fraction < 1:
            problem = "edge_fraction must be in (0, 1)"
        elif not (0 <= self.min_contrast < 1 and 0 <= self.p_floor < 1):
            problem = "min_contrast and p_floor must be in [0, 1)"
        if problem:
            raise ValueError(problem)

    @classmethod
    def parse(cls, card_file: Path, d: dict) -> EdgeRefinement:
        return _section(
            card_file,
            "edge_refinement needs contrast, reach_mm, edge_fraction, min_contrast, p_floor and fill_holes",
            lambda: cls(
                contrast=str(d["contrast"]),
                reach_mm=float(d["reach_mm"]),
                edge_fraction=float(d["edge_fraction"]),
                min_contrast=float(d["min_contrast"]),
                p_floor=float(d["p_floor"]),
                fill_holes=bool(d["fill_holes"]),
                mirror=bool(d.get("mirror", False)),
            ),
        )


#: Where an image's CSF level is measured for the normative model's standardisation (card
#: ``csf_measured_in``, :func:`openrecon_stroke.normative.csf_relative`): every voxel the template
#: calls CSF (``brain``; on a brain skull-stripped by another tool that includes its cut edge),
#: or the template's lateral ventricles carried onto it.
CSF_PLACES = ("brain", "lateral_ventricles")


@dataclass(frozen=True, kw_only=True)
class NormativeCard(Card):
    """Healthy-brain statistics in template space (:mod:`openrecon_stroke.normative`):
    ``contrasts``, the template grid (``spacing_mm``, full ``shape`` (z, y, x) and the ``box``
    the files hold), the anomaly score's ``smoothing_mm`` and ``calibration`` (contrast
    combination -> raw score of the 99.9th percentile in held-out healthy brains), the healthy
    ``ventricle_ml`` range (mean, std), ``jacobian`` (spacing_mm, shape, box of
    ``jacobian.npz``) when built, the contrasts with left-right difference statistics
    (``asymmetry``; their files ``<contrast>_mirror.npz`` must be listed), and per contrast the
    healthy CSF intensity relative to white matter that images are standardised to
    (``csf_reference``, between 0 and 1) and where an image's own CSF level is measured for that
    (``csf_measured_in``: ``brain`` or ``lateral_ventricles``), or the contrasts whose CSF, grey and
    white matter are put on fixed levels instead (``tissue_standardised``), the contrasts whose
    score counts only what is darker than healthy (``darker_only``), and whether the score leaves
    out this head's own lateral ventricles where left-right symmetric (``ventricles_apart``)."""

    kind: ClassVar[str] = "normative"

    contrasts: tuple[str, ...]
    spacing_mm: float
    shape: tuple[int, int, int]
    box: tuple[tuple[int, int], ...]
    smoothing_mm: float = 2.0
    calibration: dict = field(default_factory=dict)
    ventricle_ml: dict = field(default_factory=dict)
    jacobian: dict | None = None
    asymmetry: tuple[str, ...] = ()
    #: contrast -> healthy brains' CSF intensity relative to their white matter, to which each
    #: image is standardised (:func:`openrecon_stroke.normative.standardise`); absent: not done
    csf_reference: dict = field(default_factory=dict)
    #: where each image's own CSF level is measured (one of :data:`CSF_PLACES`)
    csf_measured_in: str = "brain"
    #: contrasts standardised by :func:`openrecon_stroke.voxel_features.tissue_standardised`
    #: (the brain's CSF, grey and white matter on fixed levels) instead of the CSF reference
    tissue_standardised: tuple[str, ...] = ()
    #: contrasts whose anomaly score counts only what is darker than healthy
    #: (:func:`openrecon_stroke.normative.anomaly_score`)
    darker_only: tuple[str, ...] = ()
    #: the score is 0 in this head's lateral ventricles as measured on its image, where they are
    #: left-right symmetric (:func:`openrecon_stroke.normative.ventricles_apart`): their size is
    #: the ventricle measure's
    ventricles_apart: bool = False

    def __post_init__(self):
        super().__post_init__()
        if not self.contrasts or any(c not in ("t1", "flair") for c in self.contrasts):
            raise ModelCardError(f"{self.path}: contrasts must be among t1, flair; got {self.contrasts}")
        for c, v in self.csf_reference.items():
            if c not in self.contrasts or not 0.0 < float(v) < 1.0:
                raise ModelCardError(
                    f"{self.path}: csf_reference needs known contrasts and values between 0 and 1 "
                    f"(CSF darker than white matter); got {c}: {v}"
                )
        both = set(self.tissue_standardised) & set(self.csf_reference)
        if any(c not in self.contrasts for c in self.tissue_standardised) or both:
            raise ModelCardError(
                f"{self.path}: tissue_standardised needs known contrasts, none also in csf_reference; "
                f"got {list(self.tissue_standardised)}"
            )
        if any(c not in self.contrasts for c in self.darker_only):
            raise ModelCardError(f"{self.path}: darker_only needs known contrasts; got {list(self.darker_only)}")
        if not isinstance(self.ventricles_apart, bool):
            raise ModelCardError(f"{self.path}: ventricles_apart must be true or false, not {self.ventricles_apart!r}")
        if self.csf_measured_in not in CSF_PLACES:
            raise ModelCardError(
                f"{self.path}: csf_measured_in must be one of {', '.join(CSF_PLACES)}, not {self.csf_measured_in!r}"
            )
        listed = {f.name for f in self.files}
        for c in self.asymmetry:
            if c not in self.contrasts or f"{c}_mirror.npz" not in listed:
                raise ModelCardError(
                    f"{self.path}: asymmetry statistics of {c!r} need the contrast and its file {c}_mirror.npz listed"
                )
        if (
            len(self.shape) != 3
            or len(self.box) != 3
            or any(not 0 <= a < b <= n for (a, b), n in zip(self.box, self.shape))
        ):
            raise ModelCardError(f"{self.path}: box must be three [start, stop) ranges inside shape")
        bad = [k for k in self.calibration if any(c not in self.contrasts for c in k.split("+"))]
        if bad or any(float(v) <= 0 for v in self.calibration.values()):
            raise ModelCardError(f"{self.path}: calibration needs positive scores for known contrasts ({bad})")

    @classmethod
    def parse(cls, common, d):
        jac = d.get("jacobian")
        return cls(
            **common,
            contrasts=tuple(d["contrasts"]),
            spacing_mm=float(d["template"]["spacing_mm"]),
            shape=_ints3(d["shape"]),
            box=tuple((int(a), int(b)) for a, b in d["box"]),
            smoothing_mm=float(d.get("smoothing_mm", 2.0)),
            calibration={str(k): float(v) for k, v in d.get("calibration", {}).items()},
            ventricle_ml=dict(d.get("ventricle_ml", {})),
            asymmetry=tuple(d.get("asymmetry", ())),
            csf_reference={str(k): float(v) for k, v in d.get("csf_reference", {}).items()},
            csf_measured_in=str(d.get("csf_measured_in", "brain")),
            tissue_standardised=tuple(d.get("tissue_standardised", ())),
            darker_only=tuple(str(c) for c in d.get("darker_only", ())),
            ventricles_apart=d.get("ventricles_apart", False),
            jacobian=None
            if jac is None
            else {
                "spacing_mm": float(jac["spacing_mm"]),
                "shape": _ints3(jac["shape"]),
                "box": tuple((int(a), int(b)) for a, b in jac["box"]),
            },
        )


@dataclass(frozen=True)
class CropToHead:
    """HD-BET speed-up: run the network on the head's bounding box only (see
    :meth:`openrecon_stroke.brain_extraction.BrainExtractor.head_box`)."""

    enabled: bool = False
    threshold_fraction_of_p99: float = 0.1
    margin_mm: float = 12.0
    min_shape: tuple[int, int, int] | None = None


@dataclass(frozen=True, kw_only=True)
class BrainExtractionCard(Card):
    """HD-BET's folds and recipe (:mod:`openrecon_stroke.brain_extraction`)."""

    kind: ClassVar[str] = "brain_extraction"

    #: network grid: voxel size (x, y, z mm) and axis directions (3x3, columns, LPS)
    spacing_mm: tuple[float, float, float]
    direction_lps: tuple[tuple[float, ...], ...]
    channel: int
    pad_divisible_by: int
    pad_min_shape: tuple[int, int, int] | None
    pad_value: float
    crop: CropToHead
    mirror_axes: tuple[int, ...]
    threshold: float
    resample_image: str
    mask_back: str
    postprocess: str
    #: mode -> (folds: a count or "all", mirroring, network grid spacing in mm or None = the card
    #: grid, largest spacing in mm to which an axis may grow where that shrinks the padded input
    #: or None)
    modes: dict

    @classmethod
    def parse(cls, common, d):
        pad, crop, res = d["padding"], d.get("crop_to_head") or {}, d.get("resampling", {})
        modes = d.get("modes") or {"fast": {"folds": 1, "tta": False}, "accurate": {"folds": "all", "tta": True}}
        return cls(
            **common,
            spacing_mm=_floats3(d["grid"]["spacing_mm"]),
            direction_lps=tuple(tuple(float(v) for v in row) for row in d["grid"]["direction_lps"]),
            channel=int(d["output"].get("channel", 0)),
            pad_divisible_by=int(pad["divisible_by"]),
            pad_min_shape=_ints3(pad["min_shape"]) if pad.get("min_shape") else None,
            pad_value=float(d["normalisation"].get("pad_value", 0.0)),
            crop=CropToHead(
                enabled=bool(crop.get("enabled")),
                threshold_fraction_of_p99=float(crop.get("threshold_fraction_of_p99", 0.1)),
                margin_mm=float(crop.get("margin_mm", 12.0)),
                min_shape=_ints3(crop["min_shape"]) if crop.get("min_shape") else None,
            ),
            mirror_axes=tuple(int(a) for a in d["mirror_axes"]),
            threshold=float(d.get("threshold", 0.5)),
            resample_image=str(res.get("image", "bspline3")),
            mask_back=str(res.get("mask_back", "linear_probability")),
            postprocess=str(d.get("postprocess", "")),
            modes={
                str(k): (
                    v["folds"] if v["folds"] == "all" else int(v["folds"]),
                    bool(v["tta"]),
                    _positive(v["spacing_mm"], f"modes.{k}.spacing_mm") if v.get("spacing_mm") is not None else None,
                    _positive(v["fit_spacing_max_mm"], f"modes.{k}.fit_spacing_max_mm")
                    if v.get("fit_spacing_max_mm") is not None
                    else None,
                )
                for k, v in modes.items()
            },
        )

    def session_options(self) -> dict:
        # activations of a whole head are ~1.5 GB: no arena kept per fold; int8 weights folded;
        # the 3-D convolutions on OpenVINO where this ONNX Runtime has it (runtime.ort_session)
        return {"low_memory": True, "fold_weights": True, "openvino": True}


#: ``kind`` -> card class (one entry per model family)
CARD_KINDS: dict[str, type[Card]] = {
    c.kind: c for c in (ModelCard, AnomalyCard, BrainExtractionCard, VoxelClassifierCard, NormativeCard)
}


def _floats3(v) -> tuple[float, float, float]:
    a, b, c = (float(x) for x in v)
    return a, b, c


def _positive(v, what: str) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a positive number of mm, got {v!r}") from None
    if not (np.isfinite(x) and x > 0):
        raise ValueError(f"{what} must be a positive number of mm, got {v!r}")
    return x


def _ints3(v) -> tuple[int, int, int]:
    a, b, c = (int(x) for x in v)
    return a, b, c


def _infer_kind(d: dict) -> str:
    if "contrast_flag" in d:
        return "anomaly"
    if "grid" in d and "padding" in d:
        return "brain_extraction"
    return "segmentation"


def load_card(path: str | Path, kind: str | None = None, *, verify: bool = True) -> Card:
    """The card of a model folder (its ``card.json``) or a card file.

    Args:
        kind: the family expected (a card of another family is refused); None: the card's own
            ``kind``, else the family its keys show.
        verify: check that every model file exists and matches its sha256.

    Raises:
        ModelCardError: naming the card file and what is wrong with it.
    """
    card_file, d = read_card_json(path)
    if not isinstance(d, dict):
        raise ModelCardError(f"{card_file} is not a JSON object")
    stated = d.get("kind")
    family = str(stated or kind or _infer_kind(d))
    if kind is not None and family != kind:
        raise ModelCardError(f"{card_file} is a model card of kind {family!r}, not {kind!r}")
    cls = CARD_KINDS.get(family)
    if cls is None:
        raise ModelCardError(f"{card_file}: unknown model kind {family!r} (known: {', '.join(CARD_KINDS)})")
    try:
        entries = d["files"] if "files" in d else [{"file": d["file"], "sha256": d.get("sha256", "")}]
        common = dict(
            path=card_file,
            name=str(d["name"]),
            version=str(d["version"]),
            files=tuple(card_file.parent / str(f["file"]) for f in entries),
            sha256=tuple(str(f.get("sha256", "")) for f in entries),
            status=str(d.get("status", cls.default_status)),
            status_note=str(d.get("status_note", "")),
            raw=d,
        )
        card = cls.parse(common, d)
    except ModelCardError:
        raise
    except KeyError as e:
        raise ModelCardError(f"{card_file}: malformed {family} model card: it lacks the required key {e}") from None
    except (TypeError, ValueError, AttributeError) as e:
        raise ModelCardError(f"{card_file}: malformed {family} model card: a value is malformed ({e})") from None
    if verify:
        card.verify_files()
    return card


def read_card_json(path: str | Path) -> tuple[Path, Any]:
    """``(card file, its content)`` for a model folder (its ``card.json``) or a card file; a
    missing or unreadable card raises :class:`ModelCardError` naming the file."""
    path = Path(path)
    card_file = path / "card.json" if path.is_dir() else path
    try:
        return card_file, json.loads(card_file.read_text())
    except FileNotFoundError:
        raise ModelCardError(f"no model card at {card_file}") from None
    except json.JSONDecodeError as e:
        raise ModelCardError(f"{card_file} is not valid JSON ({e})") from None


def verify_model_file(file: Path, sha256: str, card_file: Path) -> None:
    """The model file listed in ``card_file`` exists and, when the card gives one, matches its sha256."""
    if not file.is_file():
        raise ModelCardError(f"model file {file} listed in {card_file} is missing")
    if sha256 and file_sha256(file) != sha256:
        raise ModelCardError(
            f"model file {file} does not match its sha256 in {card_file} "
            "(damaged or replaced; rebuild it with the command in the model card)"
        )
