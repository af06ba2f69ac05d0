"""The MRD (ISMRMRD v1) wire protocol over a socket: bounded, tolerant reading and whole writes.

Objects are the ``ismrmrd`` package's own (``Image``, ``Acquisition``, header classes); this
module adds what that package leaves to the server: exact reads from a socket with timeouts,
size limits checked *before* any allocation, NUL-terminated text as scanners send it, and a
clear :class:`ProtocolError` for everything malformed.

Message layout (little endian): ``uint16 id`` then a payload:
CONFIG_FILE 1024 bytes NUL padded; CONFIG_TEXT/HEADER/TEXT ``uint32 length`` + bytes;
IMAGE header + ``uint64`` meta length + meta + data; ACQUISITION header + trajectory + data;
WAVEFORM header + uint32 data; NDARRAY dtype/version/ndim + dims + data; CLOSE nothing.
"""

from __future__ import annotations

import ctypes
import enum
import io
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import ismrmrd
import numpy as np
from ismrmrd.image import get_dtype_from_data_type
from ismrmrd.waveform import WaveformHeader

CONFIG_FILE_SIZE = 1024


class MessageId(enum.IntEnum):
    CONFIG_FILE = 1
    CONFIG_TEXT = 2
    HEADER = 3
    CLOSE = 4
    TEXT = 5
    ACQUISITION = 1008
    IMAGE = 1022
    WAVEFORM = 1026
    NDARRAY = 1030


class ProtocolError(Exception):
    """The stream is malformed. The message says what was wrong, for the scanner log."""


class StreamClosed(ProtocolError):
    """The peer closed the connection (cleanly between messages, or mid-message)."""


@dataclass(frozen=True)
class Limits:
    """Sizes above which a message is refused before anything is allocated (bytes)."""

    max_text: int = 16 * 2**20
    max_image: int = 2 * 2**30
    max_acquisition: int = 64 * 2**20
    max_stream: int = 8 * 2**30
    max_matrix: int = 4096  # per image dimension


@dataclass
class Message:
    id: int  # a MessageId, or the id of another wire's own kind (see MessageReader.other)
    value: object = None  # str, ismrmrd.Image, ismrmrd.Acquisition, header XML (str) or None
    nbytes: int = 0


class SocketReader:
    """Reads exact byte counts from a socket (partial reads handled; timeouts raise)."""

    def __init__(self, sock: socket.socket, tee=None):
        self.sock = sock
        self.tee = tee  # optional callable receiving every byte read (for --save-data)
        self.total = 0

    def read(self, n: int) -> bytearray:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            try:
                k = self.sock.recv_into(view[got:], min(n - got, 1 << 22))
            except TimeoutError as e:
                raise ProtocolError(
                    f"no data for {self.sock.gettimeout():g} s (the idle timeout; {got} of {n} bytes "
                    "of a message received)"
                ) from e
            if k == 0:
                raise StreamClosed(
                    f"connection closed after {got} of {n} bytes of a message (truncated stream)"
                    if got or n
                    else "connection closed"
                )
            got += k
        self.total += n
        return buf


class BytesReader:
    """Same interface as :class:`SocketReader` over a file-like object (for tests and files)."""

    def __init__(self, f: io.BufferedIOBase):
        self.f = f
        self.total = 0

    def read(self, n: int) -> bytearray:
        b = self.f.read(n)
        if len(b) < n:
            raise StreamClosed(f"stream ended after {len(b)} of {n} bytes of a message (truncated)")
        self.total += n
        return bytearray(b)


def format_bytes(n: float) -> str:
    """A byte count as people read it: ``512 bytes``, ``14.1 KiB``, ``4.0 MiB``, ``8.0 GiB``."""
    n = float(n)
    if n < 1024:
        return f"{n:.0f} bytes"
    for unit in ("KiB", "MiB"):
        n /= 1024
        if n < 1024:
            return f"{n:.1f} {unit}"
    return f"{n / 1024:.1f} GiB"


def _text(b: bytes) -> str:
    return bytes(b).rstrip(b"\x00").decode("utf-8", errors="replace")


