"""Every protocol limit and every geometry rejection on the MRD path, against the bad input it
names. Each must give the scanner a clear TEXT message, write the same line to the log, return
what arrived intact, and leave the server serving: a valid study right after is processed and
its head mask lands on its marker voxel (``assert_server_alive``)."""

from __future__ import annotations

import ctypes
import logging
import socket
import struct
import threading
import time

import ismrmrd
import numpy as np
import pytest

import openrecon_stroke.server as server_mod
from openrecon_stroke.pipeline import Pipeline, Stage, StageResult
from openrecon_stroke.protocol import Limits, MessageId, encode_close, encode_config_file, encode_image, encode_text
from openrecon_stroke.server import MrdServer, ServerSettings
from openrecon_stroke.stages.basic import HeadMask, InputCheck
from simulator.replay import send_stream

from conftest import marker_series
from test_server import assert_server_alive, by_role, preamble, raw_exchange, scanner_messages

IMAGE_HEADER_BYTES = ctypes.sizeof(ismrmrd.ImageHeader)


@pytest.fixture
def make_server():
    """Servers with chosen settings, shut down after the test."""
    made = []

    def make(**kw):
        srv = MrdServer(("127.0.0.1", 0), ServerSettings(**{"idle_timeout_s": 20.0, **kw}))
        srv.start_background()
        made.append(srv)
        return srv

    yield make
    for srv in made:
        srv.shutdown()
        srv.server_close()


def image_message(head: ismrmrd.ImageHeader, meta: bytes = b"", data: bytes = b"") -> bytes:
    """An IMAGE message built field by field (so that the header may lie about the data)."""
    return struct.pack("<H", MessageId.IMAGE) + bytes(head) + struct.pack("<Q", len(meta)) + meta + data


def a_head() -> ismrmrd.ImageHeader:
    images, _ = marker_series("axial")
    return images[0].getHead()


def logged(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage() and r.levelno >= logging.WARNING]


def check_refused(server, caplog, payload: bytes, expect: str, *, n_originals: int = 0):
    """``payload`` is cut where the server must stop reading (nothing left unread, so the
    close is orderly). The refusal reaches the scanner as an ERROR text and the log."""
    texts, got, closed = raw_exchange(server.port, payload)
    assert closed, texts
    errors = [t for t in texts if "ERROR" in t and expect in t]
    assert errors, texts
    assert logged(caplog, expect), [r.getMessage() for r in caplog.records]
    assert len(got) == n_originals  # what arrived before the bad message goes back unchanged
    assert_server_alive(server)
    return errors[0]


# --- protocol limits ---------------------------------------------------------------------------
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_matrix_above_the_per_axis_limit_is_refused(server, caplog, axis):
    h = a_head()
    h.matrix_size[axis] = 5000  # limit: 4096 per axis; the data (5000 x ...) is never sent
    msg = check_refused(server, caplog, preamble() + image_message(h), "outside 1..4096 per axis")
    assert "refused" in msg and "5000" in msg


def test_empty_matrix_axis_is_refused(server, caplog):
    h = a_head()
    h.matrix_size[1] = 0
    check_refused(server, caplog, preamble() + image_message(h), "outside 1..4096 per axis")


@pytest.mark.parametrize("channels", [0, 257])
def test_channel_count_outside_1_to_256_is_refused(server, caplog, channels):
    h = a_head()
    h.channels = channels
    msg = check_refused(server, caplog, preamble() + image_message(h), "channels")
    assert f"{channels} channels" in msg and "refused" in msg


def test_image_above_the_size_limit_is_refused(make_server, caplog):
    srv = make_server(limits=Limits(max_image=2 * 2**20))  # serve --max-image-mb 2
    h = a_head()
    h.matrix_size[:] = (1024, 1024, 1)
    h.data_type = ismrmrd.DATATYPE_FLOAT  # 4 MiB
    msg = check_refused(srv, caplog, preamble() + image_message(h), "of pixel data")
    assert "4.0 MiB" in msg and "limit of 2.0 MiB" in msg, msg


def test_meta_attributes_above_the_text_limit_are_refused(server, caplog):
    h = a_head()
    payload = preamble() + struct.pack("<H", MessageId.IMAGE) + bytes(h) + struct.pack("<Q", 3 * 2**30)
    msg = check_refused(server, caplog, payload, "meta attributes")
    assert "3.0 GiB" in msg and "limit of 16.0 MiB" in msg and "refused" in msg, msg


def test_text_above_the_limit_is_refused(server, caplog):
    msg = check_refused(server, caplog, encode_config_file("headmask") + struct.pack("<HI", MessageId.HEADER, 3 * 2**30),
                        "HEADER declares 3.0 GiB")
    assert "above the limit of 16.0 MiB; refused" in msg, msg


