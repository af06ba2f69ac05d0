"""The same pipeline as a Gadgetron external Python gadget (Gadgetron 4 "external" node).

Gadgetron talks to an external module over one TCP connection with the ISMRMRD framing the MRD
server reads: ``CONFIG`` (id 2, the ``<configuration>`` element of the chain's ``<external>``
node as XML), ``HEADER`` (3, the ISMRMRD XML header), then items (IMAGE 1022, ACQUISITION 1008,
WAVEFORM 1026, and Gadgetron's own IMAGE_ARRAY 1024) and ``CLOSE`` (4); the module answers
with items and ``CLOSE``, or ``ERROR`` (8, ``uint64`` length + text) when something failed.

Two ways to start (the chain's ``<external>`` node decides, docs/gadgetron/):

* active, ``<execute name="openrecon_stroke.gadgetron_gadget" target="gadget" type="python"/>``:
  Gadgetron runs ``python -m gadgetron PORT openrecon_stroke.gadgetron_gadget gadget``; the
  ``gadgetron`` package (extra ``[gadgetron]``) connects back, reads CONFIG and HEADER and calls
  :func:`gadget` with its connection; everything after that is ours;
* passive, ``<connect port="18000"/>``: ``openrecon-stroke gadget --port 18000`` listens (no
  ``gadgetron`` package needed) and serves every connection Gadgetron opens, networks loaded once.

Everything after the wire is the MRD server's (:class:`~openrecon_stroke.server.Connection`):
the same study assembly, pipeline, derived images and sentences. What differs:

* parameters are the ``<property name=... value=.../>`` of the ``<configuration>`` (the UI
  parameter ids of :mod:`openrecon_stroke.params`; ``config`` picks the pipeline, default the
  full one);
* image arrays (``IsmrmrdImageArray``: complex data ``[RO, E1, E2, CHA, N, S, LOC]``, one image
  header and meta per ``(N, S, LOC)``) are analysed as one image per ``(N, S, LOC)`` and go back
  unchanged, byte for byte, as the array they came in;
* Gadgetron refuses TEXT from an external module ("Received illegal message id from external
  peer: 5"), so every sentence the MRD server would send as TEXT (warnings, errors, the report)
  is logged and carried, in order, by the meta attribute ``OpenReconStrokeMessages`` of every
  derived image; when no derived image goes back and one of them is an error, they go back
  as one ERROR message (Gadgetron then reports the run as failed, with that text).
"""

from __future__ import annotations

import ctypes
import enum
import logging
import struct
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import ismrmrd
import numpy as np

from . import APP_NAME
from .pipeline_registry import DEFAULT_PIPELINE
from .protocol import Limits, Message, MessageId, MessageReader, MessageWriter, ProtocolError, SocketReader
from .server import DEFAULT_CACHE_DIR, Connection, MrdServer, Reply, ServerSettings
from .study_cache import StudyCache

log = logging.getLogger(__name__)

#: meta attribute of derived images that carries the sentences (Gadgetron takes no TEXT)
MESSAGES_META = "OpenReconStrokeMessages"
ERROR_PREFIX = f"{APP_NAME} ERROR:"
#: most images (and waveforms) one image array may declare
MAX_ARRAY_IMAGES = 65536


class GadgetronId(enum.IntEnum):
    """Gadgetron message ids beyond MRD v1's (Gadgetron's MessageID.h)."""

    ERROR = 8
    RECON_DATA = 1023
    IMAGE_ARRAY = 1024
    BUCKET = 1050


_NOT_IMAGES = {
    GadgetronId.RECON_DATA: "IsmrmrdReconData (k-space buffers)",
    GadgetronId.BUCKET: "an AcquisitionBucket (k-space)",
}


# --------------------------------------------------------------------------------------------
# Image arrays
# --------------------------------------------------------------------------------------------
@dataclass
class ImageArray:
    """A Gadgetron ``IsmrmrdImageArray`` as received: its images (one per ``(N, S, LOC)``, in
    that order, N fastest) and the message's exact bytes after the id (to return it unchanged)."""

    images: list[ismrmrd.Image]
    raw: bytes


