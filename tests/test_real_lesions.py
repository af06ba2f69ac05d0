"""Lesions painted into real heads (simulator.real_lesions): a cavity's core lies near the head's
own CSF level, also on a head that came skull-stripped (zero background)."""

import numpy as np
import pytest
import SimpleITK as sitk

from simulator import real_lesions
from simulator.anatomy import Tissue


def _head(stripped: bool):
    """A 40^3 1 mm head: white matter, a ventricle (CSF 300), sulcal CSF (350) inside a brain
    mask, and around the brain either zero background (skull-stripped) or scalp-like 200,
    labelled extra-cerebral CSF as `native_labels` labels whatever lies outside the brain."""
    lab = np.full((40, 40, 40), Tissue.EXTRA_CSF, np.int16)
    img = np.full(lab.shape, 0.0 if stripped else 200.0, np.float32)
    brain = np.zeros(lab.shape, bool)
    brain[5:35, 5:35, 5:35] = True
    lab[brain] = Tissue.WM
    img[brain] = 1000.0
    lab[5:35, 5:35, 5:7] = Tissue.EXTRA_CSF  # sulcal CSF inside the brain
    img[5:35, 5:35, 5:7] = 350.0
    lab[17:23, 10:16, 17:23] = Tissue.CSF  # a ventricle
    img[17:23, 10:16, 17:23] = 300.0
    # one lesion: a 6 mm core in a 2 mm rim
    idx = np.zeros(lab.shape, np.uint8)
    idx[14:26, 22:34, 14:26] = 1
    lab[14:26, 22:34, 14:26] = Tissue.LESION_RIM
    lab[16:24, 24:32, 16:24] = Tissue.LESION_CORE

    def im(a):
        return sitk.GetImageFromArray(a)

    return im(img), im(lab), im(idx), im(brain.astype(np.uint8))


def _cavity_rng():
    """A generator whose first draw makes the lesion a cavity (as 70 % of them are)."""
    for seed in range(100):
        if np.random.default_rng(seed).random() < 0.7:
            return seed
    raise AssertionError


@pytest.mark.parametrize("stripped", [False, True])
@pytest.mark.parametrize("with_ventricles", [True, False])
def test_a_cavity_core_is_painted_near_the_heads_csf(stripped, with_ventricles):
    img, lab, idx, brain = _head(stripped)
    if not with_ventricles:  # no ventricle labelled: the CSF level comes from CSF inside the brain
        a = sitk.GetArrayFromImage(lab)
        a[a == Tissue.CSF] = Tissue.WM
        lab = sitk.GetImageFromArray(a)
    rng = np.random.default_rng(_cavity_rng())
    out, lesions = real_lesions.paint(img, lab, idx, [{"index": 1}], "t1", rng, brain=brain)
    assert lesions[0]["appearance"] == "cavity"
    core = sitk.GetArrayFromImage(out)[18:22, 26:30, 18:22]  # well inside the core
    csf = 300.0 if with_ventricles else 350.0
    # core painted at the CSF level times 0.9-1.5 (with the image's texture, a few per cent)
    assert 0.85 * csf < float(np.median(core)) < 1.55 * csf
    assert float(core.min()) > 0.5 * csf  # never the black of the background


def test_without_any_csf_painting_says_why():
    img, lab, idx, brain = _head(True)
    a = sitk.GetArrayFromImage(lab)
    a[a == Tissue.CSF] = Tissue.WM
    b = sitk.GetArrayFromImage(brain).astype(bool)
    a[b & (a == Tissue.EXTRA_CSF)] = Tissue.WM
    with pytest.raises(ValueError, match="CSF level"):
        real_lesions.paint(
            img, sitk.GetImageFromArray(a), idx, [{"index": 1}], "t1", np.random.default_rng(0), brain=brain
        )
