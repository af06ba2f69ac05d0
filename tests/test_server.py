"""The MRD server over a real TCP socket: round trips, geometry, raw data, bad streams."""

from __future__ import annotations

import json
import socket
import struct
import threading

import ismrmrd
import numpy as np
import pytest

from openrecon_stroke.geometry import Grid, Volume
from openrecon_stroke.mrdfile import make_header_xml
from openrecon_stroke.protocol import (
    MessageId, MessageReader, SocketReader, encode_close, encode_config_file, encode_image, encode_text,
)
from simulator.raw import volume_to_acquisitions
from simulator.replay import send_stream

from conftest import ORIENTATIONS, brightest_lps, marker_series
from studies import wait_for

HEADER = make_header_xml(protocol_name="t1_mprage_tra", ti_ms=900, tr_ms=2300, te_ms=3)


def scanner_messages(images=(), acquisitions=(), *, config="headmask", header=HEADER, params=None):
    yield encode_config_file(config)
    yield encode_text(MessageId.HEADER, header)
    yield encode_text(MessageId.TEXT, json.dumps({"parameters": params or {}}))
    for a in acquisitions:
        yield struct.pack("<H", MessageId.ACQUISITION) + a.to_bytes()
    for im in images:
        yield encode_image(im)
    yield encode_close()


def by_role(res):
    """Returned series split into originals and derived (by meta)."""
    orig, derived = {}, {}
    for sidx, ims in res.series().items():
        target = derived if "ImageProcessingHistory" in ims[0].meta else orig
        target[sidx] = ims
    return orig, derived


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
@pytest.mark.parametrize("as_3d", [False, True])
def test_marker_comes_back_at_same_lps_point(server, orientation, as_3d):
    images, lps = marker_series(orientation, as_3d=as_3d, reverse=orientation == "flipped")
    sent = [im.to_bytes() for im in images]
    res = send_stream("127.0.0.1", server.port, scanner_messages(images), timeout_s=30)
    assert res.closed_cleanly and res.error is None, res.texts
    orig, derived = by_role(res)
    # originals first, unchanged, byte for byte
    assert res.images[:len(images)] and [im.to_bytes() for im in res.images[:len(images)]] == sent
    assert list(orig) == [1]
    (mask_idx, mask), = derived.items()
    assert mask_idx != 1
    assert len(mask) == len(images)
    assert np.allclose(brightest_lps(orig[1]), lps, atol=1e-3)
    assert np.allclose(brightest_lps(mask), lps, atol=1e-3)
    assert int(sum(im.data.sum() for im in mask)) == 1  # exactly the marker voxel
    by_pos = {tuple(np.round(im.getHead().position, 3)): im for im in images}
    for out in mask:
        ho = out.getHead()
        hs = by_pos[tuple(np.round(ho.position, 3))].getHead()
        for f in ("position", "read_dir", "phase_dir", "slice_dir", "field_of_view", "matrix_size"):
            assert np.allclose(getattr(hs, f)[:], getattr(ho, f)[:]), f
        assert out.meta["SequenceDescriptionAdditional"] == "HEADMASK"
        assert out.meta["DataRole"] == "Segmentation"
        assert "IceMiniHead" not in out.meta
    assert len({tuple(im.getHead().position) for im in mask}) == len(mask)  # no two at one position
    assert any("report" in t for t in res.texts)


@pytest.mark.parametrize("as_3d", [False, True])
def test_raw_kspace_round_trip(server, as_3d):
    rot = np.eye(3) if as_3d else np.array([[0, 0, 1], [1, 0, 0], [0, -1, 0]], float).T
    grid = Grid((12, 32, 40), (3.0, 3.5, 6.0), rot, (-50.0, -60.0, -30.0))
    data = np.full(grid.shape, 10, np.float32)
    data[7, 10, 25] = 1000
    marker = grid.index_to_lps((25, 10, 7))
    acqs, kw = volume_to_acquisitions(Volume(data, grid), as_3d=as_3d)
    header = make_header_xml(protocol_name="t1_raw", ti_ms=900, **kw)
    res = send_stream("127.0.0.1", server.port, scanner_messages(acquisitions=acqs, header=header), timeout_s=60)
    assert res.closed_cleanly, res.texts
    orig, derived = by_role(res)
    assert len(orig) == 1 and len(derived) == 1
    (recon,) = orig.values()
    assert len(recon) == (1 if as_3d else 12)
    assert np.allclose(brightest_lps(recon), marker, atol=1e-3)
    assert np.allclose(brightest_lps(next(iter(derived.values()))), marker, atol=1e-3)
    peak = max(im.data.max() for im in recon)
    assert abs(peak - 1000) < 1


