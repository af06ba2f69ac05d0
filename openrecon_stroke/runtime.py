"""Where models live and how they run: the models folder, ONNX Runtime sessions and threads.

One place for what every network (HD-BET, lesion, anomaly, imported nnU-Net models) shares:

* :func:`models_dir` / :func:`model_folder`: ``OPENRECON_MODELS_DIR`` (set in the container
  image to ``/opt/openrecon-stroke/models``), else the repository's ``models/`` beside the
  package; each family may be pointed elsewhere by its own variable (``OPENRECON_HDBET_DIR``,
  ``OPENRECON_LESION_DIR``, ``OPENRECON_ANOMALY_DIR``), read at call time so tests may set them;
* :func:`ort_session`: CPU sessions with all graph optimisations, intra-op threads = physical
  cores (what a 2-core scanner host gives us; ``OPENRECON_THREADS`` caps it, see
  :func:`study_threads`), one inter-op thread;
* :class:`LazySessions`, :class:`ModelCache`: sessions created on first use and one loaded model
  per folder, shared by every thread of the server.

Nothing here downloads anything: a missing model is an error that names the folder.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")

#: ``models/`` of the source tree this package was imported from.
REPO_MODELS_DIR = Path(__file__).resolve().parents[1] / "models"

#: model family -> (sub-folder of the models folder, environment variable that overrides it)
FAMILIES = {
    "hdbet": ("hdbet", "OPENRECON_HDBET_DIR"),
    "lesion": ("lesion", "OPENRECON_LESION_DIR"),
    "anomaly": ("anomaly", "OPENRECON_ANOMALY_DIR"),
    "normative": ("normative", "OPENRECON_NORMATIVE_DIR"),
}


def models_dir() -> Path:
    """The folder holding every model sub-folder."""
    env = os.environ.get("OPENRECON_MODELS_DIR")
    return Path(env) if env else REPO_MODELS_DIR


def model_folder(family: str) -> Path:
    """The folder of one model family (a key of :data:`FAMILIES`): its own environment
    variable, else ``models_dir() / <sub-folder>``."""
    sub, env = FAMILIES[family]
    return Path(os.environ.get(env) or models_dir() / sub)


def physical_cores() -> int:
    """Physical cores available to this process (SMT siblings counted once)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, (os.cpu_count() or 2) // 2)
    cores = set()
    for c in cpus:
        base = Path(f"/sys/devices/system/cpu/cpu{c}/topology")
        try:
            cores.add(
                (base.joinpath("physical_package_id").read_text().strip(), base.joinpath("core_id").read_text().strip())
            )
        except OSError:
            cores.add(("?", str(c)))
    return max(1, len(cores))


#: Environment variable capping the threads one study uses (ONNX Runtime intra-op threads).
THREADS_ENV = "OPENRECON_THREADS"


def study_threads() -> int:
    """Threads one study may use: ``OPENRECON_THREADS`` when set (the cohort batch sets it on each
    worker so that several workers on one machine do not oversubscribe its cores), else
    :func:`physical_cores`. A value that is not a whole number >= 1 is ignored."""
    v = os.environ.get(THREADS_ENV, "").strip()
    if v.isdigit() and int(v) >= 1:
        return int(v)
    return physical_cores()


def ort_session(
    path: str | Path | bytes, *, threads: int | None = None, low_memory: bool = False, fold_weights: bool = False
) -> Any:
    """An ONNX Runtime CPU session for one model file (or a serialised model, as bytes).

    Args:
        threads: intra-op threads (default: :func:`study_threads`).
        low_memory: no per-session memory arena, so that large activations (~1.5 GB for HD-BET
            on a head) go back to the OS after each run instead of staying reserved by every
            session; ``OPENRECON_ORT_ARENA=1`` keeps the arena.
        fold_weights: let constant folding turn stored int8/fp16 weights (QDQ) back into fp32
            constants once, at load time, so that Conv can pre-pack them (no per-run
            de-quantisation).
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads or study_threads()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if low_memory:
        so.enable_cpu_mem_arena = bool(int(os.environ.get("OPENRECON_ORT_ARENA", "0")))
    if fold_weights:
        so.add_session_config_entry("session.disable_quant_qdq", "1")
    return ort.InferenceSession(path if isinstance(path, bytes) else str(path), so, providers=["CPUExecutionProvider"])


class LazySessions:
    """ONNX Runtime sessions for a list of model files (e.g. the folds of an ensemble), each
    created on first use (with ``options`` of :func:`ort_session`) and then shared by every
    thread."""

    def __init__(self, files: Sequence[str | Path], **options: Any):
        self.files = tuple(Path(f) for f in files)
        self.options = options
        self._sessions: dict[int, Any] = {}
        self._lock = threading.Lock()

    def session(self, i: int) -> Any:
        with self._lock:
            if i not in self._sessions:
                self._sessions[i] = ort_session(self.files[i], **self.options)
            return self._sessions[i]

    def all(self) -> list:
        return [self.session(i) for i in range(len(self.files))]


class ModelCache(Generic[K, T]):
    """Process-wide cache of loaded models: ``get(key)`` builds one with ``factory(key)`` the
    first time (for a model folder: card read and checked once) and returns the same object
    afterwards, from any thread."""

    def __init__(self, factory: Callable[[K], T]):
        self._factory = factory
        self._items: dict[K, T] = {}
        self._lock = threading.Lock()

    def get(self, key: K) -> T:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                item = self._items[key] = self._factory(key)
            return item

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
