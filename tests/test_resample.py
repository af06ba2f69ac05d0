"""Resampling onto a box of a series' grid (openrecon_stroke.resample): inside the box exactly what
a full resampling gives, the default outside; and the pipeline's per-stage hand-over of series."""

import numpy as np
import pytest
import SimpleITK as sitk

from openrecon_stroke.pipeline import build_pipeline
from openrecon_stroke.resample import box_of, resample_array, resample_parallel
from openrecon_stroke.study import Study


def _oblique_pair():
    rng = np.random.default_rng(3)
    src = sitk.GetImageFromArray(rng.random((30, 34, 28)).astype(np.float32))
    src.SetSpacing((1.5, 1.5, 1.5))
    src.SetOrigin((-20.0, -25.0, -22.0))
    ref = sitk.Image([40, 36, 22], sitk.sitkFloat32)
    ref.SetSpacing((0.9, 1.1, 2.0))
    ref.SetOrigin((-18.0, -20.0, -20.0))
    rot = sitk.Euler3DTransform((0, 0, 0), 0.2, -0.1, 0.3)
    ref.SetDirection(rot.GetMatrix())
    tx = sitk.Euler3DTransform((0, 0, 0), 0.05, 0.02, -0.04, (1.0, -2.0, 0.5))
    return src, ref, tx


@pytest.mark.parametrize("interp", [sitk.sitkLinear, sitk.sitkNearestNeighbor])
def test_box_equals_full_resampling_inside(interp):
    src, ref, tx = _oblique_pair()
    full = resample_array(src, ref, tx, interp)
    mask = np.zeros(full.shape, bool)
    mask[5:15, 8:20, 10:31] = True
    box = box_of(mask, margin=2)
    assert box == (slice(3, 17), slice(6, 22), slice(8, 33))
    part = resample_array(src, ref, tx, interp, default=-1.0, box=box)
    assert np.array_equal(part[box], full[box])
    outside = np.ones(full.shape, bool)
    outside[box] = False
    assert (part[outside] == -1.0).all()


def test_box_of_clips_and_handles_empty():
    m = np.zeros((4, 5, 6), bool)
    assert box_of(m) is None
    m[0, 4, 2] = True
    assert box_of(m, margin=3) == (slice(0, 4), slice(1, 5), slice(0, 6))


@pytest.mark.parametrize("seed", range(6))
def test_separable_bspline_matches_itk_between_axis_parallel_grids(seed):
    """Any axis order and flips, any spacings and offsets, reference voxels outside the source
    (the default there), sizes down to 1 voxel on an axis."""
    rng = np.random.default_rng(seed)
    n = rng.integers(1 if seed == 5 else 3, 30, 3)
    src = sitk.GetImageFromArray((100 * rng.random(n[::-1])).astype(np.float32))
    d = np.zeros((3, 3))
    d[rng.permutation(3), np.arange(3)] = rng.choice([-1.0, 1.0], 3)
    src.SetDirection(d.flatten().tolist())
    src.SetSpacing(rng.uniform(0.5, 3.0, 3).tolist())
    src.SetOrigin(rng.uniform(-50, 50, 3).tolist())
    ref = sitk.Image(rng.integers(4, 30, 3).tolist(), sitk.sitkFloat32)
    ref.SetSpacing(rng.uniform(0.4, 2.5, 3).tolist())
    # the reference's first voxel somewhere inside the source, so that it overlaps and overhangs
    ref.SetOrigin(src.TransformContinuousIndexToPhysicalPoint((rng.random(3) * (n - 1)).tolist()))
    want = sitk.GetArrayFromImage(sitk.Resample(src, ref, sitk.Transform(), sitk.sitkBSpline, 0.0, sitk.sitkFloat32))
    got = resample_parallel(src, ref)
    assert got is not None and got.shape == want.shape and got.dtype == np.float32
    assert (want != 0).any()  # it overlaps the source (most seeds also overhang it: 0 there)
    np.testing.assert_allclose(got, want, atol=1e-3)


def test_separable_bspline_declines_oblique_grids():
    src, ref, _ = _oblique_pair()
    assert resample_parallel(src, ref) is None


def test_pipeline_hands_each_stage_series_over_as_it_is_done(stroke_phantom):
    from openrecon_stroke.inputs import load_volume

    seen = []
    study = Study(inputs={"t1": load_volume(stroke_phantom / "t1.h5")})
    build_pipeline("headmask").run(study, on_stage=lambda s, new: seen.append([d.name for d in new]))
    assert seen and seen == [[d.name for d in study.derived]]
