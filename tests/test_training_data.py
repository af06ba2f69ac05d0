"""Training cases are prepared on the network grid exactly as the runner prepares scanner data."""

import numpy as np
import pytest

from simulator.training import cached_case, make_case

pytestmark = pytest.mark.slow


def test_case_on_network_grid_with_lesions_inside_brain(tmp_path):
    c = make_case(None, seed=4)
    x, y, brain = c["x"], c["y"], c["brain"]
    assert x.shape[0] == 2 and x.shape[1:] == y.shape == brain.shape
    assert c["spacing_mm"] == (1.0, 1.0, 1.0)
    assert y.sum() > 0 and (brain[y > 0]).mean() > 0.95
    for ch in range(2):  # z-scored inside the brain, zero outside
        assert abs(x[ch][brain].mean()) < 1e-3 and abs(x[ch][brain].std() - 1) < 1e-3
        assert np.all(x[ch][~brain] == 0)
    # chronic lesion: dark on T1-w relative to the brain
    assert x[0][y > 0].mean() < -0.5
    again = cached_case(tmp_path, None, seed=4)
    cached = cached_case(tmp_path, None, seed=4)
    assert np.array_equal(again["x"], c["x"]) and np.array_equal(cached["y"], c["y"])
