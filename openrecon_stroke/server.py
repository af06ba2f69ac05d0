"""The MRD server: one thread per connection, each connection isolated.

Data path of one connection (read top to bottom):

1. :meth:`Connection.receive` reads config, XML header, UI parameters, images / raw readouts
   until CLOSE (bounded sizes, idle timeout), optionally saving the stream to a file.
2. :meth:`Connection.respond` reconstructs raw data, sends the originals back first, assembles
   volumes, runs the selected pipeline, sends derived series and a text report, then CLOSE.

Errors never escape a connection: each becomes an MRD TEXT message and a log line, the
originals received so far still go back, and the server keeps serving.

Only the wire is MRD-specific: :meth:`Connection.make_reader` (decoding) and
:meth:`Connection.make_reply` (a :class:`Reply`: how images and sentences go back). The
Gadgetron gadget (:mod:`openrecon_stroke.gadgetron_gadget`) is a :class:`Connection` with its
own reader and reply, and everything after the wire is this module's.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import socket
import socketserver
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol

from . import APP_NAME
from .assembly import assemble_study
from .kspace import reconstruct
from .mrdfile import StreamFileWriter, parse_header
from .outputs import derived_images, original_images, report_text
from .params import Params, coerce, parse_parameter_text
from .pipeline import build_pipeline, resolve_pipeline_name
from .pipeline import warm_up as warm_up_pipeline
from .protocol import Limits, MessageId, MessageReader, MessageWriter, ProtocolError, SocketReader, StreamClosed
from .study import DerivedSeries, Study
from .study_cache import StudyCache

log = logging.getLogger(__name__)
_ids = itertools.count(1)

#: where ``serve`` and ``gadget`` keep preprocessed series for the other contrast of a study
DEFAULT_CACHE_DIR = Path(tempfile.gettempdir()) / "openrecon-stroke-cache"


@dataclass(frozen=True)
class ServerSettings:
    limits: Limits = Limits()
    #: Seconds without a byte from the scanner before the connection is given up.
    idle_timeout_s: float = 600.0
    #: Connections processed at once (each pipeline run needs memory); others wait.
    max_parallel: int = 2
    save_dir: Path | None = None
    #: where preprocessed series wait for the other contrast of their study (None: no cache)
    cache_dir: Path | None = None
    cache_ttl_s: float = 2 * 3600
    #: also write what was sent back as DICOM, one sub-folder per connection (None: do not)
    dicom_dir: Path | None = None


@dataclass
class Incoming:
    """What one connection delivered."""

    config: str | None = None
    header_xml: str | None = None
    header: object = None
    raw_params: dict | None = None
    #: images to analyse (ismrmrd.Image)
    images: list = field(default_factory=list)
    #: what goes back unchanged, in arrival order (the images themselves, or the wire's own
    #: containers they came in, e.g. Gadgetron image arrays)
    originals: list = field(default_factory=list)
    acquisitions: list = field(default_factory=list)
    texts: list = field(default_factory=list)
    waveforms: int = 0
    error: str | None = None  # why reading stopped early, if it did
    closed_cleanly: bool = False

    @property
    def empty(self) -> bool:
        return not self.images and not self.acquisitions


class Reply(Protocol):
    """How one connection answers: the wire's half of :meth:`Connection.respond`."""

    sent_images: int

    def original(self, item) -> None:
        """An item of :attr:`Incoming.originals`, returned unchanged."""

    def image(self, img) -> None:
        """A derived image (ismrmrd.Image)."""

    def text(self, text: str) -> None:
        """A sentence for the user (a warning, an error, the text report)."""

    def close(self) -> None:
        """The end of the answer."""


class MrdReply(MessageWriter):
    """The MRD answer: originals and derived images as IMAGE messages, sentences as TEXT."""

    def original(self, item) -> None:
        self.image(item)


