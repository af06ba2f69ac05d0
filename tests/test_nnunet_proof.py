"""Proof that a team's nnU-Net v2 model, imported with ``openrecon-stroke import-nnunet`` and run
on ONNX Runtime by ``openrecon-stroke predict`` and by the lesion stage, gives nnU-Net's answer.

nnU-Net itself makes the models and the reference answers, in a separate process
(``scripts/nnunet_reference.py``): its fingerprint extractor and planners plan two tiny
datasets (a ResEnc M plan with 2 channels and a mask for normalisation; a default plan with 1
channel and 3 mm slices along the image x axis, so axes are transposed and the slice axis is
resampled apart), its trainer initialises each fold's network and saves it with
``save_checkpoint``, and ``nnUNetPredictor`` predicts inputs at another voxel spacing, with and
without mirroring. Ours must match: foreground probability max |difference| <= 0.01, mean
<= 0.001, label Dice >= 0.99.

Needs the optional extras: CPU PyTorch, ``dynamic_network_architectures``, ``onnx`` and
``nnunetv2`` (``bash scripts/install_nnunet_extra.sh``); skipped without them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
MISSING = [m for m in ("torch", "onnx", "dynamic_network_architectures", "nnunetv2") if importlib.util.find_spec(m) is None]
pytestmark = [pytest.mark.slow, pytest.mark.skipif(bool(MISSING), reason=(
    f"needs the nnunet extra ({', '.join(MISSING)} missing): bash scripts/install_nnunet_extra.sh"))]

sys.path.insert(0, str(REPO / "scripts"))
import nnunet_reference as reference  # noqa: E402  (scripts/ is not a package)

MAX_DIFF, MEAN_DIFF, MIN_DICE = 0.01, 0.001, 0.99
TWO_CHANNEL, ANISOTROPIC = 901, 902


def _write(arr, spacing_xyz, path, direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1)):
    img = sitk.GetImageFromArray(arr.astype(np.float32))
    img.SetSpacing(spacing_xyz)
    img.SetDirection(direction)  # nnU-Net ignores it; so must we
    img.SetOrigin((3.0, -4.0, 5.0))
    sitk.WriteImage(img, str(path))


def dice(a, b) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return 2.0 * np.sum(a & b) / max(1, a.sum() + b.sum())


@pytest.fixture(scope="module")
def proof(tmp_path_factory):
    """nnU-Net's models and answers, and our imports of the same models."""
    root = tmp_path_factory.mktemp("nnunet")
    rng = np.random.default_rng(7)
    inp = root / "inputs"
    inp.mkdir()
    # inputs at another spacing than the training data, a few windows each
    chans, _ = reference.synthetic_case(rng, (26, 38, 24), 2, zero_bg=True)
    for k, c in enumerate(chans):
        _write(c, (0.8, 0.9, 1.2), inp / f"two_{k:04d}.nii.gz")
    chans, _ = reference.synthetic_case(rng, (44, 30, 12), 1, zero_bg=False)
    _write(chans[0], (2.5, 0.9, 0.7), inp / "aniso_0000.nii.gz")
    cases = {TWO_CHANNEL: ("two", [inp / "two_0000.nii.gz", inp / "two_0001.nii.gz"]),
             ANISOTROPIC: ("aniso", [inp / "aniso_0000.nii.gz"])}
    jobs = []
    for did, (case, files) in cases.items():
        for mirror in (True, False):
            jobs.append({"did": did, "case": case, "results": str(reference.results_folder(root, did)),
                         "folds": list(reference.DATASETS[did]["folds"]), "inputs": [str(f) for f in files],
                         "out": str(root / f"nnunet_{case}_mirror{int(mirror)}"), "mirroring": mirror})
    (root / "jobs.json").write_text(json.dumps(jobs))
    t0 = time.perf_counter()
    env = dict(os.environ, NNUNET_REF_THREADS="2", nnUNet_def_n_proc="1", OMP_NUM_THREADS="2")
    run = subprocess.run([sys.executable, str(REPO / "scripts" / "nnunet_reference.py"), "build", str(root),
                          "--cases", "4", "--predict", str(root / "jobs.json")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    nnunet_s = time.perf_counter() - t0

    from openrecon_stroke.nnunet_import import import_nnunet

    said: list[str] = []
    models = {}
    t0 = time.perf_counter()
    for did in cases:
        models[did] = root / f"model{did}"
        import_nnunet(reference.results_folder(root, did), models[did], say=said.append)
    models["fp16"] = root / "model_fp16"
    import_nnunet(reference.results_folder(root, ANISOTROPIC), models["fp16"], fp16=True, say=said.append)
    print(f"\nnnU-Net build + reference predictions {nnunet_s:.0f} s; our imports {time.perf_counter() - t0:.0f} s")
    return {"root": root, "jobs": jobs, "models": models, "said": said}


def _compare(job, model, out_dir):
    from openrecon_stroke.predict import predict_files

    out = predict_files(model, job["inputs"], out_dir, mirroring=job["mirroring"], say=lambda s: None)
    ours_p = sitk.GetArrayFromImage(sitk.ReadImage(str(out["prob"])))
    ours_l = sitk.GetArrayFromImage(sitk.ReadImage(str(out["label"])))
    ref_p = np.load(job["out"] + ".npz")["probabilities"][1]
    ref_l = sitk.GetArrayFromImage(sitk.ReadImage(job["out"] + ".nii.gz"))
    # outputs on the input's own grid, as nnU-Net writes them
    src, got = sitk.ReadImage(job["inputs"][0]), sitk.ReadImage(str(out["label"]))
    assert got.GetSize() == src.GetSize()
    np.testing.assert_allclose(got.GetDirection(), src.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(got.GetOrigin(), src.GetOrigin(), atol=1e-4)
    d = np.abs(ours_p - ref_p)
    return d, dice(ours_l, ref_l), ref_l


@pytest.mark.parametrize("did", [TWO_CHANNEL, ANISOTROPIC])
@pytest.mark.parametrize("mirror", [True, False])
def test_predict_gives_nnunets_answer(proof, did, mirror, tmp_path):
    job = next(j for j in proof["jobs"] if j["did"] == did and j["mirroring"] == mirror)
    d, dc, ref_l = _compare(job, proof["models"][did], tmp_path)
    print(f"{job['case']} mirroring={mirror}: max |dp| {d.max():.2e}, mean {d.mean():.2e}, Dice {dc:.4f}, "
          f"{int((ref_l > 0).sum())} foreground voxels")
    assert 0 < (ref_l > 0).mean() < 1, "the reference must have both classes for the Dice to mean something"
    assert d.max() <= MAX_DIFF and d.mean() <= MEAN_DIFF, (d.max(), d.mean())
    assert dc >= MIN_DICE


def test_predict_command_line(proof, tmp_path, capsys):
    from openrecon_stroke.cli import main

    job = next(j for j in proof["jobs"] if j["did"] == ANISOTROPIC and not j["mirroring"])
    assert main(["predict", "--model", str(proof["models"][ANISOTROPIC]), "--input", *job["inputs"],
                 "--out", str(tmp_path), "--no-mirroring"]) == 0
    said = capsys.readouterr().out
    assert "nnU-Net v2 inference, 1 fold(s) x 1 mirroring(s)" in said and "aniso_label.nii.gz" in said
    ref = sitk.GetArrayFromImage(sitk.ReadImage(job["out"] + ".nii.gz"))
    assert dice(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "aniso_label.nii.gz"))), ref) >= MIN_DICE
    assert main(["predict", "--model", str(proof["models"][TWO_CHANNEL]), "--input", job["inputs"][0],
                 "--out", str(tmp_path)]) == 2
    assert "takes 2 input(s) (t1, flair, in this order); got 1" in capsys.readouterr().err


