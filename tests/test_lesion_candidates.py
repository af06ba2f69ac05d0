"""Lesion candidates (components of a template-space probability) and the candidate filter."""

import json
from pathlib import Path

import numpy as np
import pytest

from openrecon_stroke import lesion_candidates as lc
from openrecon_stroke.model_card import ModelCardError, VoxelClassifierCard

REPO = Path(__file__).resolve().parents[1]


def _ball(shape, centre, r):
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= r * r


def test_label_keeps_components_that_are_large_and_certain_enough():
    shape = (30, 30, 40)
    prob = np.zeros(shape, np.float32)
    prob[_ball(shape, (15, 15, 10), 4)] = 0.95  # certain, 257 voxels
    prob[_ball(shape, (15, 15, 30), 4)] = 0.6  # below the seed
    prob[5, 5, 20] = 0.99  # one voxel: 3.4 mm3 on a 1.5 mm grid, under 10 mm3
    lab, ids = lc.label(prob, 0.3, 0.9, 10.0, 1.5**3)
    assert len(ids) == 1 and lab[15, 15, 10] == ids[0]
    lab2, ids2 = lc.label(prob, 0.3, 0.0, 1.0, 1.5**3)
    assert len(ids2) == 3


def test_describe_reads_inside_shell_and_mirror():
    """A dark ball in white matter (relative intensity 0.4 in 1.0): inside 0.4, shell 1.0, rim 0.6;
    a ball at the mirrored place with half the probability gives p_mirror 0.5 of p."""
    shape = (30, 32, 40)  # x mirrored by flipping the last axis
    brain = np.ones(shape, bool)
    ball = _ball(shape, (15, 16, 10), 4)
    prob = np.where(ball, 0.9, 0.0).astype(np.float32)
    prob[:, :, ::-1][ball] = 0.45
    rel = np.where(ball, 0.4, 1.0).astype(np.float32)
    vox = {"flair_int": rel, "flair_z": np.where(ball, -5.0, 0.0).astype(np.float32)}
    vox["flair_mirror"] = rel - rel[:, :, ::-1]
    priors = {k: np.full(shape, v, np.float32) for k, v in (("csf", 0.1), ("wm", 0.8), ("depth", 20.0))}
    lab, ids = lc.label(prob, 0.3, 0.5, 10.0, 1.5**3)
    assert len(ids) == 1
    row = dict(zip(lc.feature_names(("flair",)), lc.describe(prob, lab, ids, brain, vox, ("flair",), priors, 1.5)[0]))
    n = int(ball.sum())
    assert row["log_ml"] == pytest.approx(np.log10(n * 1.5**3 / 1000), abs=1e-5)
    assert row["p_max"] == pytest.approx(0.9) and row["p_mirror"] == pytest.approx(0.45)
    assert row["flair_int"] == pytest.approx(0.4) and row["flair_z"] == pytest.approx(-5.0)
    assert row["flair_shell"] == pytest.approx(1.0) and row["flair_rim"] == pytest.approx(0.6)
    assert row["flair_mirror"] == pytest.approx(-0.6, abs=1e-5)
    assert row["edge"] == 0.0 and row["prior_wm"] == pytest.approx(0.8) and row["prior_depth"] == pytest.approx(20.0)
    # the same ball cut by the brain's edge: part of its shell lies outside the brain
    brain2 = brain.copy()
    brain2[:, :, :8] = False
    row2 = lc.describe(prob, lab, ids, brain2, vox, ("flair",), priors, 1.5)[0]
    assert row2[lc.feature_names(("flair",)).index("edge")] > 0.1


