"""Resampling onto a box of a series' grid (openrecon_stroke.resample): inside the box exactly what
a full resampling gives, the default outside; and the pipeline's per-stage hand-over of series."""

import numpy as np
import pytest
import SimpleITK as sitk

from openrecon_stroke.pipeline import build_pipeline
from openrecon_stroke.resample import box_of, resample_array
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


def test_pipeline_hands_each_stage_series_over_as_it_is_done(stroke_phantom):
    from openrecon_stroke.inputs import load_volume

    seen = []
    study = Study(inputs={"t1": load_volume(stroke_phantom / "t1.h5")})
    build_pipeline("headmask").run(study, on_stage=lambda s, new: seen.append([d.name for d in new]))
    assert seen and seen == [[d.name for d in study.derived]]