class MessageReader:
    """Decodes one message at a time from a reader, enforcing :class:`Limits`."""

    def __init__(self, reader, limits: Limits = Limits()):
        self.r = reader
        self.limits = limits

    def _check_stream(self, n: int, what: str):
        if self.r.total + n > self.limits.max_stream:
            raise ProtocolError(
                f"{what} would take the connection past {format_bytes(self.limits.max_stream)}; refused"
            )

    def _sized_text(self, what: str) -> tuple[str, int]:
        (n,) = struct.unpack("<I", self.r.read(4))
        if n > self.limits.max_text:
            raise ProtocolError(
                f"{what} declares {format_bytes(n)}, above the limit of {format_bytes(self.limits.max_text)}; refused"
            )
        return _text(self.r.read(n)), n

    def until_close(self) -> Iterator[Message]:
        """The messages up to CLOSE (not included); :class:`StreamClosed` when the stream ends
        without one."""
        while True:
            msg = self.next()
            if msg.id == MessageId.CLOSE:
                return
            yield msg

    def next(self) -> Message:
        try:
            raw = self.r.read(2)
        except StreamClosed as e:
            raise StreamClosed("connection closed without a CLOSE message") from e
        (mid,) = struct.unpack("<H", raw)
        try:
            mid = MessageId(mid)
        except ValueError:
            return self.other(mid)
        if mid == MessageId.CLOSE:
            return Message(mid)
        if mid == MessageId.CONFIG_FILE:
            return Message(mid, _text(self.r.read(CONFIG_FILE_SIZE)), CONFIG_FILE_SIZE)
        if mid in (MessageId.CONFIG_TEXT, MessageId.TEXT, MessageId.HEADER):
            text, n = self._sized_text(mid.name)
            return Message(mid, text, n)
        if mid == MessageId.IMAGE:
            return self._image()
        if mid == MessageId.ACQUISITION:
            return self._acquisition()
        if mid == MessageId.WAVEFORM:
            return self._waveform()
        return self._ndarray()

    def other(self, mid: int) -> Message:
        """A message whose id MRD v1 does not define (a reader for another wire decodes its own
        kinds here, e.g. Gadgetron's image arrays)."""
        raise ProtocolError(f"unknown message id {mid}: not an MRD v1 stream, or the stream is out of step")

    def _image(self) -> Message:
        hb = self.r.read(ctypes.sizeof(ismrmrd.ImageHeader))
        h = ismrmrd.ImageHeader.from_buffer_copy(hb)
        (alen,) = struct.unpack("<Q", self.r.read(8))
        if alen > self.limits.max_text:
            raise ProtocolError(
                f"image meta attributes declare {format_bytes(alen)}, above the limit of "
                f"{format_bytes(self.limits.max_text)}; refused"
            )
        attrs = _text(self.r.read(alen))
        try:
            dtype = get_dtype_from_data_type(h.data_type)
        except TypeError:
            raise ProtocolError(f"image {h.image_index}: unknown data_type {h.data_type}") from None
        dims = [int(h.channels), int(h.matrix_size[2]), int(h.matrix_size[1]), int(h.matrix_size[0])]
        if min(dims) < 1 or max(dims[1:]) > self.limits.max_matrix or dims[0] > 256:
            raise ProtocolError(
                f"image {h.image_index}: matrix {tuple(h.matrix_size)} x {h.channels} channels "
                f"is outside 1..{self.limits.max_matrix} per axis; refused"
            )
        nbytes = int(np.prod(dims)) * dtype.itemsize
        if nbytes > self.limits.max_image:
            raise ProtocolError(
                f"image {h.image_index} declares {format_bytes(nbytes)} of pixel data, above "
                f"the limit of {format_bytes(self.limits.max_image)}; refused"
            )
        self._check_stream(nbytes, "image")
        data = np.frombuffer(self.r.read(nbytes), dtype=dtype).reshape(dims)
        try:
            img = ismrmrd.Image(head=hb, attribute_string=attrs, data=data)
        except Exception as e:  # malformed meta XML
            raise ProtocolError(f"image {h.image_index}: unreadable meta attributes ({e})") from None
        return Message(MessageId.IMAGE, img, nbytes)

    def _acquisition(self) -> Message:
        hb = self.r.read(ctypes.sizeof(ismrmrd.AcquisitionHeader))
        h = ismrmrd.AcquisitionHeader.from_buffer_copy(hb)
        n, c, t = int(h.number_of_samples), int(h.active_channels), int(h.trajectory_dimensions)
        nbytes = n * c * 8 + n * t * 4
        if nbytes > self.limits.max_acquisition or c > 1024:
            raise ProtocolError(
                f"acquisition {h.scan_counter} declares {n} samples x {c} channels "
                f"({format_bytes(nbytes)}; limits: {format_bytes(self.limits.max_acquisition)}, 1024 channels); refused"
            )
        self._check_stream(nbytes, "acquisition")
        traj = np.frombuffer(self.r.read(n * t * 4), dtype=np.float32).reshape(n, t)
        data = np.frombuffer(self.r.read(n * c * 8), dtype=np.complex64).reshape(c, n)
        acq = ismrmrd.Acquisition(head=hb, data=data, trajectory=traj)
        return Message(MessageId.ACQUISITION, acq, nbytes)

    def _waveform(self) -> Message:
        hb = self.r.read(ctypes.sizeof(WaveformHeader))
        h = WaveformHeader.from_buffer_copy(hb)
        nbytes = int(h.number_of_samples) * int(h.channels) * 4
        if nbytes > self.limits.max_acquisition:
            raise ProtocolError(
                f"waveform declares {format_bytes(nbytes)}, above the limit of "
                f"{format_bytes(self.limits.max_acquisition)}; refused"
            )
        self._check_stream(nbytes, "waveform")
        self.r.read(nbytes)  # physiological waveforms are not used
        return Message(MessageId.WAVEFORM, None, nbytes)

    def _ndarray(self) -> Message:
        dtype_id, _ver, ndim = struct.unpack("<HHH", self.r.read(6))
        if ndim > 8:
            raise ProtocolError(f"NDARRAY declares {ndim} dimensions; refused")
        dims = struct.unpack("<" + "Q" * ndim, self.r.read(8 * ndim)) if ndim else ()
        try:
            itemsize = get_dtype_from_data_type(dtype_id).itemsize
        except TypeError:
            raise ProtocolError(f"NDARRAY has unknown data type {dtype_id}") from None
        nbytes = int(np.prod(dims, dtype=np.float64)) * itemsize if dims else 0
        if nbytes > self.limits.max_acquisition:
            raise ProtocolError(
                f"NDARRAY declares {format_bytes(nbytes)}, above the limit of "
                f"{format_bytes(self.limits.max_acquisition)}; refused"
            )
        self.r.read(nbytes)
        return Message(MessageId.NDARRAY, None, nbytes)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------
