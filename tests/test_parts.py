"""Parameters, wire-format details, pipeline failure handling, saving and replaying streams."""

from __future__ import annotations

import io
import json
import socket
import threading

import numpy as np
import pytest

from openrecon_stroke import params as P
from openrecon_stroke import pipeline as pipeline_mod
from openrecon_stroke.mrdfile import read as read_mrd
from openrecon_stroke.pipeline import Pipeline, resolve_pipeline_name
from openrecon_stroke.stages.base import Stage, StageResult
from openrecon_stroke.protocol import (
    BytesReader, MessageId, MessageReader, SocketReader, encode_close, encode_config_file, encode_image,
    encode_text,
)
from openrecon_stroke.server import MrdServer, ServerSettings
from openrecon_stroke.stages.basic import HeadMask
from simulator.__main__ import main as simulator_main
from simulator.replay import send_stream

from conftest import brightest_lps, marker_series


# --- parameters -----------------------------------------------------------------------------
def test_parameters_coerce_strings_and_reject_nonsense():
    p = P.coerce({"sendoriginal": "FALSE", "contrast": "Flair", "config": "passthrough"})
    assert p["sendoriginal"] is False and p["contrast"] == "flair" and p["config"] == "passthrough"
    assert not p.warnings
    p = P.coerce({"sendoriginal": "maybe", "contrast": "dwi", "zzz": 3})
    assert p["sendoriginal"] is True and p["contrast"] == "auto"
    assert len(p.warnings) == 3
    num = P.Parameter("thr", "Threshold", "double", 0.2, "x", minimum=0.0, maximum=1.0)
    assert num.coerce("0.5") == 0.5
    for bad in ("nan", "2", "abc", True):
        with pytest.raises(ValueError):
            num.coerce(bad)
    with pytest.raises(ValueError):
        P.Parameter("bad_id", "x", "boolean", True, "x")


def test_parameter_text_parsing():
    assert P.parse_parameter_text('{"parameters": {"a": 1}}\x00') == {"a": 1}
    assert P.parse_parameter_text("just a log line") is None
    with pytest.raises(ValueError, match="not valid JSON"):
        P.parse_parameter_text('{"parameters": ')
    assert P.parse_cli_params(["a=1", "b = x=y"]) == {"a": "1", "b": "x=y"}
    with pytest.raises(ValueError):
        P.parse_cli_params(["novalue"])


def test_config_names_only_select_from_registry():
    for hostile in ("../../etc/passwd", "os.system('rm -rf /')", "openrecon_stroke.server", "", None, "x" * 5000):
        name, warn = resolve_pipeline_name(hostile)
        assert name == "openrecon-stroke" and warn
    assert resolve_pipeline_name("PassThrough") == ("passthrough", None)


# --- wire format --------------------------------------------------------------------------
def test_nul_terminated_text_and_header_and_partial_reads():
    images, _ = marker_series("axial", shape=(16, 12, 8), marker=(3, 4, 5))
    payload = (encode_config_file("openrecon-stroke") + encode_text(MessageId.HEADER, "<x/>")
               + encode_text(MessageId.TEXT, "hello") + encode_image(images[0]) + encode_close())
    assert payload[2:2 + 16].rstrip(b"\x00") == b"openrecon-stroke"
    a, b = socket.socketpair()

    def trickle():  # one byte at a time: every read is partial
        for i in range(len(payload)):
            a.send(payload[i:i + 1])
        a.close()

    t = threading.Thread(target=trickle)
    t.start()
    r = MessageReader(SocketReader(b))
    got = [r.next() for _ in range(5)]
    t.join()
    assert [m.id for m in got] == [MessageId.CONFIG_FILE, MessageId.HEADER, MessageId.TEXT, MessageId.IMAGE,
                                   MessageId.CLOSE]
    assert got[1].value == "<x/>" and got[2].value == "hello"
    assert np.array_equal(got[3].value.data, images[0].data)


