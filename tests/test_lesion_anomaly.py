"""Lesion segmentation and anomaly detection with the shipped ONNX models, on synthetic studies
whose true lesions are known; plus the pieces (anomaly load split, CSF measures, cards)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from openrecon_stroke.anomaly import anomaly_load, csf_measures
from openrecon_stroke.model_card import AnomalyCard, ModelCardError
from openrecon_stroke.offline import process
from detection import SHIPPED_ANOMALY, SHIPPED_LESION, check_anomaly, check_lesions

REPO = Path(__file__).resolve().parents[1]
HAVE_LESION = all((REPO / "models" / "lesion" / m / "card.json").is_file() for m in ("t1", "flair", "fusion"))
HAVE_ANOMALY = (REPO / "models" / "anomaly" / "card.json").is_file()


# ------------------------------------------------------------------------------------------
# pieces
# ------------------------------------------------------------------------------------------
def test_anomaly_load_splits_inside_perilesional_remote():
    lesion = np.zeros((30, 30, 30), bool)
    lesion[10:15, 10:15, 10:15] = True
    anomaly = np.zeros_like(lesion)
    anomaly[10:15, 10:15, 10:17] = True  # lesion plus 2 voxels beside it
    anomaly[25:28, 25:28, 25:28] = True  # far away
    out = anomaly_load(anomaly, lesion, (1.0, 1.0, 1.0), perilesional_mm=5.0)
    assert out["in_lesion_ml"] == pytest.approx(125 / 1000, abs=1e-3)
    assert out["perilesional_ml"] == pytest.approx(50 / 1000, abs=1e-3)
    assert out["remote_ml"] == pytest.approx(27 / 1000, abs=1e-3)
    assert out["load_ml"] == pytest.approx(out["in_lesion_ml"] + out["perilesional_ml"] + out["remote_ml"], abs=2e-3)
    none = anomaly_load(anomaly, None, (2.0, 2.0, 2.0))
    assert none["remote_ml"] == none["load_ml"] == pytest.approx(202 * 8 / 1000, abs=0.01)


def test_csf_measures_find_the_ventricles_of_a_three_class_brain():
    zz, yy, xx = np.mgrid[:80, :80, :80]
    r = np.sqrt((zz - 40) ** 2 + (yy - 40) ** 2 + (xx - 40) ** 2)
    brain = r < 35
    t1 = np.where(r < 28, 1.0, 0.6)  # white matter inside, grey matter rim
    vent = (np.abs(zz - 40) < 6) & (np.abs(yy - 40) < 10) & (np.abs(xx - 40) < 4)
    t1 = np.where(vent, 0.15, t1) + np.random.default_rng(0).normal(0, 0.02, t1.shape)
    m = csf_measures(t1.astype(np.float32), brain, (1.0, 1.0, 1.0))
    assert m is not None
    assert m["ventricle_ml"] == pytest.approx(vent.sum() / 1000, rel=0.15)
    assert 0 < m["atrophy_index"] < 0.1


def test_anomaly_card_refuses_a_broken_card(tmp_path):
    (tmp_path / "card.json").write_text(json.dumps({"name": "x", "version": "1"}))
    with pytest.raises(ModelCardError, match="malformed"):
        AnomalyCard.load(tmp_path)
    if HAVE_ANOMALY:
        d = json.loads((REPO / "models" / "anomaly" / "card.json").read_text())
        d["sha256"] = "0" * 64
        (tmp_path / "card.json").write_text(json.dumps(d))
        (tmp_path / d["file"]).write_bytes(b"not the model")
        with pytest.raises(ModelCardError, match="sha256"):
            AnomalyCard.load(tmp_path)


# ------------------------------------------------------------------------------------------
# the shipped models on a synthetic study
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def study(stroke_phantom):
    return stroke_phantom  # two subcortical lesions (2.7 and 3.3 mL), shared with the served tests


@pytest.mark.slow
@pytest.mark.skipif(not (HAVE_LESION and HAVE_ANOMALY), reason="models/lesion and models/anomaly not trained")
def test_fused_study_gets_lesion_mask_and_anomaly_map_on_each_grid(study, tmp_path):
    out = tmp_path / "out"
    report = process(t1=str(study / "t1.h5"), flair=str(study / "flair.h5"), out_dir=out)
    assert report["stage_status"]["lesion"] == "ok", report["warnings"]
    assert report["stage_status"]["anomaly"] == "ok", report["warnings"]
    f = report["findings"]
    assert "fusion" in f["lesion_model"] and "lesion" in f["models"] and "anomaly" in f["models"]
    for c in ("t1", "flair"):
        truth = sitk.ReadImage(str(study / f"{c}_lesion_mask.nii.gz"))
        brain = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"brain_mask_{c}.nii.gz"))) > 0
        for name in ("lesion_mask", "anomaly_map"):
            img = sitk.ReadImage(str(out / f"{name}_{c}.nii.gz"))
            assert img.GetSize() == truth.GetSize()
            np.testing.assert_allclose(img.GetOrigin(), truth.GetOrigin(), atol=1e-3)
            a = sitk.GetArrayFromImage(img)
            assert np.isfinite(a).all() and a.min() >= 0
            assert not a[~brain].any(), f"{name} on {c} reaches outside the brain"
        # the true lesions are found (tests/detection.py; floors measured, see test_detection.py)
        truth_a = sitk.GetArrayFromImage(truth) > 0
        lesion = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"lesion_mask_{c}.nii.gz")))
        check_lesions(truth_a, lesion, float(np.prod(truth.GetSpacing())) / 1000, SHIPPED_LESION,
                      what=f"process lesion_mask_{c}")
        amap = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"anomaly_map_{c}.nii.gz")))
        exact_brain = sitk.GetArrayFromImage(sitk.ReadImage(str(study / f"{c}_brain_mask.nii.gz"))) > 0
        check_anomaly(truth_a, amap, exact_brain, truth.GetSpacing()[::-1], SHIPPED_ANOMALY,
                      what=f"process anomaly_map_{c}")
    # findings agree with the mask they describe
    les = f["lesions"]
    assert f["lesion_count"] == len(les)
    assert f["lesion_volume_ml"] == pytest.approx(sum(x["volume_ml"] for x in les), abs=0.01)
    mask_t1 = sitk.ReadImage(str(out / "lesion_mask_t1.nii.gz"))
    vox_ml = float(np.prod(mask_t1.GetSpacing())) / 1000
    assert f["lesion_volume_ml"] == pytest.approx(sitk.GetArrayFromImage(mask_t1).sum() * vox_ml, rel=1e-3, abs=1e-3)
    assert all(x["hemisphere"] in ("left", "right") and x["region"] in ("cortical", "subcortical") for x in les)
    a = f["anomaly"]
    assert a["load_ml"] == pytest.approx(a["in_lesion_ml"] + a["perilesional_ml"] + a["remote_ml"], abs=0.01)
    assert a["contrasts"] == "t1+flair" and "normative" in f["models"]["anomaly"]  # template space: the normative map
    # each lesion located through the template (MNI mm, a named lobe or deep structure)
    assert all(len(x["mni_mm"]) == 3 and x["location"] for x in les), les
    # models that miss their targets are flagged on every report
    for folder in ("fusion",):
        card = json.loads((REPO / "models" / "lesion" / folder / "card.json").read_text())
        if card.get("status") == "experimental":
            assert any("is experimental" in w and card["name"] in w for w in report["warnings"])
    if AnomalyCard.load(REPO / "models" / "anomaly").status != "validated":
        assert any("anomaly map is experimental" in w for w in report["warnings"])