def test_a_model_on_the_standardised_scale_gets_candidate_features_on_that_scale():
    """A T1-w model that reads only tissue-standardised intensity (t1_tint, t1_tmirror) is described
    on that scale, under the t-names; a model with both scales keeps the white-matter-relative one."""
    standardised = ["t1_tint", "t1_tint_s2", "t1_z", "t1_texpect", "t1_tmirror", "prior_gm"]
    assert lc.scale("t1", standardised) == "t" and lc.scale("t1", standardised + ["t1_int"]) == ""
    assert lc.scale("flair", standardised) == "" and lc.scale("t1", None) == ""
    assert lc.voxel_keys(("t1",), standardised) == ["t1_tint", "t1_z", "t1_tmirror"]
    names = lc.feature_names(("t1",), standardised)
    assert names[-6:] == ["t1_tint", "t1_z", "t1_tmirror", "t1_tshell", "t1_tshell_p90", "t1_trim"]
    assert lc.feature_names(("t1",))[-6:] == ["t1_int", "t1_z", "t1_mirror", "t1_shell", "t1_shell_p90", "t1_rim"]
    shape = (20, 22, 30)
    brain = np.ones(shape, bool)
    ball = _ball(shape, (10, 11, 8), 3)
    prob = np.where(ball, 0.9, 0.0).astype(np.float32)
    x = np.zeros((int(brain.sum()), len(standardised)), np.float32)
    x[:, 0] = np.where(ball, 0.25, 1.0)[brain]  # a CSF-level cavity in white matter
    x[:, 2] = np.where(ball, -4.0, 0.0)[brain]
    vox = lc.voxel_arrays(x, standardised, brain, ("t1",))
    assert sorted(vox) == ["t1_tint", "t1_tmirror", "t1_z"]
    priors = {k: np.full(shape, v, np.float32) for k, v in (("csf", 0.1), ("wm", 0.8), ("depth", 20.0))}
    lab, ids = lc.label(prob, 0.3, 0.5, 10.0, 1.5**3)
    row = dict(zip(names, lc.describe(prob, lab, ids, brain, vox, ("t1",), priors, 1.5)[0]))
    assert row["t1_tint"] == pytest.approx(0.25) and row["t1_tshell"] == pytest.approx(1.0)
    assert row["t1_trim"] == pytest.approx(0.75) and row["t1_z"] == pytest.approx(-4.0)
    with pytest.raises(ValueError, match="t1_tmirror"):
        lc.voxel_arrays(x[:, :4], standardised[:4], brain, ("t1",))


def test_anatomy_features_read_this_heads_ventricles_and_csf():
    """A candidate inside a measured ventricle (an enlarged horn the template lacks) has share 1, a
    shell mostly in it and dark CSF beyond it; a cavity alone in white matter has 0, 0 and none;
    the columns come after the global ones and only when asked."""
    shape = (30, 32, 40)
    brain = np.ones(shape, bool)
    horn, cavity = _ball(shape, (15, 16, 10), 4), _ball(shape, (15, 16, 30), 3)
    ventricle = _ball(shape, (15, 16, 10), 6)  # the measured ventricle, larger than the candidate
    prob = np.where(horn | cavity, 0.9, 0.0).astype(np.float32)
    rel = np.where(horn | cavity, 0.3, 1.0).astype(np.float32)
    vox = {"t1_int": rel, "t1_z": np.zeros(shape, np.float32), "t1_mirror": rel - rel[:, :, ::-1]}
    priors = {k: np.full(shape, v, np.float32) for k, v in (("csf", 0.1), ("wm", 0.8), ("depth", 20.0))}
    lab, ids = lc.label(prob, 0.3, 0.5, 10.0, 1.5**3)
    names = lc.feature_names(("t1",), anatomy=True)
    assert names[len(lc.GLOBAL_FEATURES) : len(lc.GLOBAL_FEATURES) + 3] == ["vent_share", "vent_shell", "dark_beyond"]
    assert "vent_share" not in lc.feature_names(("t1",))
    head = lc.HeadAnatomy(ventricles=ventricle, dark=ventricle | cavity)
    rows = lc.describe(prob, lab, ids, brain, vox, ("t1",), priors, 1.5, head)
    assert rows.shape == (2, len(names))
    by = {int(lab[15, 16, 10]): "horn", int(lab[15, 16, 30]): "cavity"}
    got = {by[k]: dict(zip(names, r)) for k, r in zip(ids, rows)}
    assert got["horn"]["vent_share"] == 1.0 and got["horn"]["vent_shell"] > 0.9
    beyond = (ventricle & ~horn).sum() / horn.sum()
    assert got["horn"]["dark_beyond"] == pytest.approx(np.log10(1 + beyond), abs=1e-5)
    assert got["cavity"]["vent_share"] == 0.0 and got["cavity"]["vent_shell"] == 0.0
    assert got["cavity"]["dark_beyond"] == 0.0
    assert lc.describe(prob, lab, ids, brain, vox, ("t1",), priors, 1.5).shape == (2, len(names) - 3)