class Connection:
    """One connection: decode (:meth:`receive`), process and answer (:meth:`respond`)."""

    #: close the socket when done (False where another owner closes it)
    owns_socket = True
    #: who sends the stream, in messages
    peer_name = "scanner"

    def __init__(
        self,
        sock: socket.socket,
        peer,
        settings: ServerSettings,
        gate: threading.Semaphore,
        stats: collections.deque | None = None,
        cache: StudyCache | None = None,
    ):
        self.id = next(_ids)
        self.phases_s: dict[str, float] = {}
        self.t_received = 0.0  # perf_counter() when the last message arrived
        self.stats = stats
        self.cache = cache
        self.sock = sock
        self.peer = peer
        self.settings = settings
        self.gate = gate
        self.log = logging.LoggerAdapter(log, {"conn": self.id})
        self.writer: Reply = self.make_reply()
        self.saver: StreamFileWriter | None = None
        #: (study, params) to write as DICOM once the scanner has its answer
        self.pending_dicom: tuple[Study, Params] | None = None

    # -- the wire ------------------------------------------------------------------------------
    def make_reader(self) -> MessageReader:
        return MessageReader(SocketReader(self.sock), self.settings.limits)

    def make_reply(self) -> Reply:
        return MrdReply(self.sock)

    # -- helpers ---------------------------------------------------------------------------
    def info(self, msg, *args):
        self.log.info(f"[conn {self.id}] " + msg, *args)

    def tell(self, level: str, text: str):
        """A TEXT message to the scanner and the same line in the log."""
        getattr(self.log, level.lower() if level != "ERROR" else "error")(f"[conn {self.id}] {text}")
        try:
            self.writer.text(f"{APP_NAME} {level}: {text}")
        except OSError:
            pass

    # -- 1. receive ------------------------------------------------------------------------
    def receive(self) -> Incoming:
        inc = Incoming()
        self.sock.settimeout(self.settings.idle_timeout_s)
        reader = self.make_reader()
        try:
            for msg in reader.until_close():
                self._take(msg, inc)
            inc.closed_cleanly = True
        except StreamClosed as e:
            if not (inc.empty and inc.config is None and inc.header_xml is None and "without a CLOSE" in str(e)):
                inc.error = str(e)
        except ProtocolError as e:
            inc.error = str(e)
        except OSError as e:
            inc.error = f"connection error: {e}"
        return inc

    def _take(self, msg, inc: Incoming):
        mid = msg.id
        if mid in (MessageId.CONFIG_FILE, MessageId.CONFIG_TEXT):
            inc.config = msg.value
            self.info("config %r", msg.value if len(msg.value) < 80 else msg.value[:80] + "...")
            if self.saver:
                self.saver.config(msg.value)
        elif mid == MessageId.HEADER:
            inc.header_xml = msg.value
            try:
                inc.header = parse_header(msg.value)
            except ValueError as e:
                self.tell("WARNING", f"{e}; continuing without it (contrast detection and raw reconstruction need it)")
            if self.saver:
                self.saver.header(msg.value)
        elif mid == MessageId.TEXT:
            try:
                p = parse_parameter_text(msg.value)
            except ValueError as e:
                self.tell("WARNING", f"{e}; using default parameters")
                p = None
            if p is not None:
                inc.raw_params = p
                if self.saver:
                    self.saver.parameters(p)
            else:
                inc.texts.append(msg.value)
        elif mid == MessageId.IMAGE:
            inc.images.append(msg.value)
            inc.originals.append(msg.value)
            if self.saver:
                self.saver.image(msg.value)
        elif mid == MessageId.ACQUISITION:
            inc.acquisitions.append(msg.value)
            if self.saver:
                self.saver.acquisition(msg.value)
        elif mid == MessageId.WAVEFORM:
            inc.waveforms += 1

    # -- 2. respond ------------------------------------------------------------------------
    def respond(self, inc: Incoming):
        params = coerce(inc.raw_params)
        for w in params.warnings:
            self.tell("WARNING", w)
        name, warn = resolve_pipeline_name(inc.config)
        ui_config = (inc.raw_params or {}).get("config")
        if warn and ui_config is not None:
            ui_name, ui_warn = resolve_pipeline_name(str(ui_config))
            if ui_warn is None:  # the UI's own choice names a known pipeline
                name, warn = ui_name, None
        if warn:
            self.tell("WARNING", warn)

        images = list(inc.images)
        originals = list(inc.originals)
        if inc.acquisitions:
            try:
                with self.phase("reconstruct"):
                    recon = reconstruct(
                        inc.acquisitions,
                        inc.header,
                        series_index=1 + max([int(i.image_series_index) for i in images] or [0]),
                    )
                images += recon
                originals += recon
            except Exception as e:
                self.tell("ERROR", f"raw data could not be reconstructed: {e}")

        if params["sendoriginal"]:
            with self.phase("send_originals"):
                for item in original_images(originals):
                    self.writer.original(item)
        if inc.error:
            self.tell(
                "ERROR",
                f"the stream from the {self.peer_name} ended early: {inc.error}. "
                f"{len(images)} image(s) received were "
                f"{'returned unchanged' if params['sendoriginal'] else 'not returned (Send original images is off)'}"
                "; no analysis was run",
            )
            return
        if not images:
            self.tell("WARNING", "no images or raw data arrived; nothing to process")
            return

        with self.phase("assemble"):
            study = assemble_study(params, images=images, header=inc.header, cache=self.cache, tell=self.note)
        if not study.inputs:
            return

        pipeline = build_pipeline(name)
        if not self.gate.acquire(blocking=False):
            self.info(
                "waiting for a free pipeline slot: %d stud%s already being processed (serve --max-parallel)",
                self.settings.max_parallel,
                "y is" if self.settings.max_parallel == 1 else "ies are",
            )
            self.gate.acquire()
        # each stage's series go out as soon as it is done (the brain mask first), numbered on
        # from the input's series in the order the stages made them
        next_index = 1 + max(int(i.image_series_index) for i in images)

        def send(study: Study, new: list[DerivedSeries]) -> None:
            nonlocal next_index
            with self.phase("send_derived"):
                for d in new:
                    if d.send_param and not params[d.send_param]:
                        continue
                    for img in derived_images(d, study.inputs[d.reference], next_index):
                        self.writer.image(img)
                    next_index += 1
                    if "to_first_derived" not in self.phases_s:  # from the last image received
                        self.phases_s["to_first_derived"] = time.perf_counter() - self.t_received

        try:
            with self.phase("pipeline"):
                pipeline.run(study, on_stage=send)
        finally:
            self.gate.release()
        for w in study.warnings:
            self.tell("WARNING", w)
        self.writer.text(report_text(study, name))
        if self.settings.dicom_dir is not None:
            self.pending_dicom = (study, params)

    def write_dicom(self):
        """What was sent, as DICOM under ``dicom_dir`` (after CLOSE: the scanner does not wait)."""
        assert self.pending_dicom is not None
        study, params = self.pending_dicom
        self.pending_dicom = None
        from .dicom_export import export_study

        folder = Path(self.settings.dicom_dir or ".") / f"{datetime.now():%Y%m%d_%H%M%S}_{self.id}"
        try:
            with self.phase("dicom"):
                res = export_study(study, folder, send_params=params)
            self.info("DICOM written to %s (%d series)", folder, len(res.series))
        except Exception:  # noqa: BLE001 - the scanner already has its images
            self.log.exception("[conn %d] DICOM export to %s failed", self.id, folder)

    def note(self, level: str, text: str):
        """A message about the study: logged ("INFO") or also told to the scanner."""
        if level == "INFO":
            self.info(text)
        else:
            self.tell(level, text)

    @contextlib.contextmanager
    def phase(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.phases_s[name] = self.phases_s.get(name, 0.0) + time.perf_counter() - t0

    # -- whole connection --------------------------------------------------------------------
    def handle(self):
        t0 = time.perf_counter()
        self.info("connection from %s", self.peer)
        if self.settings.save_dir is not None:
            stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
            self.saver = StreamFileWriter(Path(self.settings.save_dir) / f"stream_{stamp}_{self.id}.h5")
        try:
            with self.phase("receive"):
                inc = self.receive()
            self.t_received = time.perf_counter()
            if self.saver:
                self.saver.close()
                self.info("stream saved to %s", self.saver.path)
                self.saver = None
            if inc.empty and not inc.error:
                self.info("no data (liveness probe or empty study); closing")
            else:
                self.info(
                    "received %d image(s), %d readout(s), %d waveform(s)%s",
                    len(inc.images),
                    len(inc.acquisitions),
                    inc.waveforms,
                    f"; stopped early: {inc.error}" if inc.error else "",
                )
                if inc.error and inc.empty:
                    self.tell("ERROR", f"the stream from the {self.peer_name} could not be read: {inc.error}")
                else:
                    self.respond(inc)
            self.writer.close()
            if self.pending_dicom is not None:
                self.write_dicom()
        except OSError as e:
            self.log.warning("[conn %d] the %s went away while we were answering (%s)", self.id, self.peer_name, e)
        except Exception as e:  # never let one connection take the server down
            self.log.exception("[conn %d] internal error", self.id)
            try:
                self.tell("ERROR", f"internal error: {type(e).__name__}: {e}. Please report it with the server log")
                self.writer.close()
            except OSError:
                pass
        finally:
            if self.saver:
                self.saver.close()
            if self.owns_socket:
                try:
                    self.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                self.sock.close()
            self.phases_s["total"] = time.perf_counter() - t0
            self.info(
                "closed after %.2f s, %d image(s) sent; phases (s): %s",
                self.phases_s["total"],
                self.writer.sent_images,
                {k: round(v, 3) for k, v in self.phases_s.items()},
            )
            if self.stats is not None:
                self.stats.append(dict(self.phases_s))


class MrdServer(socketserver.ThreadingTCPServer):
    """``MrdServer((host, port), settings).serve_forever()``; port 0 picks a free port.
    ``connection`` is the :class:`Connection` class each accepted socket gets (its wire)."""

    allow_reuse_address = True
    daemon_threads = True

    def __init__(self, address, settings: ServerSettings = ServerSettings(), connection: type[Connection] = Connection):
        self.settings = settings
        self.connection = connection
        self.gate = threading.Semaphore(settings.max_parallel)
        #: phase timings (s) of the most recent connections, newest last (for benchmarks)
        self.stats: collections.deque = collections.deque(maxlen=64)
        self.cache = StudyCache(settings.cache_dir, settings.cache_ttl_s) if settings.cache_dir else None
        super().__init__(address, _Handler)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def warm_up(self) -> threading.Thread:
        """Let every stage of the default pipeline load its networks in the background, so that
        the first study does not pay for it; connections are accepted meanwhile."""

        def load():
            t0 = time.perf_counter()
            problems = warm_up_pipeline()
            if problems:  # reported again, with context, when a study needs them
                log.warning("could not load all networks at start-up: %s", "; ".join(problems))
            else:
                log.info("networks loaded in %.1f s", time.perf_counter() - t0)

        t = threading.Thread(target=load, name="warm-up", daemon=True)
        t.start()
        return t

    def start_background(self) -> threading.Thread:
        t = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, name="mrd-server", daemon=True)
        t.start()
        return t


class _Handler(socketserver.BaseRequestHandler):
    server: MrdServer

    def handle(self):
        self.server.connection(
            self.request,
            self.client_address,
            self.server.settings,
            self.server.gate,
            self.server.stats,
            self.server.cache,
        ).handle()