def test_unknown_pixel_data_type_is_refused(server, caplog):
    h = a_head()
    h.data_type = 99
    check_refused(server, caplog, preamble() + image_message(h), "unknown data_type 99")


def test_unreadable_meta_xml_is_refused_and_earlier_images_go_back(server, caplog):
    images, _ = marker_series("axial")
    good = b"".join(encode_image(im) for im in images[:2])
    h = images[2].getHead()
    data = images[2].data.tobytes()
    bad = image_message(h, b"<ismrmrdMeta><meta><name>a</name><value>1", data)
    msg = check_refused(server, caplog, preamble() + good + bad, "unreadable meta attributes", n_originals=2)
    assert "ended early" in msg and "returned unchanged" in msg


def test_acquisition_above_the_size_limit_is_refused(server, caplog):
    a = ismrmrd.AcquisitionHeader()
    a.version = 1
    a.number_of_samples, a.active_channels = 16384, 1000  # 125 MiB of samples; limit 64 MiB
    payload = preamble() + struct.pack("<H", MessageId.ACQUISITION) + bytes(a)
    msg = check_refused(server, caplog, payload, "16384 samples x 1000 channels")
    assert "125.0 MiB" in msg and "64.0 MiB" in msg and "refused" in msg, msg


def test_acquisition_with_too_many_channels_is_refused(server, caplog):
    a = ismrmrd.AcquisitionHeader()
    a.version = 1
    a.number_of_samples, a.active_channels = 4, 2000  # small, but no coil has 2000 channels
    payload = preamble() + struct.pack("<H", MessageId.ACQUISITION) + bytes(a)
    msg = check_refused(server, caplog, payload, "2000 channels")
    assert "refused" in msg


def test_per_connection_stream_limit(make_server, caplog):
    images, _ = marker_series("axial")  # 12 slices of 40 x 36 uint16
    valid = len(preamble()) + sum(len(encode_image(im)) for im in images) + len(encode_close())
    srv = make_server(limits=Limits(max_stream=valid + 64))  # a valid study fits; one more slice does not
    payload = preamble() + b"".join(encode_image(im) for im in images) + image_message(images[0].getHead())
    msg = check_refused(srv, caplog, payload, "would take the connection past", n_originals=len(images))
    assert f"{(valid + 64) / 2**10:.1f} KiB" in msg and "refused" in msg, msg


def test_idle_timeout_ends_the_connection_with_a_message(make_server, caplog):
    srv = make_server(idle_timeout_s=0.5)
    images, _ = marker_series("axial")
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
    s.sendall(preamble() + encode_image(images[0]))  # ... and then nothing, without closing
    from openrecon_stroke.protocol import MessageReader, SocketReader

    r = MessageReader(SocketReader(s))
    texts, got = [], []
    while True:
        m = r.next()
        if m.id == MessageId.CLOSE:
            break
        (texts if m.id == MessageId.TEXT else got).append(m.value)
    s.close()
    assert len(got) == 1  # the one image that arrived goes back
    msg = next(t for t in texts if "ERROR" in t and "ended early" in t)
    assert "no data for 0.5 s" in msg, msg
    assert logged(caplog, "no data for 0.5 s")
    assert_server_alive(srv)


# --- the parallel gate --------------------------------------------------------------------------
class Occupancy(Stage):
    """Records when each study is inside the pipeline (an observer added after the real stages)."""

    name = "occupancy"

    def __init__(self, spans, lock):
        self.spans, self.lock = spans, lock

    def run(self, study):
        t0 = time.monotonic()
        time.sleep(0.4)
        with self.lock:
            self.spans.append((t0, time.monotonic()))
        return StageResult()


