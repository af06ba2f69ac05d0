"""Shared fixtures: a real MRD server on a free loopback port, and synthetic image series
whose geometry is written out explicitly (independently of openrecon_stroke.geometry)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import ismrmrd
import numpy as np
import pytest

from openrecon_stroke.server import MrdServer, ServerSettings
from simulator.anatomy import rotation_deg as rotation  # rz @ ry @ rx, angles in degrees

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("OPENRECON_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def server():
    srv = MrdServer(("127.0.0.1", 0), ServerSettings(idle_timeout_s=20.0))
    srv.start_background()
    yield srv
    srv.shutdown()
    srv.server_close()


#: (read_dir, phase_dir) in LPS for each named orientation; slice_dir = read x phase.
ORIENTATIONS = {
    "axial": ((1, 0, 0), (0, 1, 0)),
    "sagittal": ((0, 1, 0), (0, 0, -1)),
    "coronal": ((1, 0, 0), (0, 0, -1)),
    "oblique": (tuple(rotation(15, -20, 10) @ [1, 0, 0]), tuple(rotation(15, -20, 10) @ [0, 1, 0])),
    "flipped": ((-1, 0, 0), (0, -1, 0)),
}


def pixel_lps(h, i, j, k=0):
    """LPS (mm) of pixel column i, row j (and 3D slice k) of an MRD image, from its header alone
    (position = centre of the field of view)."""
    nx, ny, nz = h.matrix_size
    dx, dy, dz = (h.field_of_view[0] / nx, h.field_of_view[1] / ny, h.field_of_view[2] / nz)
    return (np.array(h.position) + (i - (nx - 1) / 2) * dx * np.array(h.read_dir)
            + (j - (ny - 1) / 2) * dy * np.array(h.phase_dir)
            + (k - (nz - 1) / 2) * dz * np.array(h.slice_dir))


def marker_series(orientation: str, *, shape=(40, 36, 12), spacing=(3.0, 3.5, 6.0), marker=(25, 10, 7),
                  centre=(5.0, -12.0, 20.0), as_3d=False, reverse=False, series_index=1, dtype=np.uint16):
    """Images of a dark volume with one bright voxel; returns (images, marker LPS).

    ``shape`` is (nx, ny, nz); ``marker`` the (i, j, k) voxel that is bright.
    """
    read, phase = (np.asarray(v, float) for v in ORIENTATIONS[orientation])
    normal = np.cross(read, phase)
    nx, ny, nz = shape
    dx, dy, dz = spacing
    data = np.full((nz, ny, nx), 10, dtype)
    i, j, k = marker
    data[k, j, i] = 1000
    images = []
    if as_3d:
        img = ismrmrd.Image.from_array(data)
        h = img.getHead()
        h.field_of_view[:] = (nx * dx, ny * dy, nz * dz)
        h.position[:] = centre
        h.read_dir[:], h.phase_dir[:], h.slice_dir[:] = read, phase, normal
        h.image_series_index = series_index
        h.image_type = ismrmrd.IMTYPE_MAGNITUDE
        img.setHead(h)
        img.data[:] = data[None]
        images = [img]
        lps = pixel_lps(h, i, j, k)
    else:
        for s in range(nz):
            img = ismrmrd.Image.from_array(data[s:s + 1])
            h = img.getHead()
            h.field_of_view[:] = (nx * dx, ny * dy, dz)
            h.position[:] = np.asarray(centre) + (s - (nz - 1) / 2) * dz * normal
            h.read_dir[:], h.phase_dir[:], h.slice_dir[:] = read, phase, normal
            h.slice = s
            h.image_index = s + 1
            h.image_series_index = series_index
            h.image_type = ismrmrd.IMTYPE_MAGNITUDE
            img.setHead(h)
            img.data[:] = data[s:s + 1][None]
            images.append(img)
            if s == k:
                lps = pixel_lps(h, i, j)
        if reverse:
            images = images[::-1]
    return images, lps


def brightest_lps(images):
    """LPS of the brightest pixel over a list of returned images (independent of the package)."""
    best, where = -np.inf, None
    for im in images:
        d = im.data[0]  # (z, y, x)
        k, j, i = np.unravel_index(int(np.argmax(d)), d.shape)
        if d[k, j, i] > best:
            best, where = d[k, j, i], pixel_lps(im.getHead(), i, j, k)
    return where


@pytest.fixture(autouse=True)
def _quiet_logs(caplog):
    caplog.set_level(logging.INFO)


#: Fixtures that run the full pipeline once per session; the first test to ask for one pays for
#: it, so its time limit covers the set-up on a slow machine too.
SESSION_PIPELINE_FIXTURES = {"served_t1_first", "served_flair_first", "t1_preprocessed", "t1_analysed"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SESSION_PIPELINE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.timeout(1500))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """What this run did not test, and why (grouped by reason), before pytest's last line."""
    tr = terminalreporter
    skipped = tr.stats.get("skipped", [])
    deselected = tr.stats.get("deselected", [])
    if not skipped and not deselected:
        return
    tr.section("not tested in this run", sep="=", bold=True)
    by_reason: dict[str, list[str]] = {}
    for rep in skipped:
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        reason = reason.removeprefix("Skipped: ")
        by_reason.setdefault(reason, []).append(rep.nodeid.removeprefix("tests/"))
    for reason, ids in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
        shown = ", ".join(ids[:4]) + (f", ... ({len(ids) - 4} more)" if len(ids) > 4 else "")
        tr.write_line(f"SKIPPED {len(ids)}: {reason}")
        tr.write_line(f"    {shown}")
    if deselected:
        tr.write_line(f"DESELECTED {len(deselected)} (by -k / -m on the command line)")


