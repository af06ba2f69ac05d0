"""The preprocessing stage through the real server: HD-BET brain masks on a synthetic study,
T1-w and FLAIR on separate connections fused through the study cache, non-brain input refused."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from openrecon_stroke.geometry import Grid, Volume, assemble_series, group_series
from openrecon_stroke.metrics import dice
from openrecon_stroke.mrdfile import MrdStream, make_header_xml, read, volume_to_images, write
from openrecon_stroke.server import MrdServer, ServerSettings
from simulator.__main__ import main as simulator_main
from simulator.replay import replay_file

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    d = tmp_path_factory.mktemp("phantom")
    assert simulator_main(["phantom", "--out", str(d), "--seed", "5"]) == 0
    return d


@pytest.fixture
def cached_server(tmp_path):
    srv = MrdServer(("127.0.0.1", 0), ServerSettings(idle_timeout_s=60, cache_dir=tmp_path / "cache"))
    srv.start_background()
    yield srv
    srv.shutdown()
    srv.server_close()


def derived(res, suffix):
    for sidx, ims in res.series().items():
        if ims[0].meta.get("SequenceDescriptionAdditional") == suffix:
            return assemble_series(ims)
    raise AssertionError(f"no {suffix} series among {list(res.series())}; texts: {res.texts}")


def test_t1_then_flair_on_separate_connections(cached_server, phantom):
    r1 = replay_file(phantom / "t1.h5", port=cached_server.port, timeout_s=300)
    assert r1.closed_cleanly
    m1 = derived(r1, "BRAINMASK")
    truth1 = sitk.ReadImage(str(phantom / "t1_brain_mask.nii.gz"))
    assert m1.grid.same_as(Grid.from_sitk(truth1))
    assert dice(m1.data, sitk.GetArrayFromImage(truth1)) > 0.93

    r2 = replay_file(phantom / "flair.h5", port=cached_server.port, timeout_s=300)
    report = next(t for t in r2.texts if "report" in t)
    assert "t1_from_earlier_series" in report
    assert "'ok': True" in report, report  # registration passed its check
    # the FLAIR took the T1-w brain mask through the registration: no second HD-BET run
    timings = next(ln for ln in report.splitlines() if ln.startswith("preprocess_timings_s:"))
    assert "brain_extraction" not in timings, timings
    m2 = derived(r2, "BRAINMASK")
    truth2 = sitk.ReadImage(str(phantom / "flair_brain_mask.nii.gz"))
    assert m2.grid.same_as(Grid.from_sitk(truth2))
    assert dice(m2.data, sitk.GetArrayFromImage(truth2)) > 0.9
    # the originals came back first and unchanged
    sent = read(phantom / "flair.h5").images
    assert all(np.array_equal(a.data, b.data) for a, b in zip(sent, r2.images[:len(sent)]))


def test_non_brain_input_is_refused_with_a_clear_message(cached_server, tmp_path):
    # a 'knee': a cylinder of soft tissue with a bright core, 1 mm, 160 x 160 x 60
    g = Grid((60, 160, 160), (1.0, 1.0, 2.0), np.eye(3), (-80.0, -80.0, -60.0))
    z, y, x = np.meshgrid(np.arange(60), np.arange(160) - 80, np.arange(160) - 80, indexing="ij")
    r = np.hypot(x, y)
    data = np.where(r < 60, 300.0, 0.0) + np.where(r < 20, 500.0, 0.0)
    data += np.random.default_rng(0).normal(0, 8, data.shape) * (r < 60)
    vol = Volume(np.clip(data, 0, None).astype(np.float32), g)
    f = write(tmp_path / "knee.h5", MrdStream(header_xml=make_header_xml(protocol_name="t1_tse_sag_knee"),
                                             images=volume_to_images(vol, 1)))
    res = replay_file(f, port=cached_server.port, parameters={"contrast": "t1"}, timeout_s=300)
    assert res.closed_cleanly
    assert any("does not look like a head scan" in t for t in res.texts), res.texts
    assert len(res.series()) == 1  # originals only
    assert len(res.images) == 60