@pytest.mark.parametrize("max_parallel", [1, 2])
def test_parallel_gate_limits_studies_in_the_pipeline(make_server, monkeypatch, caplog, max_parallel):
    spans, lock = [], threading.Lock()
    monkeypatch.setattr(server_mod, "build_pipeline",
                        lambda name: Pipeline(name, [InputCheck(), HeadMask(), Occupancy(spans, lock)]))
    srv = make_server(max_parallel=max_parallel)
    series = [marker_series("axial", marker=(5 + 3 * n, 6, 3)) for n in range(3)]
    results = [None] * 3

    def go(n):
        results[n] = send_stream("127.0.0.1", srv.port, scanner_messages(series[n][0]), timeout_s=60)

    threads = [threading.Thread(target=go, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # every study is served in full, each with its own mask on its own marker
    for (images, lps), res in zip(series, results):
        assert res.closed_cleanly, res.texts
        (mask,) = by_role(res)[1].values()
        from conftest import brightest_lps

        assert np.allclose(brightest_lps(mask), lps, atol=1e-3)
    # at most max_parallel studies were in the pipeline at any moment
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    inside, most = 0, 0
    for _, step in events:
        inside += step
        most = max(most, inside)
    assert most == max_parallel, (most, spans)
    if max_parallel == 1:
        assert any("waiting for a free pipeline slot" in m for m in (r.getMessage() for r in caplog.records))


# --- geometry rejections in assemble_series, through the server -------------------------------
def _scale_read(images):
    for im in images:
        h = im.getHead()
        h.read_dir[:] = 2 * np.asarray(h.read_dir)
        im.setHead(h)


def _skew_phase(images):
    for im in images:
        h = im.getHead()
        p = np.asarray(h.read_dir) + np.asarray(h.phase_dir)
        h.phase_dir[:] = p / np.linalg.norm(p)
        im.setHead(h)


def _slice_dir_in_plane(images):
    for im in images:
        h = im.getHead()
        h.slice_dir[:] = h.read_dir
        im.setHead(h)


def _other_matrix(images):
    small = ismrmrd.Image.from_array(np.full((1, 36, 20), 10, np.uint16))
    h = images[4].getHead()
    h.matrix_size[:] = (20, 36, 1)
    small.setHead(h)
    images[4] = small


def _other_fov(images):
    h = images[3].getHead()
    h.field_of_view[0] *= 1.5
    images[3].setHead(h)


def _other_orientation(images):
    h = images[6].getHead()
    h.read_dir[:], h.phase_dir[:] = (0, 1, 0), (1, 0, 0)
    h.slice_dir[:] = (0, 0, -1)
    images[6].setHead(h)


def _same_position(images):
    h = images[5].getHead()
    h.position[:] = images[4].getHead().position
    images[5].setHead(h)


def _irregular_spacing(images):
    for im in images[7:]:
        h = im.getHead()
        h.position[2] += 3.0  # a 3 mm gap in a 6 mm stack
        im.setHead(h)


def _shifted_slice(images):
    h = images[2].getHead()
    h.position[0] += 8.0  # in-plane shift of one slice
    images[2].setHead(h)


def _mixed_3d(images):
    vol, _ = marker_series("axial", as_3d=True)
    images.append(vol[0])


def _zero_fov(images):
    h = images[0].getHead()
    h.field_of_view[2] = 0.0
    images[0].setHead(h)


@pytest.mark.parametrize("spoil,expect", [
    (_scale_read, "read_dir (2.0, 0.0, 0.0) is not a unit vector"),
    (_skew_phase, "read_dir and phase_dir are not orthogonal"),
    (_slice_dir_in_plane, "slice_dir is not perpendicular"),
    (_other_matrix, "slices have different matrix sizes (40x36 and 20x36)"),
    (_other_fov, "slices have different fields of view"),
    (_other_orientation, "slices have different orientations"),
    (_same_position, "1 slice(s) share a position with another slice"),
    (_irregular_spacing, "irregular slice spacing (6.000 to 9.000 mm"),
    (_shifted_slice, "slice positions are shifted in-plane by up to 8.00 mm"),
    (_mixed_3d, "some are 3D"),
    (_zero_fov, "all three values must be positive"),
])
def test_geometry_rejection_reaches_the_scanner(server, caplog, spoil, expect):
    images, _ = marker_series("axial")
    spoil(images)
    res = send_stream("127.0.0.1", server.port, scanner_messages(images), timeout_s=30)
    assert res.closed_cleanly and res.error is None, res.texts
    errors = [t for t in res.texts if "ERROR" in t and "series 1 skipped" in t]
    assert errors and expect in errors[0], res.texts
    assert logged(caplog, expect)
    # the originals still go back, byte for byte; nothing is derived from a broken series
    assert [im.to_bytes() for im in res.images] == [im.to_bytes() for im in images]
    assert not by_role(res)[1]
    assert_server_alive(server)


def test_bad_header_xml_and_bad_parameter_json_are_reported_and_the_study_still_runs(server, caplog):
    images, lps = marker_series("axial")
    payload = (encode_config_file("headmask") + encode_text(MessageId.HEADER, "<ismrmrdHeader><unclosed")
               + encode_text(MessageId.TEXT, '{"parameters": {"sendoriginal": }')
               + b"".join(encode_image(im) for im in images) + encode_close())
    texts, got, closed = raw_exchange(server.port, payload)
    assert closed
    assert any("WARNING" in t and "header could not be parsed" in t for t in texts), texts
    assert any("WARNING" in t and "not valid JSON" in t and "using default parameters" in t for t in texts), texts
    assert logged(caplog, "not valid JSON")
    assert len(got) == 2 * len(images)  # originals (default sendoriginal) + head mask
    assert_server_alive(server)
