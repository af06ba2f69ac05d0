"""Registration to the MNI152 template: the grid's symmetry, recovery of a known transform for a
T1-w-like and a FLAIR-like brain, the failure path, and composed series transforms."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from openrecon_stroke import template

pytest.importorskip("nilearn", reason="the MNI152 template files come with nilearn (dev extra)")


def test_template_grid_mirrors_about_the_mid_sagittal_plane():
    for mm in (1.5, 2.0):
        t = template.load_template(mm)
        a = t.arrays()
        g = t.grid
        centre_x = g.GetOrigin()[0] + (g.GetSize()[0] - 1) / 2 * g.GetSpacing()[0]
        assert abs(centre_x) < 1e-6  # a voxel column on MNI x = 0
        assert np.abs(a["gm"] - a["gm"][:, :, ::-1]).max() < 1e-3  # the 2009a sym template is symmetric
        from scipy import ndimage

        core = ndimage.binary_erosion(a["brain"] > 0, iterations=2)
        np.testing.assert_allclose((a["gm"] + a["wm"] + a["csf"])[core], 1.0, atol=0.02)  # tissue priors sum to 1
    p = np.array([12.0, -30.0, 40.0])
    np.testing.assert_allclose(template.lps_to_mni(template.mni_to_lps(p)), p)


def _known_subject(contrast: str, pitch_deg: float = 25.0, scale: float = 1.08, slices: int = 1):
    """The template brain in a given contrast, moved by a known similarity transform onto an
    oblique 1.2 mm grid, with its brain mask: ``(image, mask, truth)``, ``truth`` mapping
    template points to subject points. ``slices`` > 1: thick slices, each the mean of that many
    1.2 mm slices."""
    t = template.load_template(1.0)
    a = t.arrays()
    if contrast == "t1":
        img = a["t1"]
    else:  # dark-fluid contrast: CSF dark, grey matter brighter than white
        img = (0.8 * a["gm"] + 0.6 * a["wm"] + 0.08 * a["csf"]) * 300
    src = sitk.GetImageFromArray(img.astype(np.float32))
    src.CopyInformation(t.t1)
    truth = sitk.Similarity3DTransform()
    truth.SetCenter((0.0, -18.0, 10.0))
    truth.SetRotation((1.0, 0.0, 0.0), float(np.deg2rad(pitch_deg)))
    truth.SetScale(scale)
    truth.SetTranslation((4.0, -6.0, 9.0))
    # subject grid: oblique, 1.2 mm, covering the moved brain
    rot = sitk.VersorTransform((0.0, 0.0, 1.0), 0.2)
    d = np.array(rot.GetMatrix()).reshape(3, 3)
    grid = sitk.Image([180, 200, 170], sitk.sitkFloat32)
    grid.SetSpacing((1.2, 1.2, 1.2))
    grid.SetDirection(tuple(d.flatten()))
    grid.SetOrigin(tuple(np.array([0.0, -18.0, 10.0]) - d @ (np.array([180, 200, 170]) * 1.2 / 2)))
    inv = truth.GetInverse()  # subject points -> template points: what resampling needs
    image = sitk.Resample(src, grid, inv, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    mask = sitk.Resample(t.brain, grid, inv, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    if slices > 1:
        thick = []
        for im in (image, mask):
            a = sitk.GetArrayFromImage(im).astype(np.float32)
            n = a.shape[0] // slices * slices
            a = a[:n].reshape(n // slices, slices, *a.shape[1:]).mean(1)
            out = sitk.GetImageFromArray(a if im is image else (a >= 0.5).astype(np.uint8))
            out.SetSpacing((1.2, 1.2, 1.2 * slices))
            out.SetDirection(grid.GetDirection())
            out.SetOrigin(tuple(np.array(grid.GetOrigin()) + d @ np.array([0.0, 0.0, 1.2 * (slices - 1) / 2])))
            thick.append(out)
        image, mask = thick
    return image, mask, truth


@pytest.mark.slow
@pytest.mark.parametrize("contrast,slices", [("t1", 1), ("flair", 1), ("flair", 4)])
def test_registration_recovers_a_known_transform(contrast, slices):
    """Also a FLAIR of 4.8 mm slices."""
    image, mask, truth = _known_subject(contrast, slices=slices)
    reg = template.register(image, mask)
    assert reg.ok and reg.kind == "deformable", reg.reason
    assert reg.summary["inside"] > 0.97 and reg.summary["correlation"] > 0.8
    # template brain points land where the known transform puts them
    b = template.load_template(2.0)
    pts = np.argwhere(sitk.GetArrayFromImage(b.brain) > 0)[::400][:, ::-1]
    err = []
    back = []
    for ijk in pts:
        p = b.grid.TransformIndexToPhysicalPoint([int(v) for v in ijk])
        q = np.array(reg.to_native.TransformPoint(p))
        err.append(np.linalg.norm(q - truth.TransformPoint(p)))
        back.append(np.linalg.norm(np.array(reg.to_template.TransformPoint(tuple(q))) - p))
    err, back = np.array(err), np.array(back)
    assert np.median(err) < 1.5 and np.percentile(err, 95) < 4.0, (np.median(err), np.percentile(err, 95))
    assert np.percentile(back, 95) < 1.0  # to_template inverts to_native
    # ~no volume change beyond the similarity's scale
    lj = sitk.GetArrayFromImage(reg.log_jacobian)[sitk.GetArrayFromImage(b.brain) > 0]
    assert abs(float(np.median(lj))) < 0.05
    assert abs(reg.affine_det ** (1 / 3) - 1.08) < 0.03


def test_registration_of_something_else_fails_its_check():
    rng = np.random.default_rng(0)
    blob = np.zeros((60, 70, 80), np.float32)
    zz, yy, xx = np.indices(blob.shape)
    cube = (np.abs(zz - 30) < 20) & (np.abs(yy - 35) < 25) & (np.abs(xx - 40) < 30)
    blob[cube] = 500 + 50 * rng.standard_normal(cube.sum())
    img = sitk.GetImageFromArray(blob)
    img.SetSpacing((2.0, 2.0, 2.0))
    img.SetOrigin((-80.0, -70.0, -60.0))
    mask = sitk.GetImageFromArray(cube.astype(np.uint8))
    mask.CopyInformation(img)
    reg = template.register(img, mask)
    assert not reg.ok and reg.kind == "none" and reg.to_native is None
    assert "failed its check" in reg.reason


def test_series_transforms_compose_the_rigid_series_transform():
    aff = sitk.AffineTransform(3)
    aff.SetMatrix((1.1, 0, 0, 0, 0.9, 0, 0, 0, 1.0))
    aff.SetTranslation((2.0, -3.0, 5.0))
    reg = template.TemplateRegistration("affine", aff, aff.GetInverse(), aff, None, 0.99, {}, True, "passed")
    flair_to_t1 = sitk.Euler3DTransform((0.0, 0.0, 0.0), 0.05, -0.02, 0.1, (1.0, 2.0, -4.0))
    to_native, to_template = template.series_transforms(reg, "t1", ("t1", "flair"), flair_to_t1)
    p = (10.0, -20.0, 30.0)
    np.testing.assert_allclose(to_native["flair"].TransformPoint(p),
                               flair_to_t1.TransformPoint(aff.TransformPoint(p)), atol=1e-9)
    np.testing.assert_allclose(to_template["flair"].TransformPoint(to_native["flair"].TransformPoint(p)), p, atol=1e-6)
    none_native, _ = template.series_transforms(reg, "t1", ("t1", "flair"), None)
    assert set(none_native) == {"t1"}  # no series transform: the FLAIR does not reach the template


@pytest.mark.slow
def test_registration_stored_in_the_study_cache_is_rebuilt_exactly(tmp_path):
    from openrecon_stroke.study_cache import StudyCache

    image, mask, _ = _known_subject("t1", pitch_deg=10.0, scale=1.0)
    reg = template.register(image, mask)
    assert reg.kind == "deformable"
    cache = StudyCache(tmp_path)
    cache.put("abc", "t1template", *template.to_cache(reg))
    back = template.from_cache(*cache.get("abc", "t1template"))
    assert back.kind == reg.kind and back.summary == reg.summary
    for p in [(0.0, -18.0, 10.0), (30.0, 20.0, 40.0), (-40.0, -60.0, -10.0)]:
        np.testing.assert_allclose(back.to_native.TransformPoint(p), reg.to_native.TransformPoint(p), atol=1e-4)
        np.testing.assert_allclose(back.to_template.TransformPoint(p), reg.to_template.TransformPoint(p), atol=1e-4)


def _upside_down(truth: sitk.Similarity3DTransform) -> sitk.AffineTransform:
    """``truth`` turned 90 degrees about the left-right axis: a fit in the wrong basin."""
    bad = sitk.AffineTransform(3)
    bad.SetCenter(truth.GetCenter())
    r = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    bad.SetMatrix(tuple((r @ np.array(truth.GetMatrix()).reshape(3, 3)).flatten()))
    bad.SetTranslation(truth.GetTranslation())
    return bad


@pytest.mark.slow
def test_an_affine_fit_that_fails_its_check_is_followed_by_the_next_start(monkeypatch, caplog):
    """When the best coarse start ends in the wrong basin (here forced: the first fit is the
    brain turned 90 degrees), the next-best start is refined and used; when every fit tried is
    wrong, the first one's reasons are reported."""
    image, mask, truth = _known_subject("flair")
    real = template.affine_candidates

    def wrong_first(*args, **kwargs):
        yield _upside_down(truth)
        yield from real(*args, **kwargs)

    monkeypatch.setattr(template, "affine_candidates", wrong_first)
    with caplog.at_level("INFO", logger="openrecon_stroke.template"):
        reg = template.register(image, mask, deformable=False)
    assert reg.ok and reg.kind == "affine", reg.reason
    assert reg.summary["affine_correlation"] > 0.8
    assert abs(reg.affine_det ** (1 / 3) - 1.08) < 0.03
    assert "start 2 passed" in caplog.text

    def always_wrong(*args, **kwargs):
        for _ in range(template.AFFINE_TRIES + 1):
            yield _upside_down(truth)

    monkeypatch.setattr(template, "affine_candidates", always_wrong)
    reg = template.register(image, mask, deformable=False)
    assert not reg.ok and reg.kind == "none" and "failed its check" in reg.reason


