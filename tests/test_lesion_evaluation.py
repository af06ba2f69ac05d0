"""The lesion evaluation scores a case as the scanner would deliver it."""

import importlib.util
import sys
from pathlib import Path

import numpy as np

from openrecon_stroke.lesion_voxel import VoxelLesionModel
from openrecon_stroke.model_card import VoxelClassifierCard

REPO = Path(__file__).resolve().parents[1]


def _script(name: str):
    sys.path.insert(0, str(REPO / "models" / "lesion"))
    spec = importlib.util.spec_from_file_location(name, REPO / "models" / "lesion" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_a_flair_whose_own_registration_failed_is_scored_as_no_mask():
    """A FLAIR analysed as if it came alone, whose template registration failed, gets no lesion
    mask on the scanner: the evaluation predicts nothing for it (its lesions count as missed)
    instead of reading the FLAIR through the T1-w's registration."""
    cases, ev = _script("cases"), _script("evaluate_voxel")
    assert cases.flair_alone_failed({"flair_alone": "registered"}) is None
    assert cases.flair_alone_failed({"flair_alone": None}) is None  # not tried (no T1-w in the study)
    assert cases.flair_alone_failed({}) is None
    why = "not registered: affine correlation 0.38 (< 0.40)"
    assert cases.flair_alone_failed({"flair_alone": why}) == why
    model = VoxelLesionModel(VoxelClassifierCard.load(REPO / "models" / "lesion" / "flair"))
    truth = np.zeros((8, 10, 12), np.uint8)
    truth[2:5, 3:6, 4:8] = 1
    arrays = {"native_flair_truth": truth, "flair": np.ones((4, 4, 4), np.float32)}
    p, target = ev.predict_native(model, arrays, {"flair_alone": why, "to_template": {}})
    assert target == "flair" and p.shape == truth.shape and not p.any()


def test_each_head_of_a_seed_gets_its_own_draws():
    """Cases draw their contrast, slice orientation and lesions from head and seed together: with
    the seed alone every head of one seed had the same contrast, so the training set held three
    T1-w contrasts with lesions, three others without, and the test heads saw no new one."""
    cases = _script("cases")
    heads = [f"synthseg_{i:02d}" for i in range(1, 21)] + ["mni", "chris_t1", "gd_t1", "flair_real"]
    for seed in (0, 1, 100):
        assert len({cases.study_seed(h, seed) for h in heads}) == len(heads)
    assert cases.study_seed("synthseg_03", 2) == cases.study_seed("synthseg_03", 2)  # a case can be made again
    assert cases.study_seed("synthseg_03", 2) != cases.study_seed("synthseg_03", 102)
    assert cases.SCHEME == 2


def test_tissue_standardised_intensity_puts_each_tissue_on_its_level():
    """The brain's own CSF, grey and white matter land on the contrast's reference levels, in
    between linearly; a brain whose tissues are out of order is left as it is."""
    from openrecon_stroke.voxel_features import TISSUE_LEVELS, tissue_standardised

    means = {"csf": 300.0, "gm": 450.0, "wm": 1000.0}  # a high-contrast T1-w: grey matter 0.45
    rel = np.array([0.0, 0.15, 0.30, 0.45, 0.725, 1.0, 1.2], np.float32)
    out = tissue_standardised(rel, means, "t1")
    lv = TISSUE_LEVELS["t1"]
    np.testing.assert_allclose(out[[0, 2, 3, 5]], [0.0, lv["csf"], lv["gm"], lv["wm"]], atol=1e-6)
    np.testing.assert_allclose(out[1], lv["csf"] / 2, atol=1e-6)
    np.testing.assert_allclose(out[4], (lv["gm"] + lv["wm"]) / 2, atol=1e-6)
    assert out[6] > lv["wm"]  # above white matter: the last segment's slope
    inverted = {"csf": 300.0, "gm": 1100.0, "wm": 1000.0}
    np.testing.assert_array_equal(tissue_standardised(rel, inverted, "t1"), rel)
    flair = {"csf": 150.0, "wm": 1000.0, "gm": 1400.0}
    np.testing.assert_allclose(tissue_standardised(np.float32([1.4]), flair, "flair"), [TISSUE_LEVELS["flair"]["gm"]])


def test_the_standardised_expectation_follows_the_image_it_is_taken_of():
    """``texpect`` compares the tissue-standardised image with the tissue levels it actually has:
    the fixed levels, or the brain's own where the image was left as it is (tissues out of order)."""
    from openrecon_stroke import voxel_features as vf

    shape = (6, 8, 8)
    brain = np.ones(shape, bool)
    pri = {k: np.full(shape, v, np.float32) for k, v in (("gm", 1.0), ("wm", 0.0), ("csf", 0.0), ("brain", 1.0))}
    for gm in (450.0, 1100.0):  # standardised / left as it is (grey brighter than white on a T1-w)
        means = {"t1": {"csf": 300.0, "gm": gm, "wm": 1000.0}}
        img = np.full(shape, gm, np.float32)  # grey matter where the template expects it
        x = vf.compute(["t1_texpect", "t1_expect"], {"t1": img}, brain, means, pri, 1.5)
        np.testing.assert_allclose(x, 0.0, atol=1e-5)