def test_waveforms_are_skipped():
    import ismrmrd

    w = ismrmrd.Waveform.from_array(np.arange(20, dtype=np.uint32).reshape(2, 10))
    buf = io.BytesIO()
    buf.write(np.uint16(MessageId.WAVEFORM).tobytes())
    w.serialize_into(buf.write)
    buf.write(encode_close())
    r = MessageReader(BytesReader(io.BytesIO(buf.getvalue())))
    assert r.next().id == MessageId.WAVEFORM
    assert r.next().id == MessageId.CLOSE


# --- a failing stage ------------------------------------------------------------------------
class Boom(Stage):
    name = "boom"

    def run(self, study):
        raise RuntimeError("model file is damaged")


class NeedsMissing(Stage):
    name = "needs_missing"
    needs = ("lesion_mask",)

    def run(self, study):  # pragma: no cover - must be skipped
        return StageResult()


def test_failed_stage_is_reported_and_originals_and_other_outputs_still_go_back(monkeypatch):
    monkeypatch.setattr(pipeline_mod, "build_pipeline",
                        lambda name: Pipeline(name, [Boom(), NeedsMissing(), HeadMask()]))
    import openrecon_stroke.server as server_mod

    monkeypatch.setattr(server_mod, "build_pipeline", pipeline_mod.build_pipeline)
    srv = MrdServer(("127.0.0.1", 0), ServerSettings(idle_timeout_s=20))
    srv.start_background()
    try:
        images, lps = marker_series("coronal")
        from test_server import scanner_messages

        res = send_stream("127.0.0.1", srv.port, scanner_messages(images), timeout_s=30)
    finally:
        srv.shutdown()
        srv.server_close()
    assert res.closed_cleanly
    assert any("boom failed: model file is damaged" in t for t in res.texts)
    assert any("needs_missing skipped" in t for t in res.texts)
    series = res.series()
    assert len(series) == 2  # originals + head mask
    assert np.allclose(brightest_lps(series[1]), lps, atol=1e-3)


# --- save-data and replay CLI -------------------------------------------------------------------
def test_save_data_then_replay_cli_reproduces_outputs(tmp_path, capsys):
    srv = MrdServer(("127.0.0.1", 0), ServerSettings(idle_timeout_s=20, save_dir=tmp_path / "saved"))
    (tmp_path / "saved").mkdir()
    srv.start_background()
    try:
        images, lps = marker_series("oblique")
        from test_server import scanner_messages

        first = send_stream("127.0.0.1", srv.port,
                            scanner_messages(images, params={"contrast": "t1"}), timeout_s=30)
        saved = sorted((tmp_path / "saved").glob("*.h5"))
        assert len(saved) == 1
        s = read_mrd(saved[0])
        assert s.config == "headmask" and s.parameters == {"contrast": "t1"}
        assert len(s.images) == len(images) and "t1_mprage_tra" in s.header_xml
        out = tmp_path / "returned.h5"
        rc = simulator_main(["replay", str(saved[0]), "--port", str(srv.port), "--out", str(out)])
        assert rc == 0
    finally:
        srv.shutdown()
        srv.server_close()
    back = read_mrd(out)
    assert len(back.images) == len(first.images)
    for a, b in zip(sorted(first.images, key=lambda i: (i.image_series_index, i.slice)),
                    sorted(back.images, key=lambda i: (i.image_series_index, i.slice))):
        assert np.array_equal(a.data, b.data)
        assert np.allclose(a.getHead().position[:], b.getHead().position[:])
    pngs = sorted(tmp_path.glob("returned_series*.png"))
    assert len(pngs) == 2 and any("HEADMASK" in p.name for p in pngs)
    assert "series 1" in capsys.readouterr().out


def test_replay_reports_unreachable_server(tmp_path, marker_file):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc = simulator_main(["replay", str(marker_file), "--port", str(port), "--out", str(tmp_path / "o.h5")])
    assert rc == 3


@pytest.fixture
def marker_file(tmp_path):
    from openrecon_stroke.mrdfile import MrdStream, write

    images, _ = marker_series("axial")
    return write(tmp_path / "m.h5", MrdStream(header_xml="", images=images))
