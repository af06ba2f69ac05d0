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


def test_z_of_a_tissue_standardised_normative_reads_the_standardised_image():
    """Statistics built on tissue-standardised intensity (``Normative.tissue``): the z-score is
    taken of the standardised image, so two contrasts of one brain give the same z; statistics
    of plain white-matter-relative intensity take the plain image."""
    t1, brain, priors = _brain_case()
    shape = t1.shape
    mean = {"t1": np.full(shape, 0.7, np.float32)}
    std = {"t1": np.full(shape, 0.1, np.float32)}
    zs = []
    for scale in (1.0, 1.6):  # a second contrast: grey matter and CSF further below white matter
        means = {"gm": 100.0 / scale, "wm": 140.0, "csf": 30.0 / scale}
        img = np.where(t1 < 140.0, t1 / scale, t1).astype(np.float32)
        tissue = voxel_features.compute(["t1_z"], {"t1": img}, brain, {"t1": means}, priors, 1.5,
                                        voxel_features.Normative(mean, std, ("t1",)))
        plain = voxel_features.compute(["t1_z"], {"t1": img}, brain, {"t1": means}, priors, 1.5,
                                       voxel_features.Normative(mean, std))
        zs.append((tissue[:, 0], plain[:, 0]))
        rel = np.where(brain, img / 140.0, 0)[brain]
        np.testing.assert_allclose(plain[:, 0], (rel - 0.7) / 0.1, rtol=1e-5, atol=1e-5)
    dark = (t1[brain] > 35) & (t1[brain] < 95)  # between CSF and grey matter: the map is exact there
    assert dark.sum() > 100
    np.testing.assert_allclose(zs[0][0][dark], zs[1][0][dark], atol=1e-3)  # standardised: the same
    assert np.abs(zs[0][1][dark] - zs[1][1][dark]).min() > 0.5  # plain: the z moves with the contrast


def test_columns_kept_for_a_later_series_are_the_columns_computed():
    """The T1-w columns a fused model computes on a FLAIR connection come from the memo the T1-w
    model filled on the T1-w connection: the same values; a changed T1-w image has another key
    and is computed afresh."""
    from openrecon_stroke.memo import ContentMemo, digest

    t1, brain, priors = _brain_case()
    flair = np.flip(t1, 0).copy()
    means = {c: {"gm": 100.0, "wm": 140.0, "csf": 30.0} for c in ("t1", "flair")}
    norm = voxel_features.Normative(
        {c: np.full(t1.shape, 0.8, np.float32) for c in means}, {c: np.full(t1.shape, 0.2, np.float32) for c in means}
    )
    memo: ContentMemo[np.ndarray] = ContentMemo("test", 64 << 20)

    def keys(images):
        return {c: digest(brain, 1.5, c, images[c], means[c]) for c in images}

    t1_names = voxel_features.feature_names(("t1",))
    both = voxel_features.feature_names(("t1", "flair"))
    first = voxel_features.compute(t1_names, {"t1": t1}, brain, means, priors, 1.5, norm, reuse=(memo, keys({"t1": t1})))
    image_columns = [n for n in t1_names if not n.startswith("prior_")]
    assert memo.hits == 0 and memo.misses == len(image_columns)
    images = {"t1": t1, "flair": flair}
    fused = voxel_features.compute(both, images, brain, means, priors, 1.5, norm, workers=2, reuse=(memo, keys(images)))
    assert memo.hits == len(image_columns)  # every T1-w image column, none of the FLAIR's
    np.testing.assert_array_equal(fused, voxel_features.compute(both, images, brain, means, priors, 1.5, norm))
    np.testing.assert_array_equal(first, voxel_features.compute(t1_names, {"t1": t1}, brain, means, priors, 1.5, norm))
    # another T1-w image: nothing reused, its own values
    other = {"t1": (t1 * 1.1).astype(np.float32), "flair": flair}
    hits = memo.hits
    again = voxel_features.compute(both, other, brain, means, priors, 1.5, norm, reuse=(memo, keys(other)))
    assert memo.hits == hits + len([n for n in both if n.startswith("flair_")])  # the FLAIR's, kept above
    np.testing.assert_array_equal(again, voxel_features.compute(both, other, brain, means, priors, 1.5, norm))