def test_head_anatomy_follows_a_ventricle_larger_than_the_templates():
    """On a head made of the template's tissue maps with its lateral ventricles grown by 3 mm, the
    measured ventricles cover the grown part, which the template's own ventricles do not; the
    grown part is CSF-dark, white matter is not."""
    from scipy import ndimage

    from openrecon_stroke import template
    from openrecon_stroke.regions import lateral_ventricles_on_template

    sp = 3.0
    pri = template.load_template(sp).arrays()
    brain = pri["brain"] > 0.5
    vent = lateral_ventricles_on_template(sp)
    grown = ndimage.binary_dilation(vent, iterations=1) & brain
    img = 500 * (0.75 * pri["gm"] + 1.0 * pri["wm"] + 0.25 * pri["csf"])
    img = np.where(grown, 125.0, img).astype(np.float32)
    means = template.tissue_means(img, pri["gm"], pri["wm"], pri["csf"], brain)
    from openrecon_stroke.lesion_voxel import head_anatomy

    head = head_anatomy(img, brain, means, sp)
    got = head.ventricles
    ring = grown & ~vent
    assert got[ring].mean() > 0.8 and got[vent & brain].mean() > 0.8
    assert got[brain & ~ndimage.binary_dilation(grown, iterations=2)].mean() < 0.01
    assert head.dark[ring].all() and not head.dark[brain & (pri["wm"] > 0.9) & ~grown].any()


def test_card_rejects_a_candidate_filter_that_does_not_fit(tmp_path):
    src = REPO / "models" / "lesion" / "flair"
    d = json.loads((src / "card.json").read_text())
    d["normative"] = str((src / d["normative"]).resolve())
    for f in d["files"]:
        (tmp_path / f["file"]).write_bytes((src / f["file"]).read_bytes())
    d.pop("cascade", None)
    (tmp_path / "candidates.onnx").write_bytes(b"x")
    good = {
        "file": "candidates.onnx",
        "sha256": "",
        "features": lc.feature_names(("flair",)),
        "threshold": 0.3,
        "seed_probability": 0.9,
        "min_probability": 0.1,
    }
    for bad, msg in (
        ({**good, "features": lc.feature_names(("t1",))}, "features must be"),
        ({**good, "threshold": 1.5}, "0 < threshold < 1"),
        ({k: v for k, v in good.items() if k != "min_probability"}, "needs file, features"),
    ):
        (tmp_path / "card.json").write_text(json.dumps({**d, "candidate_filter": bad}))
        with pytest.raises(ModelCardError, match=msg):
            VoxelClassifierCard.load(tmp_path)
    (tmp_path / "card.json").write_text(json.dumps({**d, "candidate_filter": good}))
    assert VoxelClassifierCard.load(tmp_path).candidate_filter.min_probability == 0.1
    assert not VoxelClassifierCard.load(tmp_path).candidate_filter.uses_anatomy
    with_vent = {**good, "features": lc.feature_names(("flair",), anatomy=True)}
    (tmp_path / "card.json").write_text(json.dumps({**d, "candidate_filter": with_vent}))
    assert VoxelClassifierCard.load(tmp_path).candidate_filter.uses_anatomy
    d["features"] = [f for f in d["features"] if f != "flair_mirror"]
    (tmp_path / "card.json").write_text(json.dumps({**d, "candidate_filter": good}))
    with pytest.raises(ModelCardError, match="needs the voxel features"):
        VoxelClassifierCard.load(tmp_path)


def _painted_head(card, model):
    """Template-space images of the card's contrasts made from the template's tissue maps, with a
    CSF-like cavity (bright gliotic rim on FLAIR) in the right hemisphere's white matter."""
    pri = model.priors()
    brain = pri["brain"] > 0.5
    rng = np.random.default_rng(1)
    level = {"t1": (0.75, 1.0, 0.25), "flair": (1.1, 1.0, 0.3)}
    images = {}
    for c in card.inputs:
        gm, wm, csf = level[c]
        img = 500 * (gm * pri["gm"] + wm * pri["wm"] + csf * pri["csf"])
        images[c] = (img * (1 + 0.03 * rng.standard_normal(img.shape))).astype(np.float32)
    zz, yy, xx = np.nonzero((pri["wm"] > 0.9) & brain)
    k = int(np.argmax(xx))
    centre = (zz[k], yy[k], xx[k] - 8)
    cav, rim = _ball(brain.shape, centre, 5), _ball(brain.shape, centre, 7)
    for c in card.inputs:
        if c == "flair":
            images[c][rim & ~cav] = 1.6 * level[c][1] * 500
        images[c][cav] = level[c][2] * 500
    return images, brain, centre


