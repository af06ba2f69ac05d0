"""The normative model's pieces: z-scores and the calibrated score, ventricle volume on a known
brain, regions of abnormal expansion from a log-Jacobian, and the simulator's ventricle growth
that the ventricle evaluation relies on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from openrecon_stroke.normative import (
    MIN_VENTRICLE_VOXELS,
    Stats,
    anomaly_score,
    csf_relative,
    deformation_regions,
    relative_image,
    standardise,
    ventricle_measure,
)


def _sphere(shape, centre, radius):
    zz, yy, xx = np.indices(shape)
    return (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= radius**2


def test_stats_z_is_the_distance_from_healthy_in_standard_deviations():
    mean = np.full((4, 4, 4), 1.0, np.float32)
    std = np.full((4, 4, 4), 0.1, np.float32)
    s = Stats(mean, std)
    value = mean.copy()
    value[1, 1, 1] = 0.5  # a CSF-like cavity where white matter belongs
    z = s.z(value)
    assert z[1, 1, 1] == pytest.approx(-5.0, abs=1e-4)
    assert np.abs(np.delete(z.ravel(), 1 * 16 + 1 * 4 + 1)).max() < 1e-5


def test_standardise_puts_csf_on_the_healthy_level_and_keeps_white_matter():
    rel = np.array([0.05, 0.5, 1.0, 1.2], np.float32)  # CSF, grey matter, white matter, brighter
    out = standardise(rel, csf_relative=0.05, csf_reference=0.33)
    assert out[0] == pytest.approx(0.33, abs=1e-6) and out[2] == pytest.approx(1.0, abs=1e-6)
    assert 0.33 < out[1] < 1.0 and out[3] > 1.0  # order kept
    assert np.allclose(standardise(rel, 0.33, 0.33), rel)  # a brain like the healthy ones: unchanged
    # an absurd CSF level (a failed tissue estimate) cannot stretch the image beyond a factor 2
    assert np.allclose(standardise(rel, 0.95, 0.33), 2.0 * rel - 1.0)


def test_csf_level_measured_in_the_template_ventricles_not_at_a_cut_edge():
    """On the template grid: a brain whose lateral ventricles (the template's, from the region
    map) hold CSF at 0.2 of white matter, while the tissue means put CSF at 0.5 (e.g. a brain
    stripped by another tool, its cut edge counted as CSF). The ventricle rule reads 0.2 and
    standardises to the reference; the brain rule reads 0.5; too few ventricle voxels inside the
    brain: no level, and the image is only made white-matter-relative."""
    from openrecon_stroke.regions import lateral_ventricles_on_template

    vent = lateral_ventricles_on_template(3.0)
    assert vent.sum() >= MIN_VENTRICLE_VOXELS and not vent.flags.writeable
    image = np.full(vent.shape, 200.0, np.float32)  # white matter 200
    image[vent] = 40.0
    brain = np.ones(vent.shape, bool)
    means = {"wm": 200.0, "gm": 120.0, "csf": 100.0}
    assert csf_relative(image, means, brain, "lateral_ventricles", 3.0) == pytest.approx(0.2)
    assert csf_relative(image, means, brain, "brain", 3.0) == pytest.approx(0.5)
    rel = relative_image("t1", image, means, brain, {"t1": 0.25}, "lateral_ventricles", 3.0)
    assert rel[vent].mean() == pytest.approx(0.25, abs=1e-6) and rel[~vent].mean() == pytest.approx(1.0, abs=1e-6)
    # FLAIR has no reference here: white-matter-relative only
    assert np.allclose(relative_image("flair", image, means, brain, {"t1": 0.25}, "lateral_ventricles", 3.0), image / 200)
    outside = np.zeros_like(brain)
    assert csf_relative(image, means, outside, "lateral_ventricles", 3.0) is None
    assert np.allclose(relative_image("t1", image, means, outside, {"t1": 0.25}, "lateral_ventricles", 3.0), image / 200)
    assert csf_relative(image, {"wm": 0.0, "csf": 1.0}, brain, "brain", 3.0) is None
    with pytest.raises(ValueError, match="unknown CSF place"):
        csf_relative(image, means, brain, "sulci", 3.0)


def test_tissue_standardised_image_puts_every_contrast_on_the_same_levels():
    """Two T1-w contrasts of one brain (CSF/GM/WM at 0.10/0.55/1 and 0.40/0.85/1 of white matter):
    tissue-standardised, both read CSF 0.25, grey matter 0.70, white matter 1 (the lesion
    features' levels); a CSF reference for the same contrast is not used then."""
    from openrecon_stroke.voxel_features import TISSUE_LEVELS

    brain = np.ones((4, 4, 4), bool)
    for csf, gm in ((0.10, 0.55), (0.40, 0.85)):
        image = np.array([csf, gm, 1.0], np.float32) * 300.0
        means = {"csf": csf * 300.0, "gm": gm * 300.0, "wm": 300.0}
        rel = relative_image("t1", image, means, brain, {"t1": 0.5}, "brain", 3.0, tissue=("t1",))
        assert np.allclose(rel, [TISSUE_LEVELS["t1"][t] for t in ("csf", "gm", "wm")], atol=1e-6)


def test_anomaly_score_flags_the_abnormal_side_not_its_mirror():
    """A symmetric healthy brain (x axis mirrored about its centre) with a unilateral cavity:
    the asymmetry part lights the cavity, not the healthy tissue mirrored across; and it finds a
    mild cavity that the intensity z alone scores low, where healthy brains vary a lot but their
    two sides agree."""
    shape = (20, 20, 21)
    brain = _sphere(shape, (10, 10, 10), 9)
    healthy = np.full(shape, 1.0, np.float32)
    intensity = {"t1": Stats(healthy, np.full(shape, 0.3, np.float32))}  # wide healthy spread
    asymmetry = {"t1": Stats(np.zeros(shape, np.float32), np.full(shape, 0.05, np.float32))}  # sides agree
    rel = healthy.copy()
    cavity = _sphere(shape, (10, 10, 5), 2)
    rel[cavity] = 0.7  # 1 healthy SD darker than white matter, 6 SD of the left-right difference
    mirrored = cavity[:, :, ::-1]
    only_z = anomaly_score({"t1": rel}, brain, intensity, asymmetry, 0.0, 1.0, ("intensity",))
    both = anomaly_score({"t1": rel}, brain, intensity, asymmetry, 0.0, 1.0)
    assert only_z[cavity].mean() == pytest.approx(1.0, abs=1e-4)
    assert both[cavity].mean() == pytest.approx(6.0, abs=1e-3)
    assert both[mirrored].max() < 1e-6 and both[brain & ~cavity].max() < 1e-6
    assert np.all(both[~brain] == 0)
    with pytest.raises(ValueError, match="parts"):
        anomaly_score({"t1": rel}, brain, intensity, asymmetry, 0.0, 1.0, ("mirror",))


def test_darker_only_scores_a_cavity_and_not_a_bright_vessel():
    """A T1-w with a dark cavity on one side and a bright blob (contrast agent in a vessel) on the
    other: the two-sided score lights both, the darker-only score the cavity alone, as strongly."""
    shape = (20, 20, 21)
    brain = _sphere(shape, (10, 10, 10), 9)
    healthy = np.full(shape, 1.0, np.float32)
    intensity = {"t1": Stats(healthy, np.full(shape, 0.1, np.float32))}
    asymmetry = {"t1": Stats(np.zeros(shape, np.float32), np.full(shape, 0.1, np.float32))}
    rel = healthy.copy()
    cavity, vessel = _sphere(shape, (10, 6, 5), 2), _sphere(shape, (10, 14, 15), 2)
    rel[cavity], rel[vessel] = 0.5, 1.6
    both = anomaly_score({"t1": rel}, brain, intensity, asymmetry, 0.0, 1.0)
    darker = anomaly_score({"t1": rel}, brain, intensity, asymmetry, 0.0, 1.0, darker_only=("t1",))
    assert both[vessel].min() > 5 and both[cavity].min() > 4
    assert darker[vessel].max() < 1e-6
    np.testing.assert_allclose(darker[cavity], both[cavity], rtol=1e-6)
    assert darker[cavity[:, :, ::-1]].max() < 1e-6  # the cavity's mirror is healthy, not darker
    assert darker[vessel[:, :, ::-1]].max() < 1e-6  # nor is the healthy side across from the vessel
    # a FLAIR keeps both sides while the T1-w is darker-only
    fl = anomaly_score({"flair": rel}, brain, {"flair": intensity["t1"]}, {}, 0.0, 1.0, darker_only=("t1",))
    assert fl[vessel].min() > 5


def _region_map(shape, template_vent):
    """A region map as carried onto a series: left half (x < mid) left white matter, right half
    right white matter, the template's ventricles labelled by side."""
    from openrecon_stroke import regions

    names = {v: k for k, v in regions.load_regions()[1].items()}
    lab = np.zeros(shape, np.int16)
    mid = shape[2] // 2
    lab[..., :mid] = names["left deep white matter"]
    lab[..., mid:] = names["right deep white matter"]
    lab[template_vent & (np.indices(shape)[2] < mid)] = names["left lateral ventricle"]
    lab[template_vent & (np.indices(shape)[2] >= mid)] = names["right lateral ventricle"]
    return lab


def test_ventricle_volume_measures_dark_voxels_near_the_template_ventricles():
    shape, sp = (60, 60, 60), (1.0, 1.0, 1.0)
    brain = _sphere(shape, (30, 30, 30), 27)
    image = np.where(brain, 1.0, 0.0).astype(np.float32)  # white matter
    true_vent = _sphere(shape, (30, 30, 18), 7) | _sphere(shape, (30, 30, 42), 7)  # left and right
    image[true_vent] = 0.3  # CSF
    remote_csf = _sphere(shape, (52, 30, 18), 3)  # a sulcus far from the ventricles
    image[remote_csf] = 0.3
    template_vent = _sphere(shape, (30, 30, 18), 5) | _sphere(shape, (30, 30, 42), 5)  # smaller
    labels = _region_map(shape, template_vent)
    means = {"csf": 0.3, "gm": 0.7, "wm": 1.0}
    truth = true_vent.sum() / 1000.0
    ml = ventricle_measure(image, brain, labels, means, sp).ml
    assert ml == pytest.approx(truth, rel=0.03)  # measured whole, sulcus left out
    # a sulcus joined to the ventricles by a 1 mm bridge is still left out (the opening cuts it)
    image[30, 30, 18:] = np.where(true_vent[30, 30, 18:], 0.3, image[30, 30, 18:])
    image[37:50, 30, 18] = 0.3
    assert ventricle_measure(image, brain, labels, means, sp).ml == pytest.approx(ml, rel=0.03)
    # CSF on the midline (the interhemispheric fissure), touching both ventricles: left out
    fissure = np.zeros(shape, bool)
    fissure[10:40, 22:38, 28:32] = True
    image[fissure & brain] = 0.3
    assert ventricle_measure(image, brain, labels, means, sp).ml == pytest.approx(ml, rel=0.03)
    # no ventricles carried over (failed registration): nothing measured
    assert ventricle_measure(image, brain, np.zeros(shape, np.int16), means, sp).ml == 0.0


def test_ventricle_volume_counts_partial_volume_at_the_walls():
    """A ventricle seen at a coarser resolution (each wall voxel part CSF, part tissue) measures
    its true volume, not only its fully dark voxels."""

    shape, sp = (60, 60, 60), (1.0, 1.0, 1.0)
    brain = _sphere(shape, (30, 30, 30), 27)
    fine = np.where(brain, 1.0, 0.0).astype(np.float32)
    true_vent = _sphere(shape, (30, 30, 20), 9)
    fine[true_vent] = 0.1
    image = np.where(brain, ndimage.uniform_filter(fine, 3), 0.0).astype(np.float32)  # partial volume
    labels = _region_map(shape, _sphere(shape, (30, 30, 20), 6))
    means = {"csf": 0.1, "gm": 0.6, "wm": 1.0}
    dark_only = float(((image < 0.1 + 0.35 * 0.5) & brain).sum()) / 1000.0
    ml = ventricle_measure(image, brain, labels, means, sp).ml
    true_ml = true_vent.sum() / 1000.0
    assert dark_only < 0.8 * true_ml  # counting the dark voxels alone misses a quarter
    assert ml == pytest.approx(true_ml, rel=0.1)


def test_ventricle_measure_leaves_out_a_lesion_cavity_joined_to_a_ventricle():
    """A chronic lesion cavity is as dark as CSF; where it opens into a ventricle it is counted
    with it, unless measured again without the segmented lesion. ``counted`` says which voxels
    counted."""
    shape, sp = (60, 60, 60), (1.0, 1.0, 1.0)
    brain = _sphere(shape, (30, 30, 30), 27)
    image = np.where(brain, 1.0, 0.0).astype(np.float32)
    true_vent = _sphere(shape, (30, 30, 18), 7) | _sphere(shape, (30, 30, 42), 7)
    cavity = _sphere(shape, (30, 41, 16), 6) & ~true_vent  # opens wide into the left ventricle
    remote_csf = _sphere(shape, (52, 30, 18), 3)
    image[true_vent | cavity | remote_csf] = 0.3
    labels = _region_map(shape, _sphere(shape, (30, 30, 18), 5) | _sphere(shape, (30, 30, 42), 5))
    means = {"csf": 0.3, "gm": 0.7, "wm": 1.0}
    truth = true_vent.sum() / 1000.0
    joined = ventricle_measure(image, brain, labels, means, sp)
    assert joined.ml > truth + 0.8 * cavity.sum() / 1000.0  # the cavity counted as ventricle
    assert joined.counted[cavity].mean() > 0.9 and joined.counted.shape == shape
    apart = joined.without(cavity)
    assert apart.ml == pytest.approx(truth, rel=0.03)
    assert not apart.counted[cavity].any() and apart.counted[true_vent].mean() > 0.99
    assert not apart.counted[remote_csf].any()
    # the same as measuring an image in which the cavity is tissue
    image[cavity] = 1.0
    assert ventricle_measure(image, brain, labels, means, sp).ml == pytest.approx(apart.ml, rel=0.01)


def test_deformation_regions_find_a_known_expansion():
    shape = (40, 40, 40)
    brain = _sphere(shape, (20, 20, 20), 18)
    stats = Stats(np.zeros(shape, np.float32), np.full(shape, 0.05, np.float32))
    logj = np.random.default_rng(0).normal(0, 0.05, shape).astype(np.float32) * 0.5
    grown = _sphere(shape, (20, 20, 12), 4)
    logj[grown] = np.log(1.5)  # 50 % larger than healthy brains there (z about 8)
    regions = deformation_regions(logj, stats, brain, spacing_mm=2.0, z_limit=3.0, min_ml=0.1)
    assert regions and regions[0]["kind"] == "expansion"
    assert regions[0]["volume_ml"] == pytest.approx(grown.sum() * 8 / 1000, rel=0.1)
    assert np.allclose(regions[0]["centroid_zyx"], (20, 20, 12), atol=1.0)
    assert not [r for r in regions if r["kind"] == "contraction"]
    # healthy deformation: no region
    assert deformation_regions(np.zeros(shape, np.float32), stats, brain, 2.0, min_ml=0.1) == []


def test_simulated_ventricle_growth_is_the_fraction_asked_for():
    import SimpleITK as sitk

    from simulator.anatomy import Tissue, load_head
    from simulator.anatomy.lesions import enlarge_ventricles

    labels = load_head("mni")
    grown, before, after = enlarge_ventricles(labels, 0.2)
    assert after == pytest.approx(1.2 * before, rel=0.01)
    a, b = sitk.GetArrayFromImage(labels), sitk.GetArrayFromImage(grown)
    changed = a != b
    assert changed.any() and (b[changed] == Tissue.CSF).all()  # only white / deep grey became CSF
    with pytest.raises(ValueError):
        enlarge_ventricles(labels, -0.1)


def test_ventricle_evaluation_reads_the_volume_the_anomaly_stage_measured(monkeypatch):
    """`models/normative/evaluate.py`'s ventricle test runs preprocessing, template and anomaly
    stages on a phantom whose ventricles were grown, and must find the volume the anomaly stage
    measured (it read none after the stage was split in two)."""
    import importlib.util
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    monkeypatch.setenv("OPENRECON_NORMATIVE_DIR", str(repo / "models" / "normative"))  # it sets it; restored after
    spec = importlib.util.spec_from_file_location("normative_evaluate", repo / "models/normative/evaluate.py")
    evaluate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(evaluate)  # it puts models/normative and models/lesion on sys.path

    (row,) = evaluate.ventricle_test(repo / "models" / "normative", ["mni"], growths=(0.2,))
    assert row["measured_ml"] is not None
    assert 0.7 < row["measured_ml"] / row["true_ml"] < 1.4, row


def test_ventricles_apart_covers_grown_ventricles_and_not_a_cavity():
    """The ventricles a card with ``ventricles_apart`` leaves out of the map: on a head made of
    the template's tissue maps, its lateral ventricles grown by 3 mm on both sides (the part a
    registration leaves over the template's white matter), a CSF-dark cavity in white matter 25 mm
    or more from them and one against the outer wall of one ventricle (which the ventricle
    measure joins to it): the grown ventricles are out of the map, both cavities stay in it."""
    from openrecon_stroke import template
    from openrecon_stroke.normative import ventricles_apart
    from openrecon_stroke.regions import lateral_ventricles_on_template
    from openrecon_stroke.voxel_features import mirror as voxel_features_mirror

    sp = 3.0
    pri = template.load_template(sp).arrays()
    brain = pri["brain"] > 0.5
    vent = lateral_ventricles_on_template(sp)
    grown = ndimage.binary_dilation(vent, iterations=1) & brain
    far = ndimage.distance_transform_edt(~grown) * sp >= 25
    wm = brain & (pri["wm"] > 0.9) & far
    z, y, x = np.argwhere(wm)[len(np.argwhere(wm)) // 2]
    cavity = np.zeros_like(brain)
    cavity[z - 1 : z + 2, y - 1 : y + 2, x - 1 : x + 2] = True
    cavity &= brain
    # against one ventricle: white matter within 6 mm of the grown ventricles, on one side only
    near = ndimage.binary_dilation(grown, iterations=2) & ~ndimage.binary_dilation(grown) & (pri["wm"] > 0.9)
    side = np.zeros_like(brain)
    side[:, :, : brain.shape[2] // 2 - 3] = True
    z0, y0, x0 = np.argwhere(near & side)[len(np.argwhere(near & side)) // 2]
    beside = np.zeros_like(brain)
    beside[z0 - 1 : z0 + 2, y0 - 1 : y0 + 2, x0 - 1 : x0 + 2] = True
    beside &= brain & ~grown & ~voxel_features_mirror(grown)
    img = 500 * (0.75 * pri["gm"] + 1.0 * pri["wm"] + 0.25 * pri["csf"])
    img = np.where(grown | cavity | beside, 125.0, img).astype(np.float32)
    means = template.tissue_means(img, pri["gm"], pri["wm"], pri["csf"], brain)
    apart = ventricles_apart(img, brain, means, sp)
    assert apart[grown & ~vent].mean() > 0.8 and apart[vent & brain].mean() > 0.8
    assert not apart[cavity].any()
    assert beside.sum() >= 5 and apart[beside].mean() < 0.5
    assert apart[brain & ~ndimage.binary_dilation(grown, iterations=3)].mean() < 0.01


def test_card_ventricles_apart_must_be_a_flag(tmp_path):
    import json
    import shutil

    from openrecon_stroke.model_card import ModelCardError, NormativeCard

    src = Path(__file__).resolve().parents[1] / "models" / "normative"
    for f in src.iterdir():
        if f.suffix in (".json", ".npz"):
            shutil.copy(f, tmp_path / f.name)
    d = json.loads((src / "card.json").read_text())
    for value, ok in ((True, True), (False, True), ("yes", False), (1, False)):
        d["ventricles_apart"] = value
        (tmp_path / "card.json").write_text(json.dumps(d))
        if ok:
            assert NormativeCard.load(tmp_path).ventricles_apart is value
        else:
            with pytest.raises(ModelCardError, match="ventricles_apart"):
                NormativeCard.load(tmp_path)