def test_sendoriginal_false_and_passthrough(server):
    images, _ = marker_series("axial")
    res = send_stream("127.0.0.1", server.port, scanner_messages(images, params={"sendoriginal": "false"}),
                      timeout_s=30)
    orig, derived = by_role(res)
    assert not orig and len(derived) == 1
    res = send_stream("127.0.0.1", server.port, scanner_messages(images, config="passthrough"), timeout_s=30)
    orig, derived = by_role(res)
    assert len(orig) == 1 and not derived


def test_unknown_config_falls_back_with_warning(server):
    images, _ = marker_series("axial")
    # the default pipeline runs (HD-BET, then a skip: no head): allow for a loaded machine
    res = send_stream("127.0.0.1", server.port, scanner_messages(images, config="../../etc/passwd"), timeout_s=300)
    orig, _ = by_role(res)
    assert len(orig) == 1
    assert any("is not one of" in t and "running 'openrecon-stroke'" in t for t in res.texts)
    assert any("pipeline 'openrecon-stroke'" in t for t in res.texts)  # the report names it


def test_bad_parameter_values_fall_back(server):
    images, _ = marker_series("axial")
    res = send_stream("127.0.0.1", server.port,
                      scanner_messages(images, params={"sendoriginal": "perhaps", "bogus": 1}), timeout_s=30)
    orig, derived = by_role(res)
    assert len(orig) == 1  # default (true) kept
    assert any("sendoriginal" in t and "expected true or false" in t for t in res.texts)


def test_liveness_probe_is_not_an_error(server):
    res = send_stream("127.0.0.1", server.port, iter([encode_config_file("openrecon-stroke"), encode_close()]),
                      timeout_s=10)
    assert res.closed_cleanly and not res.images
    assert not any("ERROR" in t for t in res.texts)
    # connect-and-close without any bytes
    s = socket.create_connection(("127.0.0.1", server.port))
    s.close()
    assert_server_alive(server)


def assert_server_alive(server):
    images, lps = marker_series("axial")
    res = send_stream("127.0.0.1", server.port, scanner_messages(images), timeout_s=30)
    assert res.closed_cleanly
    assert np.allclose(brightest_lps(by_role(res)[1].popitem()[1]), lps, atol=1e-3)


