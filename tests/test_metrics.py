"""Lesion metrics on hand-made masks with known answers."""

import numpy as np

from openrecon_stroke.metrics import asd, dice, hd95, lesion_table, summarise


def cube(shape, lo, hi):
    m = np.zeros(shape, bool)
    m[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    return m


def test_dice_and_distances_known_values():
    a = cube((40, 40, 40), (10, 10, 10), (20, 20, 20))
    assert dice(a, a) == 1.0 and dice(a, ~a & False) == 0.0
    assert dice(np.zeros_like(a), np.zeros_like(a)) == 1.0
    b = np.roll(a, 2, axis=2)  # shifted 2 voxels along x
    assert abs(dice(a, b) - 0.8) < 1e-12
    assert asd(a, a, (1, 1, 1)) == 0.0
    # a shift of 2 voxels at 0.5 mm spacing: faces move by 1 mm
    assert 0 < asd(a, b, (1, 1, 0.5)) <= 1.0 + 1e-9
    assert abs(hd95(a, b, (1, 1, 0.5)) - 1.0) < 1e-9
    assert np.isnan(asd(a, np.zeros_like(a), (1, 1, 1)))


def test_lesion_f1_and_size_buckets():
    shape = (60, 60, 60)
    big = cube(shape, (5, 5, 5), (30, 30, 30))  # 15.6 mL at 1 mm
    small = cube(shape, (40, 40, 40), (45, 45, 45))  # 0.125 mL
    missed = cube(shape, (50, 5, 5), (53, 8, 8))  # 0.027 mL
    truth = big | small | missed
    fp = cube(shape, (40, 5, 40), (44, 9, 44))
    pred = big | small | fp
    t = lesion_table(truth, pred, (1.0, 1.0, 1.0))
    assert t["n_true"] == 3 and t["n_pred"] == 3
    assert abs(t["lesion_recall"] - 2 / 3) < 1e-12 and abs(t["lesion_precision"] - 2 / 3) < 1e-12
    assert abs(t["lesion_f1"] - 2 / 3) < 1e-12
    assert t["buckets"]["large >=10 mL"]["recall"] == 1.0
    assert abs(t["buckets"]["small <1 mL"]["recall"] - 0.5) < 1e-12
    assert "medium 1-10 mL" not in t["buckets"]
    assert abs(t["true_volume_ml"] - (15.625 + 0.125 + 0.027)) < 1e-9
    s = summarise([t, lesion_table(truth, truth, (1.0, 1.0, 1.0))])
    assert abs(s["lesion_f1"] - (2 / 3 + 1) / 2) < 1e-12
    assert s["buckets"]["small <1 mL"]["n_true"] == 4


def test_empty_cases():
    z = np.zeros((10, 10, 10), bool)
    t = lesion_table(z, z, (1, 1, 1))
    assert t["dice"] == 1.0 and t["lesion_f1"] == 1.0 and t["n_true"] == 0
    one = z.copy()
    one[5, 5, 5] = True
    t = lesion_table(z, one, (1, 1, 1))
    assert t["lesion_f1"] == 0.0 and t["lesion_precision"] == 0.0
