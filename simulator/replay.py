"""Replay an ISMRMRD file to an MRD server exactly as a scanner would, and save what comes back.

Sends config (CONFIG_FILE), the XML header, the UI parameters as a JSON TEXT message,
the images or raw readouts, then CLOSE; every text payload is NUL-terminated as on a scanner.
Returned images go to an ISMRMRD file (one group per series) and a PNG montage per series.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from openrecon_stroke import mrdfile
from openrecon_stroke.params import parse_cli_params
from openrecon_stroke.pipeline_registry import DEFAULT_PIPELINE
from openrecon_stroke.protocol import (
    MessageId, MessageReader, ProtocolError, SocketReader, encode_acquisition, encode_close,
    encode_config_file, encode_image, encode_text,
)

log = logging.getLogger("simulator.replay")


@dataclass
class ReplayResult:
    images: list = field(default_factory=list)
    texts: list = field(default_factory=list)
    closed_cleanly: bool = False
    error: str | None = None
    seconds_send: float = 0.0
    seconds_total: float = 0.0
    #: seconds from the connection's start to the arrival of each image in ``images``
    arrivals_s: list = field(default_factory=list)

    @property
    def seconds_to_first_derived(self) -> float | None:
        """Seconds from the last image sent to the first derived (not original) image received."""
        for im, t in zip(self.images, self.arrivals_s):
            if "ImageProcessingHistory" in im.meta:
                return t - self.seconds_send
        return None

    def series(self) -> dict[int, list]:
        out: dict[int, list] = {}
        for im in self.images:
            out.setdefault(int(im.image_series_index), []).append(im)
        return out


def stream_messages(stream: mrdfile.MrdStream, config: str, parameters: dict | None):
    """The byte messages a scanner sends for ``stream``, in order (a generator)."""
    yield encode_config_file(config)
    if stream.header_xml:
        yield encode_text(MessageId.HEADER, stream.header_xml)
    if parameters is not None:
        yield encode_text(MessageId.TEXT, json.dumps({"parameters": parameters}))
    for acq in stream.acquisitions:
        yield encode_acquisition(acq)
    for img in stream.images:
        yield encode_image(img)
    yield encode_close()


def send_stream(host: str, port: int, messages, *, timeout_s: float = 600.0, progress: bool = False,
                total: int | None = None) -> ReplayResult:
    """Send byte messages over one connection while collecting everything the server returns."""
    res = ReplayResult()
    t0 = time.perf_counter()
    sock = socket.create_connection((host, port), timeout=timeout_s)
    sock.settimeout(timeout_s)

    def receive():
        reader = MessageReader(SocketReader(sock))
        try:
            for msg in reader.until_close():
                if msg.id == MessageId.IMAGE:
                    res.images.append(msg.value)
                    res.arrivals_s.append(time.perf_counter() - t0)
                elif msg.id == MessageId.TEXT:
                    res.texts.append(msg.value)
                    for line in msg.value.splitlines():
                        log.info("server: %s", line)
            res.closed_cleanly = True
        except (ProtocolError, OSError) as e:
            res.error = str(e)

    rt = threading.Thread(target=receive, daemon=True)
    rt.start()
    it = messages
    bar = None
    if progress:
        try:
            from tqdm import tqdm
            bar = tqdm(total=total, unit="msg", desc="sending", leave=False)
        except ImportError:
            pass
    try:
        for m in it:
            sock.sendall(m)
            if bar:
                bar.update(1)
        sock.shutdown(socket.SHUT_WR)
    except OSError as e:
        res.error = f"sending failed: {e}"
    finally:
        if bar:
            bar.close()
    res.seconds_send = time.perf_counter() - t0
    rt.join(timeout_s)
    sock.close()
    res.seconds_total = time.perf_counter() - t0
    return res


def prepare(path, config: str | None = None, parameters: dict | None = None):
    """``(stream, config, parameters)`` to replay a file: the config and UI parameters saved in
    the file (``--save-data``) unless given; given parameters override saved ones key by key."""
    stream = mrdfile.read(path)
    cfg = config or stream.config or DEFAULT_PIPELINE
    params = dict(stream.parameters or {})
    params.update(parameters or {})
    return stream, cfg, params


def replay_file(path, host="127.0.0.1", port=9002, config: str | None = None,
                parameters: dict | None = None, **kw) -> ReplayResult:
    stream, cfg, params = prepare(path, config, parameters)
    n = 3 + len(stream.images) + len(stream.acquisitions)
    return send_stream(host, port, stream_messages(stream, cfg, params), total=n, **kw)


# --------------------------------------------------------------------------------------------
# previews
# --------------------------------------------------------------------------------------------
def _series_name(images) -> str:
    m = images[0].meta
    s = m.get("SequenceDescriptionAdditional") or ("ORIGINAL" if "ImageProcessingHistory" not in m else "")
    return "".join(c if c.isalnum() else "_" for c in str(s)) or "series"


def montage(images, max_tiles: int = 12) -> np.ndarray:
    """A grid of evenly spaced slices of one returned series as uint8 (H, W, 3)."""
    slices = []
    for im in sorted(images, key=lambda i: int(i.slice)):
        d = im.data  # (c, z, y, x)
        for z in range(d.shape[1]):
            slices.append(d[:, z])
    idx = np.linspace(0, len(slices) - 1, min(max_tiles, len(slices))).round().astype(int)
    tiles = []
    for i in idx:
        s = slices[i].astype(np.float32)
        if s.shape[0] == 3:
            t = np.clip(s, 0, 255).transpose(1, 2, 0)
        else:
            a = s[0]
            hi = np.percentile(a, 99.5) if a.max() > 0 else 1.0
            t = np.repeat((np.clip(a / max(hi, 1e-6), 0, 1) * 255)[..., None], 3, axis=2)
        tiles.append(t.astype(np.uint8))
    h = max(t.shape[0] for t in tiles)
    w = max(t.shape[1] for t in tiles)
    cols = min(4, len(tiles))
    rows = (len(tiles) + cols - 1) // cols
    out = np.zeros((rows * h, cols * w, 3), np.uint8)
    for n, t in enumerate(tiles):
        r, c = divmod(n, cols)
        out[r * h:r * h + t.shape[0], c * w:c * w + t.shape[1]] = t
    return out


def save_outputs(res: ReplayResult, out: Path, header_xml: str = "") -> list[Path]:
    """Write the returned images to ``out`` (ISMRMRD) and PNG montages beside it."""
    written = [mrdfile.write(out, mrdfile.MrdStream(header_xml=header_xml, images=res.images))]
    try:
        from PIL import Image as PILImage
    except ImportError:
        log.warning("Pillow is not installed: no PNG previews (pip install 'openrecon-stroke[simulator]')")
        return written
    for sidx, ims in sorted(res.series().items()):
        p = out.with_name(f"{out.stem}_series{sidx:03d}_{_series_name(ims)}.png")
        PILImage.fromarray(montage(ims)).save(p)
        written.append(p)
    return written


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def add_arguments(p):
    p.add_argument("file", metavar="FILE", help="ISMRMRD HDF5 file (from phantom, convert or --save-data)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9002)
    p.add_argument("--config", default=None, help=f"config name (default: from the file, else {DEFAULT_PIPELINE})")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="UI parameter, repeatable (e.g. --param sendoriginal=false)")
    p.add_argument("--out", required=True, help="output ISMRMRD file for the returned images")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the server")
    p.add_argument("--dicom", metavar="DIR", default=None,
                   help="also write the returned series (and the originals) as DICOM in DIR/<series>/")


def run(args) -> int:
    stream, cfg, merged = prepare(args.file, args.config, parse_cli_params(args.param))
    n = 3 + len(stream.images) + len(stream.acquisitions)
    print(f"replaying {args.file}: {len(stream.images)} image(s), {len(stream.acquisitions)} readout(s) "
          f"to {args.host}:{args.port} (config '{cfg}')")
    try:
        res = send_stream(args.host, args.port, stream_messages(stream, cfg, merged),
                          timeout_s=args.timeout, progress=True, total=n)
    except OSError as e:
        print(f"error: cannot reach the server at {args.host}:{args.port} ({e}). Is it running? "
              f"Start it with: openrecon-stroke serve --port {args.port}")
        return 3
    out = Path(args.out)
    written = save_outputs(res, out, stream.header_xml)
    for sidx, ims in sorted(res.series().items()):
        print(f"  series {sidx}: {len(ims)} image(s) {_series_name(ims)}")
    for p in written:
        print(p)
    if args.dicom and res.images:
        from openrecon_stroke.dicom_export import export_study
        from openrecon_stroke.outputs import study_from_mrd

        exp = export_study(study_from_mrd(res.images, stream.header_xml, stream.images), args.dicom)
        for name, files in exp.series.items():
            print(f"  DICOM {name}: {len(files)} file(s)")
        for w in exp.warnings:
            print(f"warning: {w}")
        print(f"DICOM in {args.dicom}")
    print(f"done in {res.seconds_total:.2f} s ({len(res.images)} image(s) and {len(res.texts)} message(s) returned)")
    if res.error or not res.closed_cleanly:
        print(f"error: the connection did not end cleanly: {res.error or 'no CLOSE from the server'}")
        return 1
    return 0