def _with_filter() -> list[str]:
    """The shipped lesion cards that carry a candidate filter (a card folder that is absent, or
    broken, fails in the test that loads it, not here)."""
    names = []
    for name in ("fusion", "flair", "t1"):
        p = REPO / "models" / "lesion" / name / "card.json"
        if p.is_file() and json.loads(p.read_text()).get("candidate_filter"):
            names.append(name)
    return names or ["none"]


def _shipped_with_filter(name: str):
    if name == "none":
        pytest.skip("no shipped lesion card has a candidate filter")
    return name, VoxelClassifierCard.load(REPO / "models" / "lesion" / name)


@pytest.mark.parametrize("name", _with_filter())
def test_shipped_candidate_filter_keeps_a_clear_cavity_and_changes_only_whole_candidates(name):
    """The filtered map equals the unfiltered one except on whole candidates, each of which the
    filter judged under its cut; the painted cavity (a clear lesion) is kept."""
    from openrecon_stroke.lesion_voxel import VoxelLesionModel

    _, card = _shipped_with_filter(name)
    f = card.candidate_filter
    model = VoxelLesionModel(card)
    images, brain, centre = _painted_head(card, model)
    whole = model.probability_arrays(images, brain, candidates=False, edges=False)
    got = model.probability_arrays(images, brain, edges=False)
    lab, ids = lc.label(whole, f.threshold, f.seed_probability, card.min_lesion_mm3, card.spacing_mm**3)
    assert lab[centre] in ids, "the painted cavity is a candidate"
    judged = dict(zip(ids, model.judge_candidates(model.features(images, brain), whole, brain, lab, ids, images)))
    assert judged[lab[centre]] >= f.min_probability
    removed = [k for k, q in judged.items() if q < f.min_probability]
    assert (got[np.isin(lab, removed)] == 0).all()
    np.testing.assert_array_equal(got[~np.isin(lab, removed)], whole[~np.isin(lab, removed)])


@pytest.mark.parametrize("name", _with_filter())
def test_candidate_filter_with_the_highest_cut_removes_every_candidate_and_nothing_else(name, tmp_path):
    """The shipped filter with its cut raised to just under 1: every candidate goes, whole, and
    every other voxel keeps its probability; the filter is off with ``candidates=False``."""
    import shutil

    from openrecon_stroke.lesion_voxel import VoxelLesionModel

    name, card = _shipped_with_filter(name)
    src = REPO / "models" / "lesion" / name
    d = json.loads((src / "card.json").read_text())
    d["normative"] = str((src / d["normative"]).resolve())
    for f in (
        [e["file"] for e in d["files"]]
        + [d["candidate_filter"]["file"]]
        + ([d["cascade"]["file"]] if d.get("cascade") else [])
    ):
        shutil.copy(src / f, tmp_path / f)
    d["candidate_filter"]["min_probability"] = 0.999999
    (tmp_path / "card.json").write_text(json.dumps(d))
    strict = VoxelLesionModel(VoxelClassifierCard.load(tmp_path))
    f = strict.card.candidate_filter
    images, brain, centre = _painted_head(strict.card, strict)
    whole = strict.probability_arrays(images, brain, candidates=False, edges=False)
    got = strict.probability_arrays(images, brain, edges=False)
    lab, ids = lc.label(whole, f.threshold, f.seed_probability, strict.card.min_lesion_mm3, strict.card.spacing_mm**3)
    assert ids and lab[centre] in ids
    gone = np.isin(lab, ids)
    assert (got[gone] == 0).all() and (whole[gone] >= f.threshold).all()
    np.testing.assert_array_equal(got[~gone], whole[~gone])