@pytest.mark.slow
def test_an_affine_fit_short_on_correlation_alone_is_used_only_through_a_passing_deformable_step():
    """No affine fit reaches ``min_correlation`` but the best reaches ``min_affine_correlation``:
    it goes on to the deformable step and is used only if that result passes the whole check,
    never alone."""
    image, mask, _ = _known_subject("flair")
    first = template.register(image, mask)
    assert first.ok and first.kind == "deformable", first.reason
    aff_corr, def_corr = first.summary["affine_correlation"], first.summary["correlation"]
    assert def_corr > aff_corr + 0.02  # the deformable step improves on the affine fit
    # the bar between the two: the affine fits fall short, the deformable result passes
    between = template.TemplateCheck(min_correlation=(aff_corr + def_corr) / 2, min_affine_correlation=0.3)
    reg = template.register(image, mask, check=between)
    assert reg.ok and reg.kind == "deformable", reg.reason
    # the bar above both: nothing is used, not even the affine fit
    above = template.TemplateCheck(min_correlation=min(def_corr + 0.05, 0.999), min_affine_correlation=0.3)
    reg = template.register(image, mask, check=above)
    assert not reg.ok and reg.kind == "none" and "deformable step" in reg.reason
    # the lower bar above the fits too: reported as before, without a deformable step
    strict = template.TemplateCheck(min_correlation=0.999, min_affine_correlation=0.999)
    reg = template.register(image, mask, check=strict)
    assert not reg.ok and reg.kind == "none" and "demons_s" not in reg.summary