def test_fp16_weights_still_give_nnunets_answer(proof, tmp_path):
    job = next(j for j in proof["jobs"] if j["did"] == ANISOTROPIC and not j["mirroring"])
    d, dc, _ = _compare(job, proof["models"]["fp16"], tmp_path)
    print(f"fp16 weights: max |dp| {d.max():.2e}, mean {d.mean():.2e}, Dice {dc:.4f}")
    assert d.max() <= MAX_DIFF and d.mean() <= MEAN_DIFF and dc >= MIN_DICE
    size = lambda m: sum(f.stat().st_size for f in Path(m).glob("*.onnx"))  # noqa: E731
    assert size(proof["models"]["fp16"]) < 0.6 * size(proof["models"][ANISOTROPIC])


def test_card_records_nnunets_inference(proof):
    from openrecon_stroke.model_card import ModelCard

    two = ModelCard.load(proof["models"][TWO_CHANNEL])
    aniso = ModelCard.load(proof["models"][ANISOTROPIC])
    plans = json.loads((reference.results_folder(proof["root"], ANISOTROPIC) / "plans.json").read_text())
    cfg = plans["configurations"]["3d_fullres"]
    p = aniso.preprocessing
    assert list(p.transpose_forward) == plans["transpose_forward"] == [2, 0, 1]
    assert list(p.target_spacing) == cfg["spacing"] and list(p.patch_size) == cfg["patch_size"]
    assert (p.data_resampling.order, p.data_resampling.order_z) == (3, 0)
    assert (p.probability_resampling.order, p.probability_resampling.order_z) == (1, 0)
    assert p.mirror_axes == (0, 1, 2) and p.step == 0.5 and p.sigma_scale == 0.125
    assert p.normalisation == ("ZScoreNormalization",) and p.use_mask_for_norm == (False,)
    assert aniso.inputs == ("flair",) and not p.skull_stripped
    assert two.inputs == ("t1", "flair") and two.preprocessing.use_mask_for_norm == (True, True)
    assert two.preprocessing.skull_stripped and two.preprocessing.source["architecture"] == "ResidualEncoderUNet"
    assert aniso.preprocessing.source["architecture"] == "PlainConvUNet" and len(two.files) == 2
    assert any("wrote" in s and "card.json" in s for s in proof["said"])
    assert any("read" in s and "folds 0, 1" in s for s in proof["said"])


