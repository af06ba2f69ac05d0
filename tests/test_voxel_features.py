"""Template-space voxel features: the columns computed side by side equal those of one worker."""

import numpy as np
from scipy import ndimage

from openrecon_stroke import voxel_features


def _brain_case(shape=(40, 48, 41), seed=0):
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.indices(shape)
    c = (np.array(shape) - 1) / 2
    r = np.sqrt(((zz - c[0]) / 16) ** 2 + ((yy - c[1]) / 20) ** 2 + ((xx - c[2]) / 17) ** 2)
    brain_t = r < 1.0
    wm = np.clip(1.2 - 1.6 * r, 0, 1).astype(np.float32)
    csf = np.clip(ndimage.gaussian_filter(rng.random(shape), 3) * 2 - 0.8, 0, 1).astype(np.float32) * brain_t
    gm = np.clip(1 - wm - csf, 0, 1).astype(np.float32) * brain_t
    priors = {"gm": gm, "wm": wm, "csf": csf, "brain": brain_t.astype(np.float32)}
    img = (100 * gm + 140 * wm + 30 * csf + rng.normal(0, 5, shape)).astype(np.float32)
    brain = brain_t & (rng.random(shape) > 0.02)
    return img, brain, priors


def test_features_on_two_workers_equal_one_worker():
    t1, brain, priors = _brain_case()
    flair = np.flip(t1, 0).copy()
    images = {"t1": t1, "flair": flair}
    means = {c: {"gm": 100.0, "wm": 140.0, "csf": 30.0} for c in images}
    norm = voxel_features.Normative(
        {c: np.full(t1.shape, 0.8, np.float32) for c in images}, {c: np.full(t1.shape, 0.2, np.float32) for c in images}
    )
    names = voxel_features.feature_names(("t1", "flair"))
    one = voxel_features.compute(names, images, brain, means, priors, 1.5, norm)
    two = voxel_features.compute(names, images, brain, means, priors, 1.5, norm, workers=2)
    assert one.shape == (int(brain.sum()), len(names))
    assert np.isfinite(one).all() and np.ptp(one, axis=0).min() > 0  # no column constant
    np.testing.assert_array_equal(two, one)
