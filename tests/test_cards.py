"""One model-card format and one loader for every family (HD-BET, lesion, anomaly), and the
runtime's folder lookup and caches."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from openrecon_stroke import runtime
from openrecon_stroke.model_card import (
    CARD_KINDS, AnomalyCard, BrainExtractionCard, ModelCard, ModelCardError, NormativeCard, VoxelClassifierCard,
    load_card,
)

REPO = Path(__file__).resolve().parents[1]
SHIPPED = {"hdbet": BrainExtractionCard, "anomaly": AnomalyCard, "lesion/t1": VoxelClassifierCard,
           "lesion/flair": VoxelClassifierCard, "lesion/fusion": VoxelClassifierCard, "lesion/normative": NormativeCard,
           "normative": NormativeCard}


@pytest.mark.parametrize("folder", sorted(SHIPPED))
def test_shipped_cards_load_with_the_one_loader(folder):
    path = REPO / "models" / folder
    if not (path / "card.json").is_file():
        pytest.skip(f"models/{folder} not built")
    card = load_card(path)
    assert type(card) is SHIPPED[folder] and card.kind == json.loads((path / "card.json").read_text())["kind"]
    assert card.name and card.version and card.files and len(card.files) == len(card.sha256)
    assert all(f.is_file() and s for f, s in zip(card.files, card.sha256))
    assert card["name"] == card.name  # the JSON as written stays readable
    assert SHIPPED[folder].load(path) == card


def _copy_card(src: Path, dst: Path, **change) -> dict:
    d = json.loads((src / "card.json").read_text())
    d.update(change)
    d = {k: v for k, v in d.items() if v is not None}
    (dst / "card.json").write_text(json.dumps(d))
    return d


def test_family_from_kind_or_keys_and_refused_when_wrong(tmp_path):
    src = REPO / "models" / "anomaly"
    if not (src / "card.json").is_file():
        pytest.skip("models/anomaly not built")
    _copy_card(src, tmp_path, kind=None)  # an older card without "kind": its keys tell
    assert type(load_card(tmp_path, verify=False)) is AnomalyCard
    with pytest.raises(ModelCardError, match="of kind 'anomaly', not 'segmentation'"):
        _copy_card(src, tmp_path)
        ModelCard.load(tmp_path, verify=False)
    with pytest.raises(ModelCardError, match="unknown model kind 'dwi'"):
        _copy_card(src, tmp_path, kind="dwi")
        load_card(tmp_path, verify=False)
    assert set(CARD_KINDS) == {"segmentation", "anomaly", "brain_extraction", "voxel_classifier", "normative"}


def test_brain_extraction_card_is_typed(tmp_path):
    src = REPO / "models" / "hdbet"
    if not (src / "card.json").is_file():
        pytest.skip("models/hdbet not built")
    card = BrainExtractionCard.load(src, verify=False)
    assert card.modes["fast"] == (1, False, 1.75, 1.9) and card.modes["accurate"] == ("all", True, None, None)
    assert card.crop.enabled and card.pad_divisible_by == 16 and card.spacing_mm == (1.5, 1.5, 1.5)
    assert card.session_options() == {"low_memory": True, "fold_weights": True, "openvino": True}
    d = _copy_card(src, tmp_path)
    del d["padding"]
    (tmp_path / "card.json").write_text(json.dumps(d))
    with pytest.raises(ModelCardError, match="lacks the required key 'padding'"):
        load_card(tmp_path, verify=False)
    d = _copy_card(src, tmp_path)
    d["modes"]["fast"]["fit_spacing_max_mm"] = "wide"
    (tmp_path / "card.json").write_text(json.dumps(d))
    with pytest.raises((ModelCardError, ValueError), match="fit_spacing_max_mm"):
        load_card(tmp_path, verify=False)
    _copy_card(src, tmp_path)
    with pytest.raises(ModelCardError, match="is missing"):  # the model files are not beside this copy
        load_card(tmp_path)


def test_model_folders_and_env_overrides(monkeypatch, tmp_path):
    monkeypatch.delenv("OPENRECON_MODELS_DIR", raising=False)
    monkeypatch.delenv("OPENRECON_LESION_DIR", raising=False)
    assert runtime.models_dir() == REPO / "models"
    assert runtime.model_folder("lesion") == REPO / "models" / "lesion"
    monkeypatch.setenv("OPENRECON_MODELS_DIR", str(tmp_path))
    assert runtime.model_folder("anomaly") == tmp_path / "anomaly"
    monkeypatch.setenv("OPENRECON_LESION_DIR", str(tmp_path / "mine"))
    assert runtime.model_folder("lesion") == tmp_path / "mine"
    with pytest.raises(KeyError):
        runtime.model_folder("dwi")


def test_model_cache_builds_once_per_key():
    built = []
    cache = runtime.ModelCache(lambda key: built.append(key) or object())
    a, b = cache.get("x"), cache.get("x")
    assert a is b and built == ["x"]
    cache.get("y")
    cache.clear()
    cache.get("x")
    assert built == ["x", "y", "x"]
    assert runtime.physical_cores() >= 1


def _write(folder: Path, card: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(b"x")
    (folder / "card.json").write_text(json.dumps(card))
    return folder


def test_voxel_classifier_and_normative_cards_validate(tmp_path):
    from openrecon_stroke.model_card import NormativeCard, VoxelClassifierCard

    voxel = {"kind": "voxel_classifier", "name": "v", "version": "1", "inputs": ["t1"],
             "template": {"spacing_mm": 1.5}, "features": ["t1_int", "t1_mirror", "prior_gm"],
             "files": [{"file": "model.onnx"}]}
    card = VoxelClassifierCard.load(_write(tmp_path / "a", voxel), verify=False)
    assert card.features == ("t1_int", "t1_mirror", "prior_gm") and card.normative is None
    with pytest.raises(ModelCardError, match="unknown features"):
        load_card(_write(tmp_path / "b", {**voxel, "features": ["flair_int"]}), verify=False)
    with pytest.raises(ModelCardError, match="need a 'normative' model"):
        load_card(_write(tmp_path / "c", {**voxel, "features": ["t1_z"]}), verify=False)
    ok = load_card(_write(tmp_path / "d", {**voxel, "features": ["t1_z"], "normative": "../n"}), verify=False)
    assert isinstance(ok, VoxelClassifierCard) and ok.normative == tmp_path / "d" / "../n"

    norm = {"kind": "normative", "name": "n", "version": "1", "contrasts": ["t1"], "template": {"spacing_mm": 1.5},
            "shape": [10, 12, 14], "box": [[0, 10], [1, 11], [2, 14]], "calibration": {"t1": 2.5},
            "files": [{"file": "model.onnx"}]}
    assert isinstance(load_card(_write(tmp_path / "e", norm), verify=False), NormativeCard)
    with pytest.raises(ModelCardError, match="box"):
        load_card(_write(tmp_path / "f", {**norm, "box": [[0, 11], [0, 12], [0, 14]]}), verify=False)
    with pytest.raises(ModelCardError, match="calibration"):
        load_card(_write(tmp_path / "g", {**norm, "calibration": {"flair": 2.0}}), verify=False)
    # left-right difference statistics: only for a listed contrast whose file is listed
    asym = {**norm, "asymmetry": ["t1"], "files": [{"file": "t1.npz"}, {"file": "t1_mirror.npz"}]}
    assert load_card(_write(tmp_path / "h", asym), verify=False).asymmetry == ("t1",)
    with pytest.raises(ModelCardError, match="t1_mirror.npz"):
        load_card(_write(tmp_path / "i", {**asym, "files": [{"file": "t1.npz"}]}), verify=False)
    with pytest.raises(ModelCardError, match="flair"):
        load_card(_write(tmp_path / "j", {**asym, "asymmetry": ["flair"]}), verify=False)
    # the CSF reference images are standardised to: a known contrast, CSF darker than white matter
    assert load_card(_write(tmp_path / "k", {**norm, "csf_reference": {"t1": 0.33}}), verify=False).csf_reference == {
        "t1": 0.33}
    for bad in ({"flair": 0.33}, {"t1": 1.2}, {"t1": 0.0}):
        with pytest.raises(ModelCardError, match="csf_reference"):
            load_card(_write(tmp_path / "l", {**norm, "csf_reference": bad}), verify=False)
    # where each image's own CSF level is read: the tissue means (older cards) or the ventricles
    assert load_card(_write(tmp_path / "m", norm), verify=False).csf_measured_in == "brain"
    vent = {**norm, "csf_reference": {"t1": 0.25}, "csf_measured_in": "lateral_ventricles"}
    assert load_card(_write(tmp_path / "n", vent), verify=False).csf_measured_in == "lateral_ventricles"
    with pytest.raises(ModelCardError, match="csf_measured_in"):
        load_card(_write(tmp_path / "o", {**vent, "csf_measured_in": "sulci"}), verify=False)
    # tissue-standardised contrasts: known ones, not also given a CSF reference
    tissue = {**norm, "tissue_standardised": ["t1"]}
    assert load_card(_write(tmp_path / "p", tissue), verify=False).tissue_standardised == ("t1",)
    for bad in ({**tissue, "tissue_standardised": ["flair"]}, {**tissue, "csf_reference": {"t1": 0.3}}):
        with pytest.raises(ModelCardError, match="tissue_standardised"):
            load_card(_write(tmp_path / "q", bad), verify=False)


def test_voxel_classifier_cascade_entry_validates(tmp_path):
    voxel = {"kind": "voxel_classifier", "name": "v", "version": "1", "inputs": ["t1"],
             "template": {"spacing_mm": 1.5}, "features": ["t1_int"], "files": [{"file": "model.onnx"}]}
    cascade = {"file": "first10.onnx", "trees": 10, "min_probability": 0.001, "safe_probability": 0.2}
    folder = _write(tmp_path / "a", {**voxel, "cascade": cascade})
    (folder / "first10.onnx").write_bytes(b"y")
    card = VoxelClassifierCard.load(folder)
    assert card.cascade is not None and card.cascade.file == folder / "first10.onnx" and card.cascade.trees == 10
    (folder / "first10.onnx").unlink()
    with pytest.raises(ModelCardError, match="first10.onnx.*missing"):
        VoxelClassifierCard.load(folder)
    with pytest.raises(ModelCardError, match="min_probability < safe_probability"):
        load_card(_write(tmp_path / "b", {**voxel, "cascade": {**cascade, "min_probability": 0.3}}), verify=False)
    with pytest.raises(ModelCardError, match="cascade needs file"):
        load_card(_write(tmp_path / "c", {**voxel, "cascade": {"file": "x.onnx"}}), verify=False)
    two = {**voxel, "files": [{"file": "model.onnx"}, {"file": "model.onnx"}], "cascade": cascade}
    with pytest.raises(ModelCardError, match="exactly one model file"):
        load_card(_write(tmp_path / "d", two), verify=False)


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.machine().lower() not in ("x86_64", "amd64", "aarch64", "arm64"),
    reason="flush_denormals works on x86-64 and AArch64 Linux only",
)
def test_flush_denormals_on_this_thread_and_the_threads_it_starts():
    """A fresh interpreter: a float32 product that is denormal stays so until flush_denormals(),
    then is 0 on the calling thread and on a thread started afterwards (what the server's
    connection threads, ITK's and ONNX Runtime's rely on)."""
    code = """
import threading, numpy as np
from openrecon_stroke.runtime import flush_denormals
x = np.full(8, 1e-30, np.float32)
before = float((x * np.float32(1e-9))[0])
on = flush_denormals()
after = float((x * np.float32(1e-9))[0])
seen = []
t = threading.Thread(target=lambda: seen.append(float((x * np.float32(1e-9))[0])))
t.start(); t.join()
print(before, on, after, seen[0], flush_denormals())
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    before, on, after, in_thread, again = out.stdout.split()
    assert float(before) > 0  # 1e-39: denormal, kept by default
    assert on == "True" and again == "True"
    assert float(after) == 0.0 and float(in_thread) == 0.0
