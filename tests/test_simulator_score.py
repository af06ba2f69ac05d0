"""``python -m simulator score``: the demo's acceptance (count within 1, volume within 30 %)."""

import numpy as np

from simulator.score import acceptable, compare


def test_compare_counts_volumes_and_dice():
    truth = np.zeros((20, 20, 20), np.uint8)
    truth[2:6, 2:6, 2:6] = 1  # 64 voxels
    truth[12:16, 12:16, 12:16] = 1
    pred = np.zeros_like(truth)
    pred[2:6, 2:6, 2:5] = 1  # 48 voxels of the first lesion, the second missed
    fig = compare(truth, pred, voxel_ml=0.001)
    assert (fig["n_true"], fig["n_pred"]) == (2, 1)
    assert abs(fig["true_ml"] - 0.128) < 1e-9 and abs(fig["pred_ml"] - 0.048) < 1e-9
    assert abs(fig["dice"] - 2 * 48 / (128 + 48)) < 1e-9
    assert not acceptable(fig)  # count within 1, but 62 % of the volume missing
    pred[12:16, 12:16, 12:15] = 1
    assert acceptable(compare(truth, pred, 0.001))  # both found, 75 % of the volume
    assert not acceptable(compare(truth, np.zeros_like(truth), 0.001))
