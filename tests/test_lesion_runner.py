"""The lesion runner is driven by a model card: a network with the architecture research teams
export from nnU-Net (residual-encoder U-Net from ``dynamic_network_architectures``, inputs
[T1-w, FLAIR], 2-class logits, 128^3 patches, random weights) runs through it unchanged."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from openrecon_stroke.geometry import Grid
from openrecon_stroke.lesion import CORTICAL_MM, LesionSegmenter, describe, network_grid, postprocess
from openrecon_stroke.model_card import ModelCard, ModelCardError
from openrecon_stroke.sliding_window import gaussian_importance, predict, window_starts

from conftest import rotation

REPO = Path(__file__).resolve().parents[1]


def test_window_starts_cover_and_touch_borders():
    for size, patch, ov in [(300, 128, 0.5), (128, 128, 0.5), (129, 128, 0.5), (500, 96, 0.25)]:
        s = window_starts(size, patch, ov)
        assert s[0] == 0 and s[-1] == max(size - patch, 0)
        assert all(b - a <= patch * (1 - ov) + 1 for a, b in zip(s, s[1:]))
    g = gaussian_importance((16, 16, 16))
    assert g.max() == 1.0 and g.min() > 0 and g[8, 8, 8] > g[0, 0, 0]


class _Const:
    """An ONNX-Runtime-like session returning fixed logits (for the sliding-window arithmetic)."""

    def __init__(self, value):
        self.value = value

    def get_inputs(self):
        return [type("I", (), {"name": "x"})()]

    def run(self, _names, feeds):
        x = feeds["x"]
        logits = np.zeros((1, 2) + x.shape[2:], np.float32)
        logits[:, 1] = x[:, 0] * self.value
        return [logits]


def test_sliding_window_and_mirroring_reproduce_a_voxelwise_model():
    img = np.random.default_rng(0).normal(size=(1, 40, 50, 37)).astype(np.float32)
    p = predict([_Const(1.0), _Const(2.0)], img, (16, 16, 16), overlap=0.5, mirror_axes=(0, 1, 2))
    expect = 0.5 * (1 / (1 + np.exp(-img[0])) + 1 / (1 + np.exp(-2 * img[0])))  # softmax of [0, v]
    assert p.shape == img.shape[1:]
    assert np.allclose(p, expect, atol=1e-5)


def test_postprocess_threshold_and_small_components():
    prob = np.zeros((20, 20, 20), np.float32)
    prob[2:8, 2:8, 2:8] = 0.3  # 216 voxels of 1 mm3: kept at threshold 0.2
    prob[15, 15, 15] = 0.9  # 1 voxel: under 10 mm3, dropped
    prob[12:14, 2:4, 2:4] = 0.1  # under threshold
    m = postprocess(prob, 1.0, 0.2, 10.0)
    assert m.sum() == 216
    img = sitk.Image([20, 20, 20], sitk.sitkUInt8)
    les = describe(m, img, midline_x_lps=10.0)
    assert len(les) == 1 and abs(les[0].volume_ml - 0.216) < 1e-9 and les[0].hemisphere == "right"


def test_describe_matches_lesion_by_lesion_reference():
    """``describe`` measures each lesion inside its own box (surface distance on the box widened
    by ``CORTICAL_MM``); on ~60 lesions (deep and near the surface, anisotropic voxels) it must
    give what measuring each lesion on the whole volume gives."""
    rng = np.random.default_rng(3)
    z, y, x = np.mgrid[:80, :90, :100]
    brain = ((z - 40) / 36.0) ** 2 + ((y - 45) / 40.0) ** 2 + ((x - 50) / 45.0) ** 2 < 1
    m = (ndimage.gaussian_filter(rng.random(brain.shape), 2) > 0.54) & brain
    img = sitk.Image([100, 90, 80], sitk.sitkUInt8)
    img.SetSpacing((0.9, 1.1, 1.3))
    img.SetOrigin((5.0, -3.0, 2.0))
    got = describe(m, img, midline_x_lps=30.0, brain=brain)

    lab, n = ndimage.label(m, structure=np.ones((3, 3, 3), bool))
    depth = ndimage.distance_transform_edt(brain, sampling=(1.3, 1.1, 0.9))
    ref = []
    for i in range(1, n + 1):
        sel = lab == i
        zyx = np.argwhere(sel).mean(0)
        pt = img.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in zyx[::-1]))
        ref.append((sel.sum() * 0.9 * 1.1 * 1.3 / 1000, pt, "left" if pt[0] > 30.0 else "right",
                    "cortical" if np.mean(depth[sel] <= CORTICAL_MM) >= 0.5 else "subcortical"))
    ref.sort(key=lambda r: -r[0])
    assert n > 40 and len(got) == n
    assert {r[3] for r in ref} == {"cortical", "subcortical"}
    for les, (vol, pt, side, region) in zip(got, ref):
        assert abs(les.volume_ml - vol) < 1e-9
        assert np.allclose(les.centroid_lps_mm, pt, atol=1e-6)
        assert (les.hemisphere, les.region) == (side, region)
    assert [les.label for les in got] == list(range(1, n + 1))


def _write_card(d, files, **over):
    card = {"name": "test", "version": "0", "inputs": ["t1", "flair"], "spacing_mm": [1, 1, 1],
            "orientation": "RAS", "normalisation": "zscore_brain", "patch_size": [128, 128, 128],
            "output": {"activation": "softmax", "channel": 1},
            "files": [{"file": f.name, "sha256": hashlib.sha256(f.read_bytes()).hexdigest()} for f in files],
            "threshold": 0.2, "min_lesion_mm3": 10}
    card.update(over)
    (d / "card.json").write_text(json.dumps(card))
    return d / "card.json"


def test_card_validation(tmp_path):
    f = tmp_path / "m.onnx"
    f.write_bytes(b"not really onnx")
    ModelCard.load(_write_card(tmp_path, [f]))
    with pytest.raises(ModelCardError, match="activation"):
        ModelCard.load(_write_card(tmp_path, [f], output={"activation": "relu", "channel": 1}))
    with pytest.raises(ModelCardError, match="inputs"):
        ModelCard.load(_write_card(tmp_path, [f], inputs=["dwi"]))
    _write_card(tmp_path, [f])
    f.write_bytes(b"changed")
    with pytest.raises(ModelCardError, match="sha256"):
        ModelCard.load(tmp_path)
    with pytest.raises(ModelCardError, match="required key"):
        (tmp_path / "card.json").write_text("{}")
        ModelCard.load(tmp_path)


def test_whole_box_window_from_the_card(tmp_path):
    """A fully convolutional model's card lets a brain box run as one window of its own size
    (rounded up to the divisor); beyond the voxel cap, or without the fields, the patch slides."""
    f = tmp_path / "m.onnx"
    f.write_bytes(b"x")
    sliding = ModelCard.load(_write_card(tmp_path, [f], patch_size=[48, 48, 48]))
    assert sliding.window_for((101, 130, 97)) == (48, 48, 48)
    whole = ModelCard.load(_write_card(tmp_path, [f], patch_size=[48, 48, 48], size_divisor=8,
                                       max_window_voxels=112 * 136 * 104))
    assert whole.window_for((101, 130, 97)) == (104, 136, 104)
    assert whole.window_for((112, 136, 105)) == (48, 48, 48)  # 112x136x112 is over the cap
    with pytest.raises(ModelCardError, match="size_divisor"):
        ModelCard.load(_write_card(tmp_path, [f], max_window_voxels=1000))
    # one whole window gives the same map as sliding windows for a voxel-wise model
    img = np.random.default_rng(1).normal(size=(1, 21, 30, 17)).astype(np.float32)
    one = predict([_Const(1.0)], img, (24, 32, 24))
    slid = predict([_Const(1.0)], img, (16, 16, 16), overlap=0.5)
    assert np.allclose(one, slid, atol=1e-5)


def test_nnunet_resenc_unet_runs_from_its_card(tmp_path):
    torch = pytest.importorskip("torch", reason="PyTorch (optional [train] extra) is not installed")
    unet = pytest.importorskip("dynamic_network_architectures.architectures.unet",
                               reason="dynamic_network_architectures is not installed")
    torch.manual_seed(0)
    net = unet.ResidualEncoderUNet(
        input_channels=2, n_stages=5, features_per_stage=(8, 16, 32, 64, 64), conv_op=torch.nn.Conv3d,
        kernel_sizes=3, strides=(1, 2, 2, 2, 2), n_blocks_per_stage=(1, 2, 2, 2, 2), num_classes=2,
        n_conv_per_stage_decoder=(1, 1, 1, 1), conv_bias=True, norm_op=torch.nn.InstanceNorm3d,
        norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=torch.nn.LeakyReLU,
        nonlin_kwargs={"inplace": True}, deep_supervision=False).eval()
    f = tmp_path / "fold0.onnx"
    torch.onnx.export(net, torch.zeros(1, 2, 128, 128, 128), str(f), input_names=["x"], output_names=["logits"],
                      opset_version=17, dynamo=False)
    card = ModelCard.load(_write_card(tmp_path, [f]))
    seg = LesionSegmenter(card)

    # a T1-w on an oblique grid, a FLAIR on another grid; the brain fits one 128^3 window
    g1 = Grid((100, 110, 100), (1.0, 1.0, 1.0), rotation(8, -6, 12), (-50.0, -55.0, -50.0))
    g2 = Grid((30, 120, 120), (1.0, 1.0, 4.0), np.eye(3), (-60.0, -60.0, -60.0))
    rng = np.random.default_rng(1)
    t1 = g1.to_sitk(rng.normal(500, 50, g1.shape).astype(np.float32))
    flair = g2.to_sitk(rng.normal(300, 30, g2.shape).astype(np.float32))
    brain = g1.to_sitk(np.zeros(g1.shape, np.uint8))
    arr = sitk.GetArrayFromImage(brain)
    arr[20:80, 25:85, 20:80] = 1
    brain = sitk.GetImageFromArray(arr)
    brain.CopyInformation(t1)
    prob = seg.probability({"t1": t1, "flair": flair}, brain)
    grid = network_grid(card, t1, brain)
    assert Grid.from_sitk(prob).same_as(Grid.from_sitk(grid))
    assert max(prob.GetSize()) <= 128
    p = sitk.GetArrayFromImage(prob)
    assert 0 <= p.min() and p.max() <= 1

    # faithful: equals the network's own softmax on the same (normalised, padded) input
    from openrecon_stroke.lesion import normalise

    m = sitk.GetArrayFromImage(sitk.Resample(brain, grid, sitk.Transform(), sitk.sitkNearestNeighbor)) > 0
    chans = [normalise(sitk.GetArrayFromImage(sitk.Resample(im, grid, sitk.Transform(), sitk.sitkLinear, 0.0,
                                                            sitk.sitkFloat32)), m, "zscore_brain")
             for im in (t1, flair)]
    x = np.stack(chans)
    pads = [((128 - s) // 2, 128 - s - (128 - s) // 2) for s in x.shape[1:]]
    xp = np.pad(x, [(0, 0)] + pads)
    with torch.no_grad():
        ref = torch.softmax(net(torch.from_numpy(xp[None])), 1)[0, 1].numpy()
    ref = ref[tuple(slice(a, a + s) for (a, _), s in zip(pads, x.shape[1:]))]
    diff = np.abs(np.where(m, ref, 0) - p)
    # ONNX Runtime vs PyTorch float32 arithmetic: tiny differences only
    assert diff.max() < 5e-3 and diff.mean() < 1e-4, (diff.max(), diff.mean())

    # back on the FLAIR's own grid
    on_flair = seg.on_grid(prob, flair)
    assert on_flair.shape == g2.shape


@pytest.mark.parametrize("name", ["t1", "flair", "fusion"])
def test_shipped_cascade_runs_the_whole_model_wherever_its_first_trees_reach_the_cut(name):
    """The cascade (first trees on every row, the whole model where they reach min_probability)
    gives the whole model's probability on every row it does not skip, and skips only rows whose
    first-trees probability is under the cut."""
    from openrecon_stroke.lesion_voxel import VoxelLesionModel
    from openrecon_stroke.model_card import VoxelClassifierCard

    folder = REPO / "models" / "lesion" / name
    card = VoxelClassifierCard.load(folder)
    if card.cascade is None:
        pytest.skip(f"models/lesion/{name} has no cascade")
    model = VoxelLesionModel(card)
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1.5, (20000, len(card.features))).astype(np.float32)
    full = model.classify(x, cascade=False)
    first = model._classify(model._first.all(), x)
    both = model.classify(x)
    ran = first >= card.cascade.min_probability
    assert 0 < ran.sum() < ran.size
    np.testing.assert_allclose(both[ran], full[ran], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(both[~ran], first[~ran])
    assert not np.allclose(first, full)  # the cut file is not the whole model


def test_rows_classified_side_by_side_match_one_worker():
    """Blocks of rows on two workers (the lesion stage's setting on 2 cores) give exactly the
    probabilities of one worker, cascade and all, for any number of rows."""
    from openrecon_stroke.lesion_voxel import VoxelLesionModel
    from openrecon_stroke.model_card import VoxelClassifierCard

    card = VoxelClassifierCard.load(REPO / "models" / "lesion" / "fusion")
    one, two = VoxelLesionModel(card, threads=1), VoxelLesionModel(card, threads=1, workers=2)
    rng = np.random.default_rng(1)
    for n in (1, 9000, 41000):
        x = rng.normal(0, 1.5, (n, len(card.features))).astype(np.float32)
        np.testing.assert_array_equal(two.classify(x), one.classify(x))
        np.testing.assert_array_equal(two.classify(x, cascade=False), one.classify(x, cascade=False))
