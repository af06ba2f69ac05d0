"""openrecon_stroke.protocol on its own (no server): every message type written and read back
byte for byte, limits enforced before anything is allocated, and clear errors for malformed,
truncated or foreign streams."""

from __future__ import annotations

import ctypes
import io
import struct

import ismrmrd
import numpy as np
import pytest

from openrecon_stroke.protocol import (
    CONFIG_FILE_SIZE, BytesReader, Limits, MessageId, MessageReader, ProtocolError, StreamClosed, encode_acquisition,
    encode_close, encode_config_file, encode_image, encode_text,
)


def reader(payload: bytes, limits: Limits = Limits()) -> MessageReader:
    return MessageReader(BytesReader(io.BytesIO(payload)), limits)


def image(shape=(2, 3, 4, 5), dtype=np.float32, meta=None) -> ismrmrd.Image:
    data = np.arange(np.prod(shape), dtype=dtype).reshape(shape)
    img = ismrmrd.Image.from_array(data)
    h = img.getHead()
    h.image_index, h.image_series_index = 3, 9
    h.position[:] = (1.5, -2.0, 30.25)
    img.setHead(h)
    m = ismrmrd.Meta()
    for k, v in (meta or {}).items():
        m[k] = v
    img.meta = m
    return img


def acquisition(samples=16, channels=2, traj=2) -> ismrmrd.Acquisition:
    rng = np.random.default_rng(0)
    acq = ismrmrd.Acquisition.from_array(
        (rng.normal(size=(channels, samples)) + 1j * rng.normal(size=(channels, samples))).astype(np.complex64),
        rng.normal(size=(samples, traj)).astype(np.float32))
    acq.scan_counter = 42
    return acq


def test_every_message_reads_back_as_written():
    """Including an acquisition with a trajectory: on the wire it comes before the data."""
    img = image(meta={"SequenceDescriptionAdditional": "LESION", "WindowCenter": "500"})
    acq = acquisition()
    payload = (encode_config_file("headmask") + encode_text(MessageId.CONFIG_TEXT, "<config/>")
               + encode_text(MessageId.HEADER, "<ismrmrdHeader/>") + encode_text(MessageId.TEXT, "héllo")
               + encode_image(img) + encode_acquisition(acq) + encode_close())
    r = reader(payload)
    msgs = [r.next() for _ in range(7)]
    assert [m.id for m in msgs] == [MessageId.CONFIG_FILE, MessageId.CONFIG_TEXT, MessageId.HEADER, MessageId.TEXT,
                                    MessageId.IMAGE, MessageId.ACQUISITION, MessageId.CLOSE]
    assert [m.value for m in msgs[:4]] == ["headmask", "<config/>", "<ismrmrdHeader/>", "héllo"]
    got = msgs[4].value
    assert bytes(got.getHead()) == bytes(img.getHead())
    assert got.data.dtype == np.float32 and np.array_equal(got.data, img.data)
    assert got.meta["SequenceDescriptionAdditional"] == "LESION" and got.meta["WindowCenter"] == "500"
    a = msgs[5].value
    assert a.scan_counter == 42 and np.array_equal(a.data, acq.data) and np.array_equal(a.traj, acq.traj)
    assert r.r.total == len(payload)


def test_text_is_nul_terminated_and_config_file_padded():
    t = encode_text(MessageId.TEXT, "abc")
    assert t == struct.pack("<HI", MessageId.TEXT, 4) + b"abc\x00"
    c = encode_config_file("x")
    assert len(c) == 2 + CONFIG_FILE_SIZE and c[2:3] == b"x" and set(c[3:]) == {0}
    with pytest.raises(ValueError):
        encode_config_file("x" * CONFIG_FILE_SIZE)


@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.float32, np.complex64])
def test_image_data_types(dtype):
    img = image(shape=(1, 2, 3, 4), dtype=dtype)
    got = reader(encode_image(img)).next().value
    assert got.data.dtype == dtype and np.array_equal(got.data, img.data)


def test_limits_refuse_before_allocating():
    big_text = struct.pack("<HI", MessageId.TEXT, 10**9)  # declares 1 GB and sends nothing
    with pytest.raises(ProtocolError, match="above the limit"):
        reader(big_text).next()
    img = encode_image(image(shape=(1, 4, 64, 64)))
    with pytest.raises(ProtocolError, match="64.0 KiB of pixel data, above the limit of 1000 bytes"):
        reader(img, Limits(max_image=1000)).next()
    with pytest.raises(ProtocolError, match="outside 1..32 per axis"):
        reader(img, Limits(max_matrix=32)).next()
    with pytest.raises(ProtocolError, match="past"):
        reader(img, Limits(max_stream=1000)).next()
    acq = encode_acquisition(acquisition(samples=256, channels=4))
    with pytest.raises(ProtocolError, match="refused"):
        reader(acq, Limits(max_acquisition=100)).next()


def test_malformed_and_truncated_streams():
    with pytest.raises(ProtocolError, match="unknown message id 7"):
        reader(struct.pack("<H", 7)).next()
    with pytest.raises(StreamClosed, match="without a CLOSE"):
        reader(b"").next()
    whole = encode_image(image())
    with pytest.raises(StreamClosed, match="truncated"):
        reader(whole[:-10]).next()
    bad_type = bytearray(whole)
    h = ismrmrd.ImageHeader.from_buffer_copy(bytes(bad_type[2:2 + ctypes.sizeof(ismrmrd.ImageHeader)]))
    assert int(h.data_type) == ismrmrd.DATATYPE_FLOAT
    bad_type[2 + ismrmrd.ImageHeader.data_type.offset] = 99
    with pytest.raises(ProtocolError, match="unknown data_type 99"):
        reader(bytes(bad_type)).next()
