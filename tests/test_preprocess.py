"""Preprocessing parts: RAS reorientation, N4, rigid registration with its check, study cache."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import SimpleITK as sitk

from openrecon_stroke.geometry import Grid
from openrecon_stroke.preprocess import (
    RegistrationCheck, better_probes, from_ras, n4_correct, orientation_code, register_rigid, resample_spacing, to_ras,
)
from openrecon_stroke.study_cache import StudyCache, study_key

from conftest import rotation


def blob_head(grid: Grid, seed=0) -> sitk.Image:
    """A head-like image: ellipsoid 'brain' with internal structure, a bright rim, noise."""
    nz, ny, nx = grid.shape
    idx = np.stack(np.meshgrid(np.arange(nx), np.arange(ny), np.arange(nz), indexing="xy"), -1).reshape(-1, 3)
    p = grid.index_to_lps(idx).reshape(ny, nx, nz, 3).transpose(2, 0, 1, 3)
    r = np.sqrt((p[..., 0] / 60) ** 2 + (p[..., 1] / 75) ** 2 + (p[..., 2] / 60) ** 2)
    rng = np.random.default_rng(seed)
    img = np.where(r < 0.85, 400 + 150 * np.sin(p[..., 0] / 6) * np.cos(p[..., 1] / 9) + 80 * (p[..., 2] > 10), 0.0)
    img = np.where((r >= 0.9) & (r < 1.0), 700.0, img)
    img = img + (r < 1.0) * rng.normal(0, 10, img.shape)
    return grid.to_sitk(img.astype(np.float32))


@pytest.mark.parametrize("direction", [np.eye(3), rotation(20, -10, 35),
                                       np.array([[0, 1, 0], [0, 0, -1], [-1, 0, 0]], float).T])
def test_ras_round_trip_is_exact(direction):
    g = Grid((7, 9, 11), (1.0, 1.5, 2.0), direction, (3.0, -4.0, 5.0))
    img = g.to_sitk(np.random.default_rng(0).random(g.shape).astype(np.float32))
    ras = to_ras(img)
    d = np.array(ras.GetDirection()).reshape(3, 3)
    # axes point (mostly) towards R, A, S, i.e. -x, -y, +z in LPS
    assert d[0, 0] < 0 and d[1, 1] < 0 and d[2, 2] > 0
    # same physical point holds the same value
    for ijk in [(0, 0, 0), (4, 5, 6), (10, 8, 6)]:
        pt = img.TransformIndexToPhysicalPoint(ijk)
        assert ras.GetPixel(ras.TransformPhysicalPointToIndex(pt)) == img.GetPixel(ijk)
    back = from_ras(ras, img)
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(img))
    assert orientation_code(back) == orientation_code(img)


def test_n4_removes_a_smooth_bias():
    g = Grid((48, 64, 56), (3.0, 3.0, 3.0), np.eye(3), (-84.0, -96.0, -72.0))
    arr = sitk.GetArrayFromImage(blob_head(g))
    arr = np.where(arr > 450, 550.0, np.where(arr > 100, 350.0, 0.0)).astype(np.float32)  # two tissues
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, n) for n in arr.shape], indexing="ij")
    bias = np.exp(0.35 * xx - 0.25 * yy + 0.2 * zz).astype(np.float32)
    biased = g.to_sitk(arr * bias)
    corrected, field = n4_correct(biased)
    inside = arr > 300

    def cv(a):
        return float(np.std(a[inside]) / np.mean(a[inside]))

    c = sitk.GetArrayFromImage(corrected)
    assert cv(c) < 0.8 * cv(arr * bias)
    est = sitk.GetArrayFromImage(field)[inside]
    assert np.corrcoef(est, bias[inside])[0, 1] > 0.9


def _moved(img, angles, shift):
    tx = sitk.Euler3DTransform()
    tx.SetCenter(img.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in img.GetSize()]))
    tx.SetRotation(*angles)
    tx.SetTranslation(shift)
    return sitk.Resample(img, img, tx, sitk.sitkLinear, 0.0), tx


def test_registration_recovers_small_motion_and_passes_check():
    g = Grid((48, 64, 56), (3.0, 3.0, 3.0), np.eye(3), (-84.0, -96.0, -72.0))
    fixed = blob_head(g)
    moving, tx = _moved(fixed, (0.06, -0.04, 0.05), (4.0, -3.0, 2.0))
    res = register_rigid(fixed, moving)
    assert res.ok, res.reason
    # moving(p) = fixed(tx(p)), so the fixed -> moving map is tx's inverse
    inv = tx.GetInverse()
    for p in [(0, 0, 0), (30, -20, 10)]:
        assert np.linalg.norm(np.subtract(res.transform.TransformPoint(p), inv.TransformPoint(p))) < 1.5
    assert res.metric_after < res.metric_before


def test_registration_probes_find_the_peak_of_mutual_information():
    """Around the alignment no probe scores better; around a transform short of it, the probe
    towards the truth does."""
    g = Grid((48, 64, 56), (3.0, 3.0, 3.0), np.eye(3), (-84.0, -96.0, -72.0))
    fixed = blob_head(g)
    moving, tx = _moved(fixed, (0.0, 0.0, 0.0), (9.0, 0.0, 0.0))  # moving(p) = fixed(p + 9 mm x)
    truth = sitk.Euler3DTransform(tx.GetInverse())  # fixed -> moving points: 9 mm to -x
    short = sitk.Euler3DTransform()
    short.SetCenter(truth.GetCenter())
    assert better_probes(fixed, moving, truth) == []
    names = [b[1] for b in better_probes(fixed, moving, short)]
    assert names and names[0] == "-5 mm along x", names
    assert "+5 mm along x" not in names and "+20 mm along x" not in names


def test_registration_check_rejects_a_geometry_error_beyond_its_limits():
    """The moving series' geometry wrong by 45 mm: whether the optimiser, restarted from the
    probes, reaches it or stops short, the result is not used, and the reasons are reportable."""
    g = Grid((48, 64, 56), (3.0, 3.0, 3.0), np.eye(3), (-84.0, -96.0, -72.0))
    fixed = blob_head(g)
    far = sitk.Image(fixed)
    far.SetOrigin(tuple(np.add(far.GetOrigin(), (45.0, 0.0, 0.0))))
    res = register_rigid(fixed, far)
    assert not res.ok and ("probe" in res.reason or "translation" in res.reason), res.reason
    assert json.loads(json.dumps(res.summary()))["ok"] is False
    # with the limit raised the same registration finds the 45 mm, after restarting from a probe
    wide = register_rigid(fixed, far, check=RegistrationCheck(max_translation_mm=60.0, restarts=4))
    assert wide.ok and wide.restarts >= 1, wide.reason
    assert np.linalg.norm(np.subtract(wide.transform.GetTranslation(), (45.0, 0.0, 0.0))) < 2.0


def test_resample_spacing_keeps_extent():
    g = Grid((10, 20, 30), (1.0, 1.0, 2.0), rotation(5, 10, 15), (1.0, 2.0, 3.0))
    img = g.to_sitk(np.ones(g.shape, np.float32))
    out = resample_spacing(img, (2.0, 2.0, 4.0))
    assert out.GetSize() == (15, 10, 5)
    # the outer corner of the first voxel stays where it was
    corner = lambda im: np.array(im.TransformContinuousIndexToPhysicalPoint((-0.5, -0.5, -0.5)))
    assert np.allclose(corner(img), corner(out), atol=1e-6)


# --- study cache -------------------------------------------------------------------------------
def test_study_key_needs_identity():
    assert study_key({}) is None
    a = study_key({"patient_id": "P1", "frame_of_reference_uid": "1.2.3"})
    assert a and a == study_key({"patient_id": "P1", "frame_of_reference_uid": "1.2.3", "x": 1})
    assert a != study_key({"patient_id": "P2", "frame_of_reference_uid": "1.2.3"})


def test_cache_put_get_expiry_eviction_and_corruption(tmp_path, caplog):
    g = Grid((4, 5, 6), (1.0, 1.0, 1.0), rotation(10, 0, 0), (0.0, 0.0, 0.0))
    img = g.to_sitk(np.arange(120, dtype=np.float32).reshape(g.shape))
    c = StudyCache(tmp_path, ttl_s=60, max_entries=2)
    c.put("k1", "t1", {"image": img}, {"note": "a"})
    got, meta = c.get("k1", "t1")
    assert meta == {"note": "a"} and Grid.from_sitk(got["image"]).same_as(g)
    assert np.array_equal(sitk.GetArrayFromImage(got["image"]), sitk.GetArrayFromImage(img))
    assert c.get("k1", "flair") is None
    c.put("k2", "t1", {"image": img}, {})
    time.sleep(0.01)
    c.put("k3", "t1", {"image": img}, {})
    assert c.get("k1", "t1") is None  # oldest evicted beyond max_entries
    assert c.get("k3", "t1") is not None
    (tmp_path / "k3_t1" / "image.mha").write_bytes(b"garbage")
    assert c.get("k3", "t1") is None
    assert "unreadable" in caplog.text and not (tmp_path / "k3_t1").exists()
    old = StudyCache(tmp_path, ttl_s=0.0)
    assert old.get("k2", "t1") is None  # expired
    with pytest.raises(ValueError):
        c.put("../x", "t1", {}, {})


def test_cache_put_later_is_waited_for_and_a_failed_write_is_reported(tmp_path, caplog, monkeypatch):
    g = Grid((4, 5, 6), (1.0, 1.0, 1.0), rotation(0, 0, 0), (0.0, 0.0, 0.0))
    img = g.to_sitk(np.arange(120, dtype=np.float32).reshape(g.shape))
    c = StudyCache(tmp_path)
    real_put = StudyCache.put
    started, release = threading.Event(), threading.Event()

    def slow_put(self, *a):
        started.set()
        release.wait(10)
        return real_put(self, *a)

    monkeypatch.setattr(StudyCache, "put", slow_put)
    c.put_later("k1", "t1", {"image": img}, {"note": "later"})
    assert started.wait(10) and not (tmp_path / "k1_t1").exists()  # still being written
    threading.Timer(0.2, release.set).start()
    got, meta = c.get("k1", "t1")  # waits for the writer
    assert meta == {"note": "later"}
    assert np.array_equal(sitk.GetArrayFromImage(got["image"]), sitk.GetArrayFromImage(img))
    # a write that fails leaves no entry and says why; the caller never sees the exception
    monkeypatch.setattr(StudyCache, "put", real_put)
    c.put_later("k2", "t1", {"bad name": img}, {})
    c.wait()
    assert c.get("k2", "t1") is None and "could not be written" in caplog.text
    with pytest.raises(ValueError):
        c.put_later("../x", "t1", {}, {})


def test_a_restart_the_optimiser_cannot_run_keeps_its_probe(monkeypatch):
    """An optimisation from a far probe that ITK refuses (too few overlapping samples) does not
    break the registration: the probe itself is the candidate, and the check still judges it."""
    from openrecon_stroke import preprocess

    g = Grid((48, 64, 56), (3.0, 3.0, 3.0), np.eye(3), (-84.0, -96.0, -72.0))
    fixed = blob_head(g)
    far = sitk.Image(fixed)
    far.SetOrigin(tuple(np.add(far.GetOrigin(), (45.0, 0.0, 0.0))))
    real, calls = preprocess._optimise, []

    def first_only(*args):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("Too many samples map outside moving image buffer")
        return real(*args)

    monkeypatch.setattr(preprocess, "_optimise", first_only)
    res = register_rigid(fixed, far, check=RegistrationCheck(max_translation_mm=60.0, restarts=2))
    assert len(calls) == 3 and res.restarts == 2  # both restarts tried, neither could optimise
    assert not res.ok and "probe" in res.reason, res.reason