def encode_text(mid: MessageId, text: str) -> bytes:
    """TEXT / CONFIG_TEXT / HEADER payload, NUL-terminated as scanners send it."""
    b = text.encode("utf-8") + b"\x00"
    return struct.pack("<HI", mid, len(b)) + b


def encode_config_file(name: str) -> bytes:
    b = name.encode("utf-8")
    if len(b) >= CONFIG_FILE_SIZE:
        raise ValueError("config name too long")
    return struct.pack("<H", MessageId.CONFIG_FILE) + b.ljust(CONFIG_FILE_SIZE, b"\x00")


def encode_image(img: ismrmrd.Image) -> bytes:
    return struct.pack("<H", MessageId.IMAGE) + img.to_bytes()


def encode_acquisition(acq: ismrmrd.Acquisition) -> bytes:
    return struct.pack("<H", MessageId.ACQUISITION) + acq.to_bytes()


def encode_close() -> bytes:
    return struct.pack("<H", MessageId.CLOSE)


class MessageWriter:
    """Whole-message writes (``sendall``) to a socket, safe to share between threads."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._lock = threading.Lock()
        self.sent_images = 0

    def _send(self, b: bytes):
        with self._lock:
            self.sock.sendall(b)

    def text(self, text: str):
        self._send(encode_text(MessageId.TEXT, text))

    def image(self, img: ismrmrd.Image):
        self._send(encode_image(img))
        self.sent_images += 1

    def close(self):
        self._send(encode_close())
