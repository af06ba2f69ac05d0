"""Lesion edges (openrecon_stroke.lesion_edges): a lesion the classifier found only in part grows
to its own intensity edge, and no further."""

import json

import numpy as np
import pytest
from scipy import ndimage

from openrecon_stroke.lesion_edges import grow_to_edges
from openrecon_stroke.model_card import EdgeRefinement, ModelCardError, VoxelClassifierCard

SP = 1.5  # template grid, mm
RULE = EdgeRefinement(reach_mm=4.5, edge_fraction=0.5, min_contrast=0.1, p_floor=0.0, fill_holes=True)
#: the healthy intensity expected everywhere: white matter
WM = np.ones((32, 32, 32), np.float32)


def _ball(shape, centre, r):
    zz, yy, xx = np.indices(shape)
    return (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= r * r


def _head(level=0.25, shape=(32, 32, 32), r=6):
    """White matter (1.0) with a ball at ``level`` of it, and the probability a classifier gives
    only to the ball's inner part (radius 3: 123 of its 925 voxels)."""
    ball = _ball(shape, (16, 16, 16), r)
    rel = np.where(ball, level, 1.0).astype(np.float32)
    prob = np.where(_ball(shape, (16, 16, 16), 3), 0.9, 0.05).astype(np.float32)
    return ball, rel, prob, np.ones(shape, bool)


def test_a_lesion_found_in_its_core_grows_to_its_edge_and_no_further():
    ball, rel, prob, brain = _head()
    out, added = grow_to_edges(prob, rel, WM, brain, 0.7, 0.95 * 0.9, 10.0, SP, RULE)
    mask = out >= 0.7
    assert (mask == ball).all()
    assert added == pytest.approx((ball.sum() - (prob >= 0.7).sum()) * SP**3 / 1000)
    assert (out[prob >= 0.7] == prob[prob >= 0.7]).all()  # the lesion's own voxels keep their probability
    assert (
        prob == np.where(_ball(prob.shape, (16, 16, 16), 3), 0.9, 0.05).astype(np.float32)
    ).all()  # the input untouched


def test_growth_is_limited_by_its_reach_the_probability_floor_and_the_brain():
    ball, rel, prob, brain = _head(r=10)
    core = prob >= 0.7
    near = grow_to_edges(prob, rel, WM, brain, 0.7, 0.0, 10.0, SP, RULE)[0] >= 0.7
    steps = ndimage.distance_transform_cdt(~core, metric="chessboard")  # 26-connected steps from the core
    assert (near == (ball & (steps <= 3))).all()  # 4.5 mm = 3 steps of 1.5 mm, in the ball only
    floor = EdgeRefinement(reach_mm=4.5, edge_fraction=0.5, min_contrast=0.1, p_floor=0.1, fill_holes=True)
    assert ((grow_to_edges(prob, rel, WM, brain, 0.7, 0.0, 10.0, SP, floor)[0] >= 0.7) == core).all()
    cut = brain.copy()
    cut[:, :, :15] = False  # part of the ball outside the brain
    grown = grow_to_edges(prob * cut, rel, WM, cut, 0.7, 0.0, 10.0, SP, RULE)[0] >= 0.7
    assert not grown[~cut].any() and grown.sum() > (prob * cut >= 0.7).sum()


def test_a_ring_is_filled_and_a_faint_lesion_left_as_it_is():
    shape = (32, 32, 32)
    ball = _ball(shape, (16, 16, 16), 6)
    rel = np.where(ball, 0.25, 1.0).astype(np.float32)
    ring = (ball & ~_ball(shape, (16, 16, 16), 4)).astype(np.float32)  # the classifier's shell round a cavity
    grown = grow_to_edges(ring, rel, WM, np.ones(shape, bool), 0.7, 0.0, 10.0, SP, RULE)[0] >= 0.7
    assert (grown == ball).all()
    _, faint, prob, brain = _head(level=0.95)  # 5 % darker than its surroundings: not grown
    out, added = grow_to_edges(prob, faint, WM, brain, 0.7, 0.0, 10.0, SP, RULE)
    assert added == 0 and (out == prob).all()
    none = np.zeros(shape, np.float32)
    assert grow_to_edges(none, rel, WM, brain, 0.7, 0.0, 10.0, SP, RULE)[1] == 0.0


def test_dark_tissue_joins_only_where_the_template_expects_brighter_tissue():
    """A CSF-dark slab touching a small lesion: where the template expects white matter there it
    is abnormal and joins, up to the rule's reach; where it expects CSF (a ventricle next to a
    cavity) it stays out."""
    ball, rel, prob, brain = _head(r=3)
    rel[:, :, 20:26] = 0.2  # the lesion ends at x = 19
    core = prob >= 0.7
    steps = ndimage.distance_transform_cdt(~core, metric="chessboard")
    wm = grow_to_edges(prob, rel, WM, brain, 0.7, 0.0, 10.0, SP, RULE)[0] >= 0.7
    assert wm[:, :, 20:23].any() and (steps[wm] <= 3).all() and not wm[:, :, 23:].any()
    csf = WM.copy()
    csf[:, :, 20:26] = 0.2
    assert ((grow_to_edges(prob, rel, csf, brain, 0.7, 0.0, 10.0, SP, RULE)[0] >= 0.7) == core).all()


def _card(tmp_path, edge):
    d = {
        "kind": "voxel_classifier",
        "name": "t",
        "version": "0",
        "inputs": ["t1"],
        "template": {"name": "mni", "spacing_mm": 1.5},
        "features": ["t1_int"],
        "files": [{"file": "m.onnx", "sha256": ""}],
        "threshold": 0.7,
        "edge_refinement": edge,
    }
    (tmp_path / "card.json").write_text(json.dumps(d))
    return VoxelClassifierCard.load(tmp_path / "card.json", verify=False)


def test_card_reads_and_checks_its_edge_rule(tmp_path):
    good = {
        "contrast": "t1",
        "reach_mm": 4.5,
        "edge_fraction": 0.5,
        "min_contrast": 0.1,
        "p_floor": 0.0,
        "fill_holes": True,
    }
    assert _card(tmp_path, good).edge_refinement == RULE
    for bad in (
        {**good, "contrast": "flair"},
        {**good, "edge_fraction": 1.5},
        {**good, "reach_mm": -1},
        {"reach_mm": 3},
    ):
        with pytest.raises(ModelCardError):
            _card(tmp_path, bad)


def test_healthy_intensity_from_the_template_and_the_other_hemisphere():
    """Expected intensity = tissue probabilities x tissue means (relative to white matter); with
    the mirror, a place dark in both hemispheres (a ventricle the template placed wrongly) is
    expected dark, a place dark on one side only (a lesion) is still expected bright."""
    from openrecon_stroke.lesion_edges import healthy_intensity

    shape = (20, 20, 20)
    pri = {"gm": np.zeros(shape, np.float32), "wm": np.ones(shape, np.float32), "csf": np.zeros(shape, np.float32)}
    pri["csf"][:, :, :2] = 1.0
    pri["wm"][:, :, :2] = 0.0
    means = {"gm": 300.0, "wm": 500.0, "csf": 100.0}
    brain = np.ones(shape, bool)
    rel = np.ones(shape, np.float32)
    rel[5:15, 5:15, 3:6] = 0.2  # dark, left of the middle ...
    rel[5:15, 5:15, 14:17] = 0.2  # ... and its mirror image (x -> 19 - x): dark on both sides
    rel[8:12, 8:12, 8:10] = 0.2  # dark on one side only
    plain = healthy_intensity(rel, brain, means, pri, 1.5)
    assert plain[0, 0, 0] == pytest.approx(0.2) and plain[10, 10, 4] == pytest.approx(1.0)
    both = healthy_intensity(rel, brain, means, pri, 1.5, mirror=True)
    assert both[10, 10, 4] < 0.5 and both[10, 10, 15] < 0.5  # dark on both sides: expected dark
    assert both[10, 10, 9] > 0.8  # its mirror (x = 10) is bright white matter
