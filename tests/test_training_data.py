"""Training cases are prepared on the network grid exactly as the runner prepares scanner data."""

import numpy as np
import pytest

from simulator.training import as_in_pipeline, cached_case, evaluation_case, in_pipeline_mask, make_case

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


def test_case_remade_with_the_pipelines_own_brain_mask_when_asked(tmp_path):
    """``require=("brain_bet",)`` remakes a cached case that lacks the HD-BET mask; the head is
    the same (same seed), ``raw`` z-scored in the exact brain gives ``x``, and HD-BET's mask is
    close to, but not, the exact one (the difference the lesion models are trained to bear)."""
    from openrecon_stroke.lesion import normalise

    sp = (2.0, 2.0, 2.0)
    plain = cached_case(tmp_path, None, seed=4, spacing_mm=sp)
    assert "brain_bet" not in plain and "icv" in plain
    c = cached_case(tmp_path, None, seed=4, spacing_mm=sp, require=("raw", "brain_bet"))
    assert np.array_equal(c["x"], plain["x"])
    brain, bet = c["brain"] > 0, c["brain_bet"] > 0
    for ch in range(2):
        np.testing.assert_allclose(normalise(c["raw"][ch], brain, "zscore_brain"), c["x"][ch], atol=1e-4)
    dice = 2 * (brain & bet).sum() / (brain.sum() + bet.sum())
    assert 0.85 < dice < 1.0
    # the intracranial mask (brain + extra-cerebral CSF) holds the brain, and most of what HD-BET
    # adds to the brain is that CSF
    icv = c["icv"] > 0
    assert np.all(icv[brain]) and icv.sum() > 1.05 * brain.sum()
    added = bet & ~brain
    assert (added & icv).sum() > 0.8 * added.sum()
    again = cached_case(tmp_path, None, seed=4, spacing_mm=sp, require=("brain_bet",))
    assert np.array_equal(again["brain_bet"], c["brain_bet"])
    seen = in_pipeline_mask(c)  # what the pipeline feeds the network: z-scored in HD-BET's mask
    assert np.all(seen[:, ~bet] == 0) and abs(seen[0][bet].mean()) < 1e-3 and not np.allclose(seen, c["x"])
    view = as_in_pipeline(c)  # the whole case as the evaluations score it
    assert np.array_equal(view["brain"], bet) and np.array_equal(view["x"], seen) and view["y"] is c["y"]
    scored = evaluation_case(tmp_path, None, seed=4, brain="hd-bet", spacing_mm=sp)  # from the cache
    assert np.array_equal(scored["brain"], bet) and np.array_equal(scored["x"], seen)
    assert np.array_equal(evaluation_case(tmp_path, None, seed=4, spacing_mm=sp)["x"], plain["x"])
    with pytest.raises(ValueError):
        evaluation_case(tmp_path, None, seed=4, brain="bet", spacing_mm=sp)
