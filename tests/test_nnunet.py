"""nnU-Net v2 inference pieces and the importer's checks, without PyTorch or nnunetv2 (the proof
against nnU-Net itself is tests/test_nnunet_proof.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from openrecon_stroke import nnunet
from openrecon_stroke.cli import main as cli_main
from openrecon_stroke.model_card import ModelCard, ModelCardError
from openrecon_stroke.nnunet import NnUNetPreprocessing, Resampling
from openrecon_stroke.nnunet_import import NnUNetImportError, contrast_of, import_nnunet, read_result

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------
# resampling, normalisation, Gaussian
# --------------------------------------------------------------------------------------------
def test_separate_z_rule():
    f = nnunet.separate_z_axis
    assert f(None, (3.0, 0.8, 0.8), (1, 1, 1)) == 0  # the current spacing is anisotropic
    assert f(None, (1, 1, 1), (0.7, 0.7, 4.0)) == 2  # else the target's
    assert f(None, (1, 1, 2.9), (1, 1, 1)) is None  # ratio 2.9 < 3
    assert f(None, (4.0, 4.0, 1.0), (1, 1, 1)) is None  # two coarsest axes: no separate axis
    assert f(True, (1.0, 2.0, 1.0), (1, 1, 1)) == 1 and f(False, (5.0, 1.0, 1.0), (1, 1, 1)) is None
    assert nnunet.new_shape((10, 20, 30), (3.0, 0.75, 1.0), (1.0, 1.0, 1.0)) == (30, 15, 30)
    assert nnunet.new_shape((5,), (1.0,), (2.0,)) == (2,)  # Python rounds halves to even, as nnU-Net


def test_resampling_is_centre_aligned_and_slices_apart():
    ramp = np.broadcast_to(np.arange(8, dtype=np.float32)[None, None, :], (4, 5, 8)).copy()[None]
    up = nnunet.resample(ramp, (4, 5, 16), (1, 1, 1), (1, 1, 0.5), Resampling(1, 0))
    # linear, voxel centres aligned: x_new = (i + 0.5) / 2 - 0.5, clamped at the edges
    expect = np.clip((np.arange(16) + 0.5) / 2 - 0.5, 0, 7)
    np.testing.assert_allclose(up[0, 2, 3], expect, atol=1e-6)
    assert up.dtype == np.float32
    # 3.5 mm slices along axis 0: in-plane cubic, slices by nearest neighbour (no mixing of slices)
    vol = np.random.default_rng(0).normal(size=(1, 6, 10, 10)).astype(np.float32)
    out = nnunet.resample(vol, (12, 10, 10), (3.5, 1.0, 1.0), (1.75, 1.0, 1.0), Resampling(3, 0))
    for k in range(12):
        assert any(np.allclose(out[0, k], vol[0, j], atol=1e-5) for j in range(6))
    # the cubic spline stays inside the input's range (clipped)
    spike = np.zeros((1, 6, 6, 6), np.float32)
    spike[0, 3, 3, 3] = 1
    big = nnunet.resample(spike, (11, 11, 11), (1, 1, 1), (0.5, 0.5, 0.5), Resampling(3, 0))
    assert big.min() >= 0 and big.max() <= 1


def test_gaussian_weights_are_nnunets_half_precision_map():
    g = nnunet.gaussian_weights((9, 12, 7))
    assert g.shape == (9, 12, 7) and g.min() > 0
    assert np.unravel_index(g.argmax(), g.shape) == (4, 6, 3)  # the centre voxel n // 2
    assert g.max() == pytest.approx(10.0)
    assert np.array_equal(g, g.astype(np.float16).astype(np.float32))
    np.testing.assert_allclose(g[4, :, 3], g[4, ::-1, 3][np.r_[11, 0:11]], rtol=1e-3)  # symmetric about 6


def test_crop_and_zscore_inside_the_nonzero_mask():
    a = np.zeros((2, 10, 12, 14), np.float32)
    a[0, 2:8, 3:9, 4:10] = np.random.default_rng(1).normal(100, 20, (6, 6, 6))
    a[1, 3:7, 3:9, 4:10] = 5.0
    a[0, 4, 5, 6] = 0  # a hole inside the head stays inside the mask
    mask, box = nnunet.nonzero_box(a)
    assert box == (slice(2, 8), slice(3, 9), slice(4, 10)) and mask[4, 5, 6]
    img = a[0][box].copy()
    out = nnunet.normalise(img, mask[box], "ZScoreNormalization", True)
    inside = out[mask[box]]
    assert abs(inside.mean()) < 1e-5 and inside.std() == pytest.approx(1, abs=1e-4)
    ct = nnunet.normalise(np.array([-2000.0, 50.0, 4000.0], np.float32), None, "CTNormalization", False,
                          {"mean": 50.0, "std": 10.0, "percentile_00_5": -1000.0, "percentile_99_5": 1000.0})
    np.testing.assert_allclose(ct, [-105.0, 0.0, 95.0])


class _Logits:
    """An ONNX-Runtime-like session: logits (0, k * channel 0) per voxel."""

    def __init__(self, k):
        self.k = k

    def get_inputs(self):
        return [type("I", (), {"name": "image"})()]

    def run(self, _names, feeds):
        x = feeds["image"]
        out = np.zeros((1, 2) + x.shape[2:], np.float32)
        out[:, 1] = self.k * x[:, 0]
        return [out]


def _section(**over) -> NnUNetPreprocessing:
    d = dict(transpose_forward=(2, 0, 1), target_spacing=(2.0, 1.0, 1.0), normalisation=("ZScoreNormalization",),
             use_mask_for_norm=(False,), data_resampling=Resampling(3, 0), probability_resampling=Resampling(1, 0),
             patch_size=(8, 16, 16), labels=("background", "lesion"), mirror_axes=(0, 1, 2))
    d.update(over)
    return NnUNetPreprocessing(**d)


def test_voxelwise_model_through_transpose_window_mirroring_and_folds():
    """With no resampling and no zeros to crop, nnU-Net's pipeline on a voxel-wise model is
    softmax(0, k * z-score(x)) on the input array: this checks the transposes, the windows, the
    mirroring, the fold average and the way back."""
    rng = np.random.default_rng(2)
    x = rng.normal(50, 10, (1, 30, 20, 12)).astype(np.float32)  # (z, y, x); x is the 2 mm axis
    p = _section()
    probs = nnunet.predict_arrays([_Logits(1.0), _Logits(3.0)], x, (1.0, 1.0, 2.0), p, mirror=True)
    z = (x[0] - x[0].mean()) / x[0].std()
    expect = 1 / (1 + np.exp(-2 * z))  # logits, not probabilities, are averaged over folds (nnU-Net)
    assert probs.shape == (2,) + x.shape[1:]
    np.testing.assert_allclose(probs.sum(0), 1, atol=1e-5)
    d = np.abs(probs[1] - expect)
    # half-precision logits; at the volume's edges, where every window's Gaussian weight is tiny,
    # nnU-Net's half-precision sums are coarser still (that is its answer, reproduced)
    assert d[2:-2, 2:-2, 2:-2].max() < 5e-3 and d.mean() < 2e-3, (d[2:-2, 2:-2, 2:-2].max(), d.mean())

    # a card orientation: the image is permuted/flipped to it and the answer comes back on its grid
    img = sitk.GetImageFromArray(x[0])
    img.SetSpacing((2.0, 1.0, 1.0))
    img.SetDirection((0, 1, 0, 0, 0, -1, 1, 0, 0))  # x -> S, y -> L, z -> A: RAS is (y flipped, z, x)
    ras = _section(orientation="RAS", transpose_forward=(0, 1, 2), target_spacing=(2.0, 1.0, 1.0), mirror_axes=())
    assert nnunet.orientation_code(sitk.DICOMOrient(img, "RAS")) == "RAS"
    probs = nnunet.predict_images([_Logits(2.0)], [img], ras, mirror=False)
    assert probs.shape == (2,) + x.shape[1:]
    d = np.abs(probs[1] - expect)
    assert d[2:-2, 2:-2, 2:-2].max() < 5e-3 and d.mean() < 2e-3


# --------------------------------------------------------------------------------------------
# the card section
# --------------------------------------------------------------------------------------------
def _card(tmp_path, section: dict, **over):
    f = tmp_path / "fold0.onnx"
    f.write_bytes(b"x")
    card = {"name": "site", "version": "1", "inputs": ["t1", "flair"], "spacing_mm": [1, 1, 1],
            "normalisation": "nnunet_v2", "patch_size": [8, 16, 16], "output": {"activation": "softmax", "channel": 1},
            "files": [{"file": "fold0.onnx"}], "preprocessing": section}
    card.update(over)
    (tmp_path / "card.json").write_text(json.dumps(card))
    return tmp_path


def test_card_section_round_trips_and_is_validated(tmp_path):
    sec = _section(normalisation=("ZScoreNormalization", "ZScoreNormalization"), use_mask_for_norm=(True, True),
                   orientation="RAS").as_dict()
    card = ModelCard.load(_card(tmp_path, sec))
    assert card.preprocessing == NnUNetPreprocessing.from_dict(sec) and card.orientation == "RAS"
    bad = dict(sec, normalisation=["ZScoreNormalization", "FancyNorm"])
    with pytest.raises(ModelCardError, match="preprocessing section: unknown normalisation 'FancyNorm'"):
        ModelCard.load(_card(tmp_path, bad))
    with pytest.raises(ModelCardError, match="unknown preprocessing scheme 'nnunet_v1'"):
        ModelCard.load(_card(tmp_path, dict(sec, scheme="nnunet_v1")))
    with pytest.raises(ModelCardError, match="transpose_forward"):
        ModelCard.load(_card(tmp_path, dict(sec, transpose_forward=[0, 0, 1])))
    with pytest.raises(ModelCardError, match="lacks the key 'patch_size'"):
        ModelCard.load(_card(tmp_path, {k: v for k, v in sec.items() if k != "patch_size"}))
    with pytest.raises(ModelCardError, match="2 inputs but 1 normalisation"):
        ModelCard.load(_card(tmp_path, _section().as_dict()))
    with pytest.raises(ModelCardError, match="normalisation must be 'nnunet_v2'"):
        ModelCard.load(_card(tmp_path, sec, normalisation="zscore"))


# --------------------------------------------------------------------------------------------
# the importer: what it refuses, before PyTorch is needed
# --------------------------------------------------------------------------------------------
def _plans(**config_over) -> dict:
    cfg = {"data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
           "patch_size": [128, 128, 128], "spacing": [1.0, 1.0, 1.0],
           "normalization_schemes": ["ZScoreNormalization", "ZScoreNormalization"], "use_mask_for_norm": [False, False],
           "resampling_fn_data": "resample_data_or_seg_to_shape",
           "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
           "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
           "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
           "architecture": {"network_class_name": "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
                            "arch_kwargs": {}, "_kw_requires_import": ["conv_op"]}}
    cfg.update(config_over)
    return {"dataset_name": "Dataset001_Stroke", "plans_name": "nnUNetResEncUNetMPlans", "transpose_forward": [0, 1, 2],
            "image_reader_writer": "SimpleITKIO", "configurations": {
                "3d_fullres": cfg, "2d": dict(cfg, patch_size=[128, 128], spacing=[1.0, 1.0]),
                "3d_cascade_fullres": {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}}}


def _result(tmp_path, name="nnUNetTrainer__nnUNetResEncUNetMPlans__3d_fullres", plans=None, dataset=None,
            folds=(0, 1)) -> Path:
    d = tmp_path / "Dataset001_Stroke" / name
    d.mkdir(parents=True)
    (d / "plans.json").write_text(json.dumps(plans or _plans()))
    (d / "dataset.json").write_text(json.dumps(dataset or {
        "channel_names": {"0": "T1w", "1": "FLAIR"}, "labels": {"background": 0, "lesion": 1}, "file_ending": ".nii.gz"}))
    for f in folds:
        (d / f"fold_{f}").mkdir()
        (d / f"fold_{f}" / "checkpoint_final.pth").write_bytes(b"")
    return d


def test_reads_a_result_folder(tmp_path):
    r = read_result(_result(tmp_path))
    assert r.contrasts == ["t1", "flair"] and r.labels == ["background", "lesion"] and r.lesion_label == "lesion"
    assert [f for f, _ in r.folds] == ["0", "1"] and r.architecture == "ResidualEncoderUNet"
    assert [contrast_of(n) for n in ("T1", "t1_mprage", "MPRAGE", "T2-FLAIR", "flair", "DWI")] == \
        ["t1", "t1", "t1", "flair", "flair", None]


@pytest.mark.parametrize("make, kwargs, message", [
    (lambda t: _result(t).parent, {}, "not an nnU-Net v2 result folder.*give one of those"),
    (lambda t: t, {}, "not an nnU-Net v2 result folder: no dataset.json"),
    (lambda t: _result(t, folds=(0,)), {"folds": [0, 3, 4]}, r"fold\(s\) 3, 4 have no checkpoint_final.pth"),
    (lambda t: _result(t, folds=()), {}, "no fold_K folders"),
    (lambda t: _result(t, name="nnUNetTrainer__nnUNetPlans__2d"), {}, "2D"),
    (lambda t: _result(t, name="nnUNetTrainer__nnUNetPlans__3d_cascade_fullres"), {}, "cascade"),
    (lambda t: _result(t, plans=_plans(normalization_schemes=["ZScoreNormalization", "MyNorm"])), {},
     "unknown normalisation MyNorm"),
    (lambda t: _result(t, plans=_plans(architecture={"network_class_name": "my_nets.LateFusionUNet"})), {},
     "unsupported architecture my_nets.LateFusionUNet.*by hand"),
    (lambda t: _result(t, plans=_plans(resampling_fn_data="resample_torch_fornnunet")), {},
     "unsupported resampling_fn_data"),
    (lambda t: _result(t, dataset={"channel_names": {"0": "T1", "1": "FLAIR"},
                                   "labels": {"background": 0, "core": [1, 2]}}), {}, "regions"),
    (lambda t: _result(t, dataset={"channel_names": {"0": "T1", "1": "FLAIR"},
                                   "labels": {"background": 0, "lesion": 1, "edema": 2}}), {}, "--lesion-label"),
    (lambda t: _result(t, dataset={"channel_names": {"0": "CT", "1": "FLAIR"}, "labels": {"background": 0, "x": 1}}),
     {}, r"channel 0 \(CT\) is neither T1-w nor FLAIR.*--contrasts"),
])
def test_bad_results_get_an_error_naming_the_problem(tmp_path, make, kwargs, message):
    folder = make(tmp_path)
    with pytest.raises(NnUNetImportError, match=message):
        import_nnunet(folder, tmp_path / "out", **kwargs)
    assert not (tmp_path / "out" / "card.json").exists()


def test_cli_says_what_is_wrong(tmp_path, capsys):
    folder = _result(tmp_path, name="nnUNetTrainer__nnUNetPlans__2d")
    assert cli_main(["import-nnunet", str(folder), "--out", str(tmp_path / "m")]) == 2
    assert "configuration 2d is 2D" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# the lesion stage: which model runs
# --------------------------------------------------------------------------------------------
def test_site_model_folder_from_ui_or_environment(tmp_path, monkeypatch):
    from openrecon_stroke.stages.lesion import site_model_folder

    monkeypatch.setenv("OPENRECON_LESION_DIR", str(tmp_path))
    monkeypatch.delenv("OPENRECON_LESION_MODEL", raising=False)
    (tmp_path / "atlas").mkdir()
    (tmp_path / "atlas" / "card.json").write_text("{}")
    assert site_model_folder("") is None
    assert site_model_folder("atlas") == tmp_path / "atlas"
    monkeypatch.setenv("OPENRECON_LESION_MODEL", str(tmp_path / "atlas"))
    assert site_model_folder("") == tmp_path / "atlas"
    with pytest.raises(FileNotFoundError, match="not a plain folder name"):
        site_model_folder("../etc")
    with pytest.raises(FileNotFoundError, match="no lesion model card"):
        site_model_folder("other")


from native_model import write_native_model  # noqa: E402

HAVE_SHIPPED = all((REPO / "models" / "lesion" / m / "card.json").is_file() for m in ("t1", "fusion"))


@pytest.mark.skipif(not HAVE_SHIPPED, reason="models/lesion not trained")
def test_site_model_missing_a_contrast_falls_back_with_a_warning(tmp_path, monkeypatch):
    from openrecon_stroke.geometry import Grid, Volume
    from openrecon_stroke.params import coerce
    from openrecon_stroke.stages.lesion import LesionSegmentation
    from openrecon_stroke.stages.results import BrainResult, LesionResult
    from openrecon_stroke.study import Study

    site = write_native_model(tmp_path / "site_fusion", ("t1", "flair"), name="site-fusion")
    monkeypatch.setenv("OPENRECON_LESION_MODEL", str(site))
    g = Grid((40, 48, 40), (1.5, 1.5, 1.5), np.eye(3), (-30.0, -36.0, -30.0))
    arr = np.random.default_rng(0).normal(300, 30, g.shape).astype(np.float32)
    t1 = g.to_sitk(arr)
    brain = g.to_sitk(np.pad(np.ones((30, 36, 30), np.uint8), ((5, 5), (6, 6), (5, 5))))
    study = Study(inputs={"t1": Volume(arr, g)}, params=coerce({}))
    study.results[BrainResult] = BrainResult(reference="t1", n4={"t1": t1}, brain_mask={"t1": brain}, mode="fast",
                                             model="test")
    res = LesionSegmentation().run(study)
    assert any("site lesion model site-fusion needs t1+flair; flair missing" in w for w in res.warnings)
    # the shipped models work in template space; this study has none, and the report says why
    assert any("registration to the template failed" in w for w in res.warnings), res.warnings
    assert not any(isinstance(r, LesionResult) for r in res.results)
    # a site model with what it needs runs on the study's own grid, without template space
    one = write_native_model(tmp_path / "site_t1", ("t1",), name="site-t1")
    monkeypatch.setenv("OPENRECON_LESION_MODEL", str(one))
    res = LesionSegmentation().run(study)
    assert "site-t1" in next(r for r in res.results if isinstance(r, LesionResult)).model
    study.params = coerce({"lesionmodel": "../x"})
    res = LesionSegmentation().run(study)
    assert any("not a plain folder name" in w for w in res.warnings)


def test_predict_runs_a_native_card_on_a_nifti(tmp_path, capsys):
    g_img = sitk.GetImageFromArray(np.random.default_rng(3).normal(300, 30, (30, 40, 36)).astype(np.float32))
    g_img.SetSpacing((1.2, 1.1, 1.5))
    g_img.SetDirection((0, 0, 1, 1, 0, 0, 0, 1, 0))  # a sagittal-like axis order
    sitk.WriteImage(g_img, str(tmp_path / "sub-01_T1w_0000.nii.gz"))
    model = write_native_model(tmp_path / "site_t1", ("t1",), name="site-t1")
    assert cli_main(["predict", "--model", str(model), "--input", str(tmp_path / "sub-01_T1w_0000.nii.gz"),
                     "--out", str(tmp_path / "out"), "--no-mirroring"]) == 0
    assert "site-t1" in capsys.readouterr().out
    prob = sitk.ReadImage(str(tmp_path / "out" / "sub-01_T1w_prob.nii.gz"))
    label = sitk.ReadImage(str(tmp_path / "out" / "sub-01_T1w_label.nii.gz"))
    assert prob.GetSize() == label.GetSize() == g_img.GetSize()
    np.testing.assert_allclose(prob.GetDirection(), g_img.GetDirection(), atol=1e-6)
    p = sitk.GetArrayFromImage(prob)
    threshold = ModelCard.load(model).threshold
    assert np.array_equal(sitk.GetArrayFromImage(label) > 0, p >= threshold) and 0 <= p.min() <= p.max() <= 1
    assert p.max() > threshold > p.min()  # the tiny model does mark the brightest voxels
    assert cli_main(["predict", "--model", str(model), "--input", "a.nii.gz", "b.nii.gz", "--out", "x"]) == 2
    assert "takes 1 input(s)" in capsys.readouterr().err
    # the template-space models need the whole pipeline: predict says so
    if HAVE_SHIPPED:
        assert cli_main(["predict", "--model", str(REPO / "models" / "lesion" / "t1"), "--input",
                         str(tmp_path / "sub-01_T1w_0000.nii.gz"), "--out", str(tmp_path / "o2")]) == 2


def test_checkpoints_are_read_as_data(tmp_path):
    """A trained checkpoint's log holds numpy scalars and arrays: read as data, never as code."""
    torch = pytest.importorskip("torch", reason="PyTorch (optional nnunet extra) is not installed")
    from openrecon_stroke.nnunet_import import load_checkpoint

    ok = {"network_weights": {"w": torch.zeros(2)}, "init_args": {"device": torch.device("cpu")},
          "logging": {"mean_fg_dice": [np.float64(0.5), np.float32(0.6)], "dice_per_class": [np.array([0.1, 0.2])]}}
    torch.save(ok, tmp_path / "ok.pth")
    got = load_checkpoint(tmp_path / "ok.pth")
    assert got["logging"]["mean_fg_dice"][0] == 0.5 and torch.equal(got["network_weights"]["w"], torch.zeros(2))
    torch.save({"network_weights": {}, "evil": Path("/x")}, tmp_path / "code.pth")
    with pytest.raises(NnUNetImportError, match="--trust-checkpoint"):
        load_checkpoint(tmp_path / "code.pth")
    assert load_checkpoint(tmp_path / "code.pth", trust=True)["evil"] == Path("/x")
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(NnUNetImportError, match="could not be read as an nnU-Net checkpoint"):
        load_checkpoint(tmp_path / "bad.pth")