def read_image_array(read: Callable[[int], bytes], limits: Limits) -> ImageArray:
    """Decode an IMAGE_ARRAY payload (after its id) with ``read(n)`` (exactly n bytes), checking
    every declared size against ``limits`` before reading it.

    Layout (Gadgetron ``IO::write`` of the struct's fields, little endian): ``data``
    (``uint64`` ndim, ndim x ``uint64`` dims, complex64 values, first dim fastest); ``headers``
    (dims as before, one ``ImageHeader`` per element); ``meta`` (``uint64`` count, each
    ``uint64`` length + serialised ``ismrmrdMeta`` XML); ``waveform`` (``bool``; if set
    ``uint64`` count, each ``WaveformHeader`` + uint32 samples); ``acq_headers`` (``bool``; if
    set dims + ``AcquisitionHeader`` elements).
    """
    raw = bytearray()

    def take(n: int) -> bytes:
        b = read(n)
        raw.extend(b)
        return b

    def u64() -> int:
        return struct.unpack("<Q", take(8))[0]

    def flag() -> bool:
        return take(1) != b"\x00"

    def dims(what: str, most: int) -> tuple[int, ...]:
        n = u64()
        if not 1 <= n <= most:
            raise ProtocolError(f"image array: {what} declares {n} dimensions (1 to {most} expected); refused")
        return struct.unpack(f"<{n}Q", take(8 * n))

    def sized(n: int, what: str) -> bytes:
        if n > limits.max_image:
            raise ProtocolError(f"image array: {what} declares {n} bytes; refused")
        return take(n)

    d = dims("data", 7)
    shape = tuple(d) + (1,) * (7 - len(d))  # RO, E1, E2, CHA, N, S, LOC
    ro, e1, e2, cha, n_, s_, loc = shape
    if min(shape) < 1 or max(ro, e1, e2) > limits.max_matrix or cha > 256:
        raise ProtocolError(f"image array: data dimensions {shape} are outside 1..{limits.max_matrix}; refused")
    count = n_ * s_ * loc
    if count > MAX_ARRAY_IMAGES:
        raise ProtocolError(f"image array: N x S x LOC = {count} images, above {MAX_ARRAY_IMAGES}; refused")
    values = np.frombuffer(sized(int(np.prod(shape, dtype=np.float64)) * 8, "data"), np.complex64)
    data = values.reshape(shape, order="F")
    hd = dims("headers", 3)
    if int(np.prod(hd)) != count:
        raise ProtocolError(f"image array: {int(np.prod(hd))} image headers for N x S x LOC = {count} images")
    hsize = ctypes.sizeof(ismrmrd.ImageHeader)
    block = sized(count * hsize, "image headers")
    heads = [ismrmrd.ImageHeader.from_buffer_copy(block, i * hsize) for i in range(count)]
    n_meta = u64()
    if n_meta not in (0, count):
        raise ProtocolError(f"image array: {n_meta} meta containers for {count} images")
    metas = [sized(u64(), "meta").rstrip(b"\x00").decode("utf-8", errors="replace") for _ in range(n_meta)]
    if flag():  # waveforms travel with the array; they are returned with it, not analysed
        wsize = ctypes.sizeof(ismrmrd.WaveformHeader)
        n_waves = u64()
        if n_waves > MAX_ARRAY_IMAGES:
            raise ProtocolError(f"image array: {n_waves} waveforms; refused")
        for _ in range(n_waves):
            wh = ismrmrd.WaveformHeader.from_buffer_copy(take(wsize))
            sized(int(wh.number_of_samples) * int(wh.channels) * 4, "waveform")
    if flag():
        ad = dims("acquisition headers", 8)
        sized(int(np.prod(ad, dtype=np.float64)) * ctypes.sizeof(ismrmrd.AcquisitionHeader), "acquisition headers")

    images = []
    for i in range(count):
        n, s, lc = i % n_, (i // n_) % s_, i // (n_ * s_)
        h = heads[i]
        h.matrix_size[:] = (ro, e1, e2)
        h.channels = cha
        h.data_type = ismrmrd.DATATYPE_CXFLOAT
        pixels = np.ascontiguousarray(data[:, :, :, :, n, s, lc].transpose(3, 2, 1, 0))  # CHA, E2, E1, RO
        try:
            images.append(ismrmrd.Image(head=h, attribute_string=metas[i] if metas else "", data=pixels))
        except Exception as e:  # malformed meta XML
            raise ProtocolError(f"image array: image {i} has unreadable meta attributes ({e})") from None
    return ImageArray(images, bytes(raw))


def encode_image_array(arr: ImageArray) -> bytes:
    return struct.pack("<H", GadgetronId.IMAGE_ARRAY) + arr.raw


def encode_error(text: str) -> bytes:
    """Gadgetron's ERROR: ``uint16`` id, ``uint64`` length, text (no NUL)."""
    b = text.encode("utf-8")
    return struct.pack("<HQ", GadgetronId.ERROR, len(b)) + b


def parse_configuration(xml: str) -> dict[str, str]:
    """The ``property`` children of the external node's ``<configuration>`` as name -> value
    (``<property name="x" value="y"/>``, or the legacy ``<property><name>x</name><value>y</value>``).

    An empty text (no ``<configuration>`` in the chain) gives ``{}``; raises ValueError for text
    that is not such a configuration."""
    text = xml.strip().rstrip("\x00").strip()
    if not text or text.startswith("<?xml") and text.endswith("?>") and text.count("<") == 1:
        return {}
    if "<!DOCTYPE" in text or "<!ENTITY" in text:
        raise ValueError("the Gadgetron configuration declares a DOCTYPE or entities; refused")
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        raise ValueError(f"the Gadgetron configuration is not XML ({e})") from None
    out = {}
    for p in root.findall("property"):
        name = p.get("name", p.findtext("name"))
        value = p.get("value", p.findtext("value"))
        if not name or value is None:
            raise ValueError(f"a <property> of the Gadgetron configuration has no name or value: {ET.tostring(p)!r}")
        out[name.strip()] = value.strip()
    return out


# --------------------------------------------------------------------------------------------
# The wire: reading and answering
# --------------------------------------------------------------------------------------------
class GadgetronReader(MessageReader):
    """MRD framing plus Gadgetron's image arrays; ``queued`` messages come first (what the
    ``gadgetron`` package already read in active mode)."""

    def __init__(self, reader, limits: Limits, queued: Iterable[Message] = ()):
        super().__init__(reader, limits)
        self.queued = list(queued)

    def next(self) -> Message:
        if self.queued:
            return self.queued.pop(0)
        return super().next()

    def other(self, mid: int) -> Message:
        if mid == GadgetronId.IMAGE_ARRAY:

            def read(n: int) -> bytes:
                self._check_stream(n, "image array")
                return self.r.read(n)

            before = self.r.total
            arr = read_image_array(read, self.limits)
            return Message(mid, arr, self.r.total - before)
        if mid in _NOT_IMAGES:
            raise ProtocolError(
                f"Gadgetron sent {_NOT_IMAGES[GadgetronId(mid)]} (message {mid}); this gadget analyses "
                "reconstructed images: put the <external> node after the reconstruction in the chain "
                "(after ImageArraySplit, or after Extract for magnitude images)"
            )
        raise ProtocolError(f"unknown message id {mid}: not a Gadgetron external stream, or the stream is out of step")


class GadgetronReply(MessageWriter):
    """Originals go back at once (image arrays as arrays); derived images wait for the end, to
    carry every sentence in :data:`MESSAGES_META`; ``sends_close`` False leaves the CLOSE to
    the ``gadgetron`` package (active mode)."""

    def __init__(self, sock, sends_close: bool = True):
        super().__init__(sock)
        self.sends_close = sends_close
        self.sentences: list[str] = []
        self.held: list[ismrmrd.Image] = []

    def original(self, item) -> None:
        if isinstance(item, ImageArray):
            self._send(encode_image_array(item))
            self.sent_images += len(item.images)
        else:
            super().image(item)

    def image(self, img) -> None:
        self.held.append(img)

    def text(self, text: str) -> None:
        self.sentences.append(text)

    def close(self) -> None:
        held, self.held = self.held, []
        for img in held:
            if self.sentences:
                meta = img.meta
                meta[MESSAGES_META] = list(self.sentences)
                img.meta = meta
            super().image(img)
        errors = [s for s in self.sentences if s.startswith(ERROR_PREFIX)]
        if errors and not held:
            self._send(encode_error("\n".join(self.sentences)))
        if self.sends_close:
            super().close()


class GadgetronConnection(Connection):
    """One connection from a Gadgetron external node: the MRD server's
    :class:`~openrecon_stroke.server.Connection` with Gadgetron's configuration, image arrays
    and answer."""

    peer_name = "Gadgetron chain"

    def __init__(self, *args, preamble: Iterable[Message] = (), owns_socket: bool = True, **kwargs):
        self.preamble = list(preamble)
        self.owns_socket = owns_socket
        super().__init__(*args, **kwargs)

    def make_reader(self) -> MessageReader:
        return GadgetronReader(SocketReader(self.sock), self.settings.limits, queued=self.preamble)

    def make_reply(self) -> Reply:
        return GadgetronReply(self.sock, sends_close=self.owns_socket)

    def _take(self, msg, inc):
        if msg.id == MessageId.CONFIG_TEXT:  # Gadgetron's CONFIG: the external node's <configuration>
            try:
                props = parse_configuration(msg.value)
            except ValueError as e:
                self.tell("WARNING", f"{e}; using the default pipeline and parameters")
                props = {}
            self.info("configuration %s", props)
            inc.config = props.get("config", DEFAULT_PIPELINE)
            inc.raw_params = props
            if self.saver:
                self.saver.config(inc.config)
                self.saver.parameters(props)
        elif msg.id == GadgetronId.IMAGE_ARRAY:
            arr = msg.value
            assert isinstance(arr, ImageArray)
            inc.images += arr.images
            inc.originals.append(arr)
            if self.saver:
                for img in arr.images:
                    self.saver.image(img)
        else:
            super()._take(msg, inc)


# --------------------------------------------------------------------------------------------
# Start-up
# --------------------------------------------------------------------------------------------
def gadget(connection) -> None:
    """Active mode's target: ``python -m gadgetron PORT openrecon_stroke.gadgetron_gadget gadget``.

    ``connection`` is the ``gadgetron`` package's: it has read CONFIG and HEADER (kept as
    ``raw_bytes``); the rest of the stream is read here, and the package sends the final CLOSE
    and closes the socket when this returns."""
    raw = connection.raw_bytes
    preamble = [
        Message(MessageId.CONFIG_TEXT, _decode(raw.config)),
        Message(MessageId.HEADER, _decode(raw.header)),
    ]
    sock = connection.socket.socket
    settings = ServerSettings(cache_dir=DEFAULT_CACHE_DIR)
    GadgetronConnection(
        sock,
        _peer(sock),
        settings,
        threading.Semaphore(1),
        None,
        StudyCache(DEFAULT_CACHE_DIR, settings.cache_ttl_s),
        preamble=preamble,
        owns_socket=False,
    ).handle()


def _decode(b) -> str:
    return bytes(b or b"").rstrip(b"\x00").decode("utf-8", errors="replace")


def _peer(sock):
    try:
        return sock.getpeername()
    except OSError:
        return "gadgetron"


def listen(host: str, port: int, settings: ServerSettings | None = None) -> MrdServer:
    """Passive mode: a server for Gadgetron's ``<connect port=.../>`` (``serve_forever()`` it)."""
    return MrdServer((host, port), settings or ServerSettings(), connection=GadgetronConnection)
