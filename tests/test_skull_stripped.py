"""Series that come skull-stripped by another tool (archived cohorts often do): HD-BET, made for
whole heads, cuts such a brain short or drops it, so the preprocessing stage recognises them
and uses the series' own brain (``stages.brain.brain_of_series``); ``betmode=none`` says so
up front."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from openrecon_stroke.geometry import Grid, Volume
from openrecon_stroke.params import coerce
from openrecon_stroke.pipeline import Pipeline
from openrecon_stroke.preprocess import STRIPPED_EDGE_FRACTION, series_own_brain, surface_at_content_edge
from openrecon_stroke.runtime import model_folder
from openrecon_stroke.stages.brain import Preprocess, brain_of_series
from openrecon_stroke.stages.results import BrainResult
from openrecon_stroke.study import Study
from openrecon_stroke.study_cache import StudyCache

SHARED = Path(os.environ.get("OPENRECON_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
REAL = SHARED / "real_mri"
SP = 2.0  # mm


def ellipsoid_head(stripped: bool, noise: bool = False) -> tuple[Volume, np.ndarray]:
    """A 2 mm 'head': a brain ellipsoid (semi-axes 60/75/55 mm, about 1040 mL; white matter
    inside grey matter) under 12-20 mm of CSF and skull, then 15-25 mm of scalp (a 3.2 L head),
    in a zeroed background (or a noisy one). ``stripped``: the brain alone. Returns the volume
    and the brain mask (z, y, x)."""
    shape = (90, 120, 100)
    z, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]].astype(np.float32)
    c = [(n - 1) / 2 for n in shape]
    r = np.sqrt(((x - c[2]) * SP / 60) ** 2 + ((y - c[1]) * SP / 75) ** 2 + ((z - c[0]) * SP / 55) ** 2)
    brain = r < 1.0
    data = np.where(brain, 60.0, 0.0) + np.where(r < 0.75, 40.0, 0.0)
    if not stripped:
        # CSF and skull dark but not zero (only the air around a head is zeroed), then scalp
        data += np.where((r >= 1.0) & (r < 1.2), 5.0, 0.0) + np.where((r >= 1.2) & (r < 1.45), 120.0, 0.0)
    if noise:
        data += np.abs(np.random.default_rng(0).normal(0, 3, shape))
    grid = Grid(shape, (SP, SP, SP), np.eye(3), tuple(-(n - 1) / 2 * SP for n in reversed(shape)))
    return Volume(data.astype(np.float32), grid), brain


def _mask_image(arr: np.ndarray, like: sitk.Image) -> sitk.Image:
    img = sitk.GetImageFromArray(arr.astype(np.uint8))
    img.CopyInformation(like)
    return img


def test_content_edge_tells_a_stripped_brain_from_a_head():
    head, brain = ellipsoid_head(stripped=False)
    bare, _ = ellipsoid_head(stripped=True)
    h_img, b_img = head.to_sitk(), bare.to_sitk()
    mask = _mask_image(brain, h_img)
    # on a head the brain's surface lies under skull and scalp; on a stripped brain it is the edge
    assert surface_at_content_edge(mask, h_img) == 0.0
    assert surface_at_content_edge(mask, b_img) == 1.0
    # a mask that spills into the background of a stripped series counts as at the edge too
    spill = _mask_image(np.roll(brain, 15, axis=2), b_img)
    assert surface_at_content_edge(spill, b_img) > STRIPPED_EDGE_FRACTION
    # no zeroed background: no content edge to judge by; an empty mask: nothing to judge
    noisy, _ = ellipsoid_head(stripped=True, noise=True)
    assert surface_at_content_edge(mask, noisy.to_sitk()) == 0.0
    assert surface_at_content_edge(_mask_image(np.zeros_like(brain), b_img), b_img) == 0.0
    # the image's own borders are not an edge: a slab through the middle of the head
    slab = h_img[:, :, 30:50]
    assert surface_at_content_edge(mask_slab := _mask_image(brain[30:50], slab), slab) < 0.05
    assert sitk.GetArrayViewFromImage(mask_slab).any()
    # the series' own brain: its content, holes filled (a zero inside the brain stays brain)
    holed = sitk.GetArrayFromImage(b_img)
    holed[45, 60, 50] = 0.0
    own, background = series_own_brain(sitk.GetImageFromArray(holed))
    assert background > 0.5
    assert np.array_equal(sitk.GetArrayViewFromImage(own) > 0, brain)


def test_betmode_none_takes_the_series_own_brain_without_hd_bet(monkeypatch, tmp_path):
    import openrecon_stroke.brain_extraction as be

    def no_hd_bet(*a, **k):
        raise AssertionError("HD-BET ran with betmode=none")

    monkeypatch.setattr(be, "extract_brain", no_hd_bet)
    bare, brain = ellipsoid_head(stripped=True)
    bare.info = {"study_uid": "1.2.826.0.1.3680043.2.1143.1", "patient_id": "P1"}
    cache = StudyCache(tmp_path / "cache")
    study = Study(inputs={"t1": bare}, params=coerce({"betmode": "none"}), cache=cache)
    Pipeline("p", [Preprocess()]).run(study)
    assert study.stage_status["preprocess"] == "ok", study.warnings
    res = study.result(BrainResult)
    assert res.own_brain == ("t1",) and res.mode == "none"
    assert np.array_equal(sitk.GetArrayViewFromImage(res.brain_mask["t1"]) > 0, brain)
    (mask_series,) = [d for d in study.derived if "brain" in d.name]
    assert mask_series.comment == "own brain mask (skull-stripped series)"
    assert not any("skull-stripped already" in w for w in study.warnings)
    # a later series of the study knows the cached T1-w mask is the series' own
    flair = Volume(bare.data.copy(), bare.grid, info=dict(bare.info))
    later = Study(inputs={"flair": flair}, params=coerce({"betmode": "none"}), cache=cache)
    Pipeline("p", [Preprocess()]).run(later)
    assert later.stage_status["preprocess"] == "ok", later.warnings
    assert "t1" in later.result(BrainResult).own_brain
    # a series with no zeroed background is refused with what to do
    noisy, _ = ellipsoid_head(stripped=True, noise=True)
    study = Study(inputs={"t1": noisy}, params=coerce({"betmode": "none"}))
    Pipeline("p", [Preprocess()]).run(study)
    assert study.stage_status["preprocess"] == "skipped"
    assert any("not a skull-stripped series" in w and "set Brain extraction to fast" in w for w in study.warnings)
    # a whole head with a zeroed background is too large to be a brain
    head, _ = ellipsoid_head(stripped=False)
    study = Study(inputs={"t1": head}, params=coerce({"betmode": "none"}))
    Pipeline("p", [Preprocess()]).run(study)
    assert study.stage_status["preprocess"] == "skipped"
    assert any("does not look like a skull-stripped brain" in w for w in study.warnings)


@pytest.mark.skipif(not (model_folder("hdbet") / "card.json").is_file(), reason="HD-BET ONNX models not built")
@pytest.mark.skipif(not REAL.is_dir(), reason=f"real heads not found under {REAL} (set OPENRECON_SHARED_DATA)")
def test_real_stripped_brains_and_a_real_head():
    """``mr_gd_t1_contrast_brain`` came skull-stripped: HD-BET alone keeps 70 % of it (Dice 0.82
    to the provider's strip); the stage finds it stripped and uses its own brain. On
    ``flair_brain_extracted`` the fast grid finds too little (327 mL, mostly in the background)
    to vouch that the content is a brain, HD-BET's own 1.5 mm grid does: its own brain too;
    with none, without HD-BET. ``chris_t1`` (a full head with a zeroed background) keeps
    HD-BET's mask."""

    def run(name: str, contrast: str, **params) -> Study:
        vol = Volume.from_sitk(sitk.ReadImage(str(REAL / f"{name}.nii.gz"), sitk.sitkFloat32))
        study = Study(inputs={contrast: vol}, params=coerce(params))
        Pipeline("p", [Preprocess()]).run(study)
        return study

    study = run("mr_gd_t1_contrast_brain", "t1")
    assert study.stage_status["preprocess"] == "ok", study.warnings
    res = study.result(BrainResult)
    assert res.own_brain == ("t1",)
    assert len([w for w in study.warnings if "looks skull-stripped already" in w]) == 1
    given = sitk.GetArrayFromImage(sitk.ReadImage(str(REAL / "mr_gd_t1_contrast_brain.nii.gz"))) > 0
    assert np.array_equal(sitk.GetArrayViewFromImage(res.brain_mask["t1"]) > 0, given)

    study = run("flair_brain_extracted", "flair")
    assert study.stage_status["preprocess"] == "ok", study.warnings
    assert study.result(BrainResult).own_brain == ("flair",)
    assert any("looks skull-stripped already" in w and "on its own 1.5 mm grid" in w for w in study.warnings)
    study = run("flair_brain_extracted", "flair", betmode="none")
    assert study.stage_status["preprocess"] == "ok", study.warnings
    assert study.result(BrainResult).own_brain == ("flair",)
    assert not any("skull-stripped already" in w for w in study.warnings)

    study = run("chris_t1", "t1")
    assert study.stage_status["preprocess"] == "ok", study.warnings
    res = study.result(BrainResult)
    assert res.own_brain == () and not any("skull-stripped" in w for w in study.warnings)
    assert 1200 < res.volume_ml["t1"] < 1800


@pytest.mark.skipif(not (model_folder("hdbet") / "card.json").is_file(), reason="HD-BET ONNX models not built")
def test_content_hd_bet_does_not_vouch_for_keeps_its_mask_with_a_hint():
    """A 'knee' (a cylinder of tissue in a zeroed background, as in ``test_brain_stage``): HD-BET's
    brain reaches the content's edge, but holds too little of it on either grid to call the
    content a brain (0.19 at 1.75 mm): its mask stays, and the note says what to set if the
    series was a stripped brain."""
    g = Grid((60, 160, 160), (1.0, 1.0, 2.0), np.eye(3), (-80.0, -80.0, -60.0))
    z, y, x = np.meshgrid(np.arange(60), np.arange(160) - 80, np.arange(160) - 80, indexing="ij")
    r = np.hypot(x, y)
    data = np.where(r < 60, 300.0, 0.0) + np.where(r < 20, 500.0, 0.0)
    data += np.random.default_rng(0).normal(0, 8, data.shape) * (r < 60)
    got = brain_of_series(Volume(np.clip(data, 0, None).astype(np.float32), g).to_sitk(), "t1", "fast")
    assert not got.own
    assert got.note is not None and "set Brain extraction to none" in got.note and "1.5 mm grid" in got.note