def test_lesion_stage_runs_the_site_model(proof, monkeypatch):
    """The pipeline's lesion stage, pointed at the imported two-channel model, gives nnU-Net's
    (mirroring-off) label map inside the brain on the T1-w grid, and names the model."""
    from openrecon_stroke.geometry import Grid, Volume
    from openrecon_stroke.params import coerce
    from openrecon_stroke.preprocess import RigidRegistration
    from openrecon_stroke.stages.lesion import LesionSegmentation
    from openrecon_stroke.stages.results import BrainResult, LesionResult, SeriesRegistration
    from openrecon_stroke.study import Study

    job = next(j for j in proof["jobs"] if j["did"] == TWO_CHANNEL and not j["mirroring"])
    t1, flair = (sitk.ReadImage(f) for f in job["inputs"])
    brain = sitk.Cast(sitk.BinaryFillhole(sitk.Cast((t1 != 0) | (flair != 0), sitk.sitkUInt8)), sitk.sitkUInt8)
    vols = {c: Volume(sitk.GetArrayFromImage(im).astype(np.float32), Grid.from_sitk(im))
            for c, im in (("t1", t1), ("flair", flair))}
    study = Study(inputs=vols, params=coerce({"minlesion": 0}))
    study.results[BrainResult] = BrainResult(reference="t1", n4={"t1": t1, "flair": flair},
                                             brain_mask={"t1": brain, "flair": brain}, mode="fast", model="test")
    study.results[SeriesRegistration] = SeriesRegistration(RigidRegistration(
        sitk.Transform(3, sitk.sitkIdentity), 0.0, 0.0, 0.0, 0.0, 1.0, True, "", 0.0))
    monkeypatch.setenv("OPENRECON_LESION_MODEL", str(proof["models"][TWO_CHANNEL]))
    res = LesionSegmentation().run(study)
    model = next(r for r in res.results if isinstance(r, LesionResult)).model
    assert "Dataset901_TinyTwoChannel" in model and "nnU-Net v2" in model
    masks = {d.reference: d.data for d in res.derived if d.name == "lesion_mask"}
    assert set(masks) == {"t1", "flair"}
    # the stage keeps lesions inside the brain mask only
    ref_l = sitk.GetArrayFromImage(sitk.ReadImage(job["out"] + ".nii.gz")) * sitk.GetArrayFromImage(brain)
    assert ref_l.any() and dice(masks["t1"], ref_l) >= MIN_DICE, dice(masks["t1"], ref_l)
    assert "p>=0.5" in next(d.comment for d in res.derived if d.reference == "t1")