# --- one stroke study through the real server, shared by the full-pipeline tests --------------
#: Every UI switch that leaves a series out on the scanner.
SEND_SWITCHES = ("sendoriginal", "sendbrainmask", "sendlesion", "sendanomaly", "sendoverlay")


@pytest.fixture(scope="session")
def stroke_phantom(tmp_path_factory):
    """The synthetic stroke study (``studies.PHANTOM_ARGS``): t1.h5, flair.h5 and truth masks."""
    from simulator.__main__ import main as simulator_main
    from studies import PHANTOM_ARGS

    d = tmp_path_factory.mktemp("stroke_phantom")
    assert simulator_main(["phantom", "--out", str(d), *PHANTOM_ARGS]) == 0
    return d


@pytest.fixture(scope="session")
def served_t1_first(stroke_phantom, tmp_path_factory):
    """As a scanner sends it: T1-w, then the FLAIR (fused with the cached T1-w), then the FLAIR
    again with every send switch off except the report page."""
    from studies import serve_connections

    return serve_connections(stroke_phantom, tmp_path_factory.mktemp("served_t1_first"), [
        ("t1", "t1", {}), ("flair", "flair", {}),
        ("flair_switches_off", "flair", {k: "false" for k in SEND_SWITCHES})])


@pytest.fixture(scope="session")
def served_flair_first(stroke_phantom, tmp_path_factory):
    """The other order: FLAIR alone first (FLAIR model), then the T1-w fused with the cached FLAIR."""
    from studies import serve_connections

    return serve_connections(stroke_phantom, tmp_path_factory.mktemp("served_flair_first"), [
        ("flair", "flair", {}), ("t1", "t1", {})])


@pytest.fixture(scope="session")
def stroke_phantom_t1_dicom(stroke_phantom):
    """The phantom's T1-w as a folder of classic DICOM slices (as a scanner exports it)."""
    import json

    from openrecon_stroke.inputs import load_volume
    from studies import write_classic_mr

    doc = json.loads((stroke_phantom / "lesions.json").read_text())
    vol = load_volume(stroke_phantom / "t1.h5")
    folder = stroke_phantom / "t1_dicom"
    write_classic_mr(vol, folder, {
        "PatientName": f"Phantom^Stroke{doc['seed']}", "PatientID": doc["patient_id"],
        "StudyInstanceUID": doc["study_uid"], "StudyDate": "20260101",
        "FrameOfReferenceUID": doc["frame_of_reference_uid"], "SeriesDescription": doc["series"]["t1"]["protocol_name"]})
    return folder


@pytest.fixture(scope="session")
def t1_preprocessed(stroke_phantom_t1_dicom):
    """The phantom's T1-w, read from its DICOM slices, after the real input check, preprocessing
    and template registration stages (a Study)."""
    from openrecon_stroke.inputs import load_volume
    from openrecon_stroke.pipeline import Pipeline
    from openrecon_stroke.stages.basic import InputCheck
    from openrecon_stroke.stages.brain import Preprocess
    from openrecon_stroke.study import Study

    from openrecon_stroke.stages.template import TemplateRegistrationStage

    study = Study(inputs={"t1": load_volume(stroke_phantom_t1_dicom)})
    Pipeline("pre", [InputCheck(), Preprocess(), TemplateRegistrationStage()]).run(study)
    assert study.stage_status == {"input_check": "ok", "preprocess": "ok", "template": "ok"}, study.warnings
    return study


def continue_study(base, stages, **raw):
    """``stages`` on a copy of ``base`` (inputs and preprocessing shared) with UI values ``raw``."""
    from openrecon_stroke.params import coerce
    from openrecon_stroke.pipeline import Pipeline
    from openrecon_stroke.study import Study

    s = Study(inputs=base.inputs, params=coerce(raw), derived=list(base.derived), findings=dict(base.findings),
              warnings=list(base.warnings), timings_s=dict(base.timings_s), stage_status=dict(base.stage_status),
              results=dict(base.results))
    Pipeline("p", list(stages)).run(s)
    return s


@pytest.fixture(scope="session")
def t1_analysed(t1_preprocessed):
    """... and then the rest of the default pipeline (from the lesion stage on, as registered)
    with default parameters."""
    from openrecon_stroke.pipeline import build_pipeline
    from openrecon_stroke.pipeline_registry import DEFAULT_PIPELINE

    stages = build_pipeline(DEFAULT_PIPELINE).stages
    first = [st.name for st in stages].index("lesion")
    s = continue_study(t1_preprocessed, stages[first:])
    assert all(v == "ok" for v in s.stage_status.values()), s.warnings
    return s