def raw_exchange(port, payload: bytes, half_close=True, timeout=15):
    """Send raw bytes; collect the server's messages until CLOSE or EOF."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(payload)
    if half_close:
        s.shutdown(socket.SHUT_WR)
    r = MessageReader(SocketReader(s))
    texts, images = [], []
    closed = False
    try:
        while True:
            m = r.next()
            if m.id == MessageId.CLOSE:
                closed = True
                break
            (texts if m.id == MessageId.TEXT else images).append(m.value)
    except Exception:
        pass
    s.close()
    return texts, images, closed


def preamble():
    return (encode_config_file("headmask") + encode_text(MessageId.HEADER, HEADER)
            + encode_text(MessageId.TEXT, json.dumps({"parameters": {}})))


def test_truncated_stream_returns_received_originals(server):
    images, _ = marker_series("axial")
    payload = preamble() + b"".join(encode_image(im) for im in images[:5])
    payload += encode_image(images[5])[:100]  # cut inside an image
    texts, got, closed = raw_exchange(server.port, payload)
    assert closed
    assert len(got) == 5  # nothing lost
    assert any("ended early" in t and "truncated" in t for t in texts)
    assert_server_alive(server)


def test_unknown_message_id(server):
    images, _ = marker_series("axial")
    payload = preamble() + encode_image(images[0]) + struct.pack("<H", 4242) + b"xxxx"
    texts, got, closed = raw_exchange(server.port, payload)
    assert closed and len(got) == 1
    assert any("unknown message id 4242" in t for t in texts)
    assert_server_alive(server)


def test_garbage_header_is_reported_and_images_still_processed(server):
    images, _ = marker_series("axial")
    payload = (encode_config_file("headmask") + encode_text(MessageId.HEADER, "<notxml<<")
               + b"".join(encode_image(im) for im in images) + encode_close())
    texts, got, closed = raw_exchange(server.port, payload)
    assert closed
    assert any("header could not be parsed" in t for t in texts)
    assert len(got) == 2 * len(images)  # originals + derived mask
    assert_server_alive(server)


def test_client_vanishes_mid_series(server, caplog):
    images, _ = marker_series("axial")
    done = len(server.stats)
    s = socket.create_connection(("127.0.0.1", server.port))
    s.sendall(preamble() + b"".join(encode_image(im) for im in images[:3]) + encode_image(images[3])[:50])
    s.close()  # gone, without CLOSE
    wait_for(lambda: len(server.stats) > done, 60, "the server to finish the connection")
    # the connection ended the way it should: the truncation was seen and logged, nothing crashed
    # (the handler catches every exception, so "the server is alive" alone would prove nothing)
    msgs = [r.getMessage() for r in caplog.records]
    assert any("received 3 image(s)" in m and "stopped early" in m and "truncated" in m for m in msgs), msgs
    assert not any("internal error" in m for m in msgs), msgs
    assert not any(r.exc_info for r in caplog.records), "a traceback was logged"
    assert_server_alive(server)


def test_image_data_not_matching_header(server):
    images, _ = marker_series("axial")
    bad = bytearray(encode_image(images[0]))
    # claim a larger matrix than the data that follows: the stream falls out of step
    off = 2 + 2 + 2 + 8 + 4
    struct.pack_into("<HHH", bad, off, 64, 64, 1)
    payload = preamble() + bytes(bad) + encode_close()
    texts, got, closed = raw_exchange(server.port, payload)
    assert closed
    assert any("ERROR" in t and ("truncated" in t or "ended early" in t) for t in texts)
    assert_server_alive(server)


def test_absurd_sizes_refused_before_allocation(server):
    images, _ = marker_series("axial")
    # a text declaring 3 GiB
    texts, _, closed = raw_exchange(server.port, encode_config_file("x") + struct.pack("<HI", 5, 3 * 2**30))
    assert closed and any("above the limit" in t for t in texts)
    # an image declaring 4000 x 4000 x 4000 float64
    bad = bytearray(encode_image(images[0]))
    struct.pack_into("<HH", bad, 2, 1, ismrmrd.DATATYPE_DOUBLE)
    struct.pack_into("<HHH", bad, 2 + 2 + 2 + 8 + 4, 4000, 4000, 4000)
    texts, _, closed = raw_exchange(server.port, preamble() + bytes(bad[:300]))
    assert closed and any("refused" in t for t in texts)
    assert_server_alive(server)


def test_two_clients_at_once_get_their_own_results(server):
    a, lps_a = marker_series("axial", marker=(5, 6, 3))
    b, lps_b = marker_series("sagittal", marker=(30, 20, 9))
    out = {}

    def go(key, ims):
        out[key] = send_stream("127.0.0.1", server.port, scanner_messages(ims), timeout_s=60)

    ts = [threading.Thread(target=go, args=("a", a)), threading.Thread(target=go, args=("b", b))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for key, ims, lps in (("a", a, lps_a), ("b", b, lps_b)):
        res = out[key]
        assert res.closed_cleanly
        orig, derived = by_role(res)
        assert sum(len(v) for v in orig.values()) == len(ims)
        assert np.allclose(brightest_lps(next(iter(derived.values()))), lps, atol=1e-3)


def test_localizer_is_skipped_with_message_and_originals_back(server):
    images, _ = marker_series("axial", shape=(40, 36, 2), marker=(3, 3, 1))
    res = send_stream("127.0.0.1", server.port, scanner_messages(images), timeout_s=30)
    orig, derived = by_role(res)
    assert len(orig) == 1 and not derived
    assert any("localizer" in t for t in res.texts)


def test_nan_pixels_are_reported(server):
    images, lps = marker_series("axial", dtype=np.float32)
    images[0].data[0, 0, 0, 0] = np.nan
    res = send_stream("127.0.0.1", server.port, scanner_messages(images), timeout_s=30)
    assert res.closed_cleanly
    assert any("NaN" in t for t in res.texts)
    assert np.allclose(brightest_lps(by_role(res)[1].popitem()[1]), lps, atol=1e-3)


def test_ui_config_choice_selects_pipeline_when_config_message_is_the_clients_default(server):
    images, _ = marker_series("axial")
    res = send_stream("127.0.0.1", server.port,
                      scanner_messages(images, config="default", params={"config": "passthrough"}), timeout_s=30)
    orig, derived = by_role(res)
    assert len(orig) == 1 and not derived
    assert not any("is not one of" in t for t in res.texts)
    assert any("pipeline 'passthrough'" in t for t in res.texts)
