"""The REFLECT-style 2D flow experiment (``models/anomaly/reflect2d.py``): its synthetic
anomalies stay inside the brain and leave an absent contrast empty (numpy only; training and
scoring need PyTorch and the case cache)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).resolve().parents[1] / "models" / "anomaly" / "reflect2d.py"


def _module():
    spec = importlib.util.spec_from_file_location("reflect2d", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_synthetic_anomalies_stay_in_the_brain_and_in_the_contrasts_present():
    mod = _module()
    h, w = 64, 56
    yy, xx = np.mgrid[:h, :w]
    brain = (yy - 32) ** 2 / 28**2 + (xx - 28) ** 2 / 24**2 <= 1
    img = np.zeros((2, h, w), np.float32)
    img[0][brain] = 1.0  # T1-w present, white-matter-like
    changed_any = False
    for seed in range(20):
        rng = np.random.default_rng(seed)
        out, weight = mod.corrupt(rng, img, np.array([True, False]), brain)
        assert out.shape == img.shape and weight.shape == brain.shape
        assert np.all(out[:, ~brain] == 0) and np.all(weight[~brain] == 0)
        assert weight.min() >= 0 and weight.max() <= 1
        assert np.all(out[1] == 0)  # FLAIR absent: nothing painted there
        changed = np.abs(out[0] - img[0]) > 1e-6
        assert np.all(weight[changed] > 0)  # only where an anomaly was placed
        changed_any |= bool(changed.any())
    assert changed_any