@pytest.mark.slow
def test_a_field_that_fails_is_tried_again_smoother_over_the_slices_then_by_the_retry_smoothing():
    """A check the 3 mm field just fails (its Jacobian's 0.5th percentile under the bar): on a
    4.8 mm-slice series the deformable step is tried again with the field smoothed by 1.125
    slices (5.4 mm) and that result is used; a 1.2 mm series is tried again at 4.5 mm
    (``retry_smoothing_mm``); a bar no field meets leaves the affine fit, with the first try's
    figures."""
    image, mask, _ = _known_subject("flair", slices=4)
    first = template.register(image, mask)
    assert first.ok and first.summary["demons_smoothing_mm"] == 3.0 and "first_try" not in first.summary
    jlo = first.summary["jacobian_p0.5"]
    bar = template.TemplateCheck(jacobian_range=(jlo + 0.25 * (1.0 - jlo), 5.0))
    reg = template.register(image, mask, check=bar)
    assert reg.ok and reg.kind == "deformable", reg.reason
    assert reg.summary["demons_smoothing_mm"] == pytest.approx(5.4) and reg.summary["first_try"] == "failed"
    assert reg.summary["jacobian_p0.5"] >= bar.jacobian_range[0] and "smoothed" in reg.reason
    fine, fmask, _ = _known_subject("flair")
    jlo_fine = template.register(fine, fmask).summary["jacobian_p0.5"]
    strict = template.TemplateCheck(jacobian_range=(jlo_fine + 0.01, 5.0))
    reg = template.register(fine, fmask, check=strict)
    assert reg.ok and reg.kind == "deformable", reg.reason
    assert reg.summary["demons_smoothing_mm"] == 4.5 and reg.summary["first_try"] == "failed"
    unmet = template.TemplateCheck(jacobian_range=(0.999, 5.0))
    reg = template.register(fine, fmask, check=unmet)
    assert reg.ok and reg.kind == "affine", reg.reason
    assert reg.summary["demons_smoothing_mm"] == 3.0 and "first_try" not in reg.summary
