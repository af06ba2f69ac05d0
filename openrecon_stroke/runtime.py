"""Where models live and how they run: the models folder, ONNX Runtime sessions and threads.

One place for what every network (HD-BET, lesion, anomaly, imported nnU-Net models) shares:

* :func:`models_dir` / :func:`model_folder`: ``OPENRECON_MODELS_DIR`` (set in the container
  image to ``/opt/openrecon-stroke/models``), else the repository's ``models/`` beside the
  package; each family may be pointed elsewhere by its own variable (``OPENRECON_HDBET_DIR``,
  ``OPENRECON_LESION_DIR``, ``OPENRECON_ANOMALY_DIR``), read at call time so tests may set them;
* :func:`ort_session`: CPU sessions with all graph optimisations, intra-op threads = physical
  cores (what a 2-core scanner host gives us; ``OPENRECON_THREADS`` caps it, see
  :func:`study_threads`), one inter-op thread; HD-BET's convolutions on ONNX Runtime's OpenVINO
  execution provider where the installed ONNX Runtime has it (the ``onnxruntime-openvino`` build,
  an option on x86-64: see ``models/hdbet/MODEL_CARD.md``), else on its own CPU kernels;
* :class:`LazySessions`, :class:`ModelCache`: sessions created on first use and one loaded model
  per folder, shared by every thread of the server;
* :func:`flush_denormals`: denormal floats treated as zero on the calling thread and every thread
  it starts afterwards (each entry point and every pipeline run calls it).

Nothing here downloads anything: a missing model is an error that names the folder.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform
import threading
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

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


class _FenvX86_64(ctypes.Structure):
    """glibc's ``fenv_t`` on x86-64: the x87 environment (28 bytes), then SSE's MXCSR."""

    _fields_ = [("x87", ctypes.c_ushort * 14), ("mxcsr", ctypes.c_uint)]


class _FenvAarch64(ctypes.Structure):
    """glibc's ``fenv_t`` on AArch64: the FP control and status registers."""

    _fields_ = [("fpcr", ctypes.c_uint), ("fpsr", ctypes.c_uint)]


#: MXCSR flush-to-zero (bit 15) and denormals-are-zero (bit 6); AArch64 FPCR flush-to-zero (bit 24)
_MXCSR_FTZ_DAZ = 0x8040
_FPCR_FZ = 1 << 24


def flush_denormals() -> bool:
    """Treat denormal floats (below 1.2e-38 in float32) as zero on the calling thread: results
    that would be denormal become 0 (flush to zero) and denormal inputs are read as 0. Threads
    started afterwards by this thread inherit it (POSIX: a new thread copies its creator's
    floating-point environment), so entry points call it first thing; every pipeline run calls it
    again on its own thread. Returns whether it is on (False: neither x86-64 nor AArch64 Linux
    with glibc, nothing changed).

    Why: on Intel Xeons every arithmetic operation on a denormal takes a slow microcode path
    (about 100 cycles). HD-BET's activations decay into denormals in the zero-padded background,
    and one 3x3x3 convolution then took 19.5 s instead of 0.8 s (a whole pass 38 s against 5.3 s,
    Xeon with AVX-512, ONNX Runtime 1.32, 2026-12-02; an AMD EPYC showed no difference). Values
    this small carry no information for any stage: the outputs are unchanged (the brain and
    lesion masks of the demo study and two real heads, voxel for voxel)."""
    machine = platform.machine().lower()
    fenv: ctypes.Structure
    if machine in ("x86_64", "amd64"):
        fenv, field, bits = _FenvX86_64(), "mxcsr", _MXCSR_FTZ_DAZ
    elif machine in ("aarch64", "arm64"):
        fenv, field, bits = _FenvAarch64(), "fpcr", _FPCR_FZ
    else:
        return False
    name = ctypes.util.find_library("m")
    if name is None or platform.system() != "Linux":
        return False
    try:
        libm = ctypes.CDLL(name)
        if libm.fegetenv(ctypes.byref(fenv)) != 0:
            return False
        if getattr(fenv, field) & bits != bits:
            setattr(fenv, field, getattr(fenv, field) | bits)
            if libm.fesetenv(ctypes.byref(fenv)) != 0:
                return False
            libm.fegetenv(ctypes.byref(fenv))
        return getattr(fenv, field) & bits == bits
    except (OSError, AttributeError):  # pragma: no cover - a libm without fegetenv
        return False


#: Environment variable: "cpu" keeps every session on ONNX Runtime's own CPU kernels (no OpenVINO).
PROVIDER_ENV = "OPENRECON_ORT_PROVIDER"


def openvino_available() -> bool:
    """Whether the installed ONNX Runtime has the OpenVINO execution provider (and
    ``OPENRECON_ORT_PROVIDER`` does not say "cpu")."""
    import onnxruntime as ort

    if os.environ.get(PROVIDER_ENV, "").strip().lower() == "cpu":
        return False
    return "OpenVINOExecutionProvider" in ort.get_available_providers()


def ort_session(
    path: str | Path | bytes,
    *,
    threads: int | None = None,
    low_memory: bool = False,
    fold_weights: bool = False,
    openvino: bool = False,
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
        openvino: run on the OpenVINO execution provider (CPU device, fp32 inference precision,
            ``threads`` threads) where :func:`openvino_available`, else as without it. For 3-D
            convolution networks: HD-BET's pass 3.5 s instead of 5.2 s on an Intel Xeon, its
            probability within 0.02 of the CPU kernels' and its mask at Dice 0.99998
            (``models/hdbet/MODEL_CARD.md``). A session OpenVINO cannot build falls back to the
            CPU kernels, with a warning.
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
    # the session's own threads too (see flush_denormals)
    so.add_session_config_entry("session.set_denormal_as_zero", "1")
    model = path if isinstance(path, bytes) else str(path)
    if openvino and openvino_available():
        options = {"device_type": "CPU", "precision": "FP32", "num_of_threads": str(so.intra_op_num_threads)}
        try:
            return ort.InferenceSession(
                model, so, providers=[("OpenVINOExecutionProvider", options), "CPUExecutionProvider"]
            )
        except Exception as e:  # noqa: BLE001 - any failure to build: the CPU kernels still work
            log.warning("OpenVINO could not run %s (%s); ONNX Runtime's CPU kernels are used", _name(path), e)
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def _name(path: str | Path | bytes) -> str:
    return "a serialised model" if isinstance(path, bytes) else Path(path).name


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
