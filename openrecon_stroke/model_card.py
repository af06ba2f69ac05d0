"""Model cards: a segmentation model is ONNX files plus this description, not code.

A card is ``card.json`` beside the ONNX files. Required keys (validated on load, so that a
wrong card cannot be built):

* ``name``, ``version``: shown on the report;
* ``inputs``: contrasts in channel order, e.g. ``["t1", "flair"]``;
* ``spacing_mm``: network voxel size (x, y, z) in mm; ``orientation``: voxel axis directions of
  the network grid as an ITK code, ``"RAS"`` (x towards patient Right, y Anterior, z Superior);
* ``normalisation``: ``"zscore_brain"`` (each channel minus its mean, over its standard deviation,
  inside the brain mask; 0 outside) or ``"zscore"`` (whole volume);
* ``patch_size``: (z, y, x) voxels of one network input;
* ``output``: ``{"activation": "softmax"|"sigmoid"|"probability", "channel": k}``, the lesion class;
* ``files``: ``[{"file": "fold0.onnx", "sha256": "..."}]``, one per fold (ensembled by mean);
* ``threshold`` (probability, default 0.2), ``min_lesion_mm3`` (default 10);
* optional ``size_divisor`` and ``max_window_voxels``: the network is fully convolutional and
  takes any (z, y, x) size divisible by ``size_divisor``; a volume (the brain box) of at most
  ``max_window_voxels`` once rounded up is then predicted in one window of its own size instead
  of sliding ``patch_size`` windows over it (for a network whose output does not depend on the
  window, e.g. batch norm with running statistics: the same map without overlap or padding work);
* optional ``overlap`` (0-0.9, default 0.5), ``mirror_axes`` (default none), ``margin_mm``,
  ``status`` ("validated" / "experimental": an experimental model is flagged on every report)
  and ``status_note``.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Generic, Sequence, TypeVar

import numpy as np

T = TypeVar("T")

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


@dataclass(frozen=True)
class ModelCard:
    path: Path
    name: str
    version: str
    inputs: tuple[str, ...]
    spacing_mm: tuple[float, float, float]
    orientation: str
    normalisation: str
    patch_size: tuple[int, int, int]
    activation: str
    channel: int
    files: tuple[Path, ...]
    sha256: tuple[str, ...]
    threshold: float = 0.2
    min_lesion_mm3: float = 10.0
    overlap: float = 0.5
    mirror_axes: tuple[int, ...] = ()
    margin_mm: float = 8.0
    size_divisor: int = 0
    max_window_voxels: int = 0
    #: optional: "validated" or "experimental" (then every report using it says so), and why
    status: str = ""
    status_note: str = ""

    def __post_init__(self):
        if not self.inputs or any(c not in ("t1", "flair") for c in self.inputs):
            raise ModelCardError(f"{self.path}: inputs must be contrasts among t1, flair; got {self.inputs}")
        if len(self.spacing_mm) != 3 or min(self.spacing_mm) <= 0:
            raise ModelCardError(f"{self.path}: spacing_mm must be three positive numbers")
        if len(self.patch_size) != 3 or min(self.patch_size) < 8:
            raise ModelCardError(f"{self.path}: patch_size must be three sizes >= 8")
        if self.activation not in ACTIVATIONS:
            raise ModelCardError(f"{self.path}: output activation must be one of {ACTIVATIONS}")
        if self.normalisation not in NORMALISATIONS:
            raise ModelCardError(f"{self.path}: normalisation must be one of {NORMALISATIONS}")
        if not 0 < self.threshold < 1:
            raise ModelCardError(f"{self.path}: threshold must be in (0, 1)")
        if not 0 <= self.overlap < 0.95:
            raise ModelCardError(f"{self.path}: overlap must be in [0, 0.95)")
        if not self.files:
            raise ModelCardError(f"{self.path}: no model files listed")
        if any(a not in (0, 1, 2) for a in self.mirror_axes):
            raise ModelCardError(f"{self.path}: mirror_axes are spatial axes 0, 1, 2")
        if self.size_divisor < 0 or self.max_window_voxels < 0 or (self.max_window_voxels and not self.size_divisor):
            raise ModelCardError(f"{self.path}: max_window_voxels needs a size_divisor (both >= 1)")
        if len(self.orientation) != 3:
            raise ModelCardError(f"{self.path}: orientation must be a 3-letter code such as RAS")

    @staticmethod
    def load(path: str | Path, verify: bool = True) -> "ModelCard":
        card_file, d = read_card_json(path)
        try:
            files = tuple(card_file.parent / f["file"] for f in d["files"])
            sums = tuple(str(f.get("sha256", "")) for f in d["files"])
            out = d["output"]
            card = ModelCard(
                path=card_file, name=str(d["name"]), version=str(d["version"]),
                inputs=tuple(d["inputs"]), spacing_mm=tuple(float(v) for v in d["spacing_mm"]),
                orientation=str(d.get("orientation", "RAS")), normalisation=str(d["normalisation"]),
                patch_size=tuple(int(v) for v in d["patch_size"]), activation=str(out["activation"]),
                channel=int(out["channel"]), files=files, sha256=sums,
                threshold=float(d.get("threshold", 0.2)), min_lesion_mm3=float(d.get("min_lesion_mm3", 10.0)),
                overlap=float(d.get("overlap", 0.5)), mirror_axes=tuple(int(a) for a in d.get("mirror_axes", ())),
                margin_mm=float(d.get("margin_mm", 8.0)),
                size_divisor=int(d.get("size_divisor", 0)), max_window_voxels=int(d.get("max_window_voxels", 0)),
                status=str(d.get("status", "")), status_note=str(d.get("status_note", "")),
            )
        except KeyError as e:
            raise ModelCardError(f"{card_file} lacks the required key {e}") from None
        except (TypeError, ValueError) as e:
            if isinstance(e, ModelCardError):
                raise
            raise ModelCardError(f"{card_file} has a malformed value ({e})") from None
        if verify:
            card.verify_files()
        return card

    def window_for(self, shape_zyx) -> tuple[int, int, int]:
        """The network window for a (z, y, x) volume: the volume itself rounded up to
        ``size_divisor`` when the card allows whole-volume windows and that has at most
        ``max_window_voxels``; otherwise ``patch_size`` (slid over the volume)."""
        if self.size_divisor and self.max_window_voxels:
            k = self.size_divisor
            whole = tuple(int(-(-int(n) // k) * k) for n in shape_zyx)
            if int(np.prod(whole)) <= self.max_window_voxels:
                return whole
        return self.patch_size

    def verify_files(self):
        for f, s in zip(self.files, self.sha256):
            verify_model_file(f, s, self.path)


def read_card_json(path: str | Path) -> tuple[Path, dict]:
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
        raise ModelCardError(f"model file {file} does not match its sha256 in {card_file} "
                             "(damaged or replaced; rebuild it with the command in the model card)")


# --- loading, shared by every ONNX model family (lesion, anomaly) ---------------------------

def ort_session(path: str | Path):
    """An ONNX Runtime CPU session for one model file: all graph optimisations, intra-op threads
    = physical cores (what a 2-core scanner host gives us), one inter-op thread."""
    import onnxruntime as ort

    from .brain_extraction import physical_cores

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = physical_cores()
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


class LazySessions:
    """ONNX Runtime sessions for a list of model files (e.g. the folds of an ensemble), created
    together on first use and then shared by every thread."""

    def __init__(self, files: Sequence[str | Path]):
        self.files = tuple(Path(f) for f in files)
        self._sessions: list | None = None
        self._lock = threading.Lock()

    def get(self) -> list:
        with self._lock:
            if self._sessions is None:
                self._sessions = [ort_session(f) for f in self.files]
            return self._sessions


class FolderCache(Generic[T]):
    """Process-wide cache of one loaded model per model folder: ``get(folder)`` builds it with
    ``factory(folder)`` the first time (card read and checked once) and returns the same object
    afterwards, from any thread."""

    def __init__(self, factory: Callable[[Path], T]):
        self._factory = factory
        self._items: dict[Path, T] = {}
        self._lock = threading.Lock()

    def get(self, folder: str | Path) -> T:
        folder = Path(folder)
        with self._lock:
            item = self._items.get(folder)
            if item is None:
                item = self._items[folder] = self._factory(folder)
            return item

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
