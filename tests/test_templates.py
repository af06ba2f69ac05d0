"""The MNI152 template lookup: nilearn's files on a development install, an exported folder
(what the container image holds) through OPENRECON_TEMPLATES_DIR, clear errors otherwise."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import SimpleITK as sitk

from openrecon_stroke import templates as tp

pytestmark = pytest.mark.skipif(tp._nilearn_data_dir() is None, reason="nilearn is not installed (simulator extra)")


def _sha(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv(tp.ENV_VAR, raising=False)


def test_found_in_nilearn(no_env):
    d = tp.template_dir()
    assert d == tp._nilearn_data_dir()
    for kind, name in tp.TEMPLATE_FILES.items():
        assert tp.template_path(kind) == d / name and (d / name).stat().st_size > 500_000


def test_geometry_is_lps_and_symmetric(no_env):
    t1 = tp.load_template("t1")
    assert t1.GetSize() == (197, 233, 189) and t1.GetSpacing() == (1.0, 1.0, 1.0)
    # stored RAS: SimpleITK reports LPS, so i runs right-to-left... as x_LPS decreases
    assert np.allclose(np.array(t1.GetDirection()).reshape(3, 3), np.diag([-1, -1, 1]))
    # the grid is centred on the midsagittal plane x = 0 and the volume is left-right symmetric
    assert t1.TransformIndexToPhysicalPoint((98, 0, 0))[0] == pytest.approx(0.0)
    a = sitk.GetArrayViewFromImage(t1)
    assert np.array_equal(a, a[:, :, ::-1])


def test_brain_mask_follows_the_tissue_maps(no_env):
    mask = sitk.GetArrayFromImage(tp.load_template("mask"))
    gm = sitk.GetArrayFromImage(tp.load_template("gm")).astype(float) / 255
    wm = sitk.GetArrayFromImage(tp.load_template("wm")).astype(float) / 255
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    volume_ml = mask.sum() / 1000.0  # 1 mm voxels
    assert 1200 < volume_ml < 2200, volume_ml  # an adult brain with its CSF spaces
    tissue = (gm + wm) > 0.5
    assert mask[tissue].mean() > 0.98  # nearly all grey + white matter is inside the mask
    assert tissue[mask == 1].mean() > 0.6  # and the mask is mostly tissue (the rest: CSF)
    # nothing at the top or on the left/right faces (the grid's bottom cuts the brainstem)
    assert mask[-1].sum() == mask[:, :, 0].sum() == mask[:, :, -1].sum() == 0


def test_export_and_the_env_override(tmp_path, monkeypatch, no_env):
    out = tp.export_templates(tmp_path / "tpl")
    assert sorted(p.name for p in out) == sorted([*tp.TEMPLATE_FILES.values(), tp.NOTICE_FILE])
    notice = (tmp_path / "tpl" / tp.NOTICE_FILE).read_text()
    assert "Louis Collins" in notice and "Permission to use, copy, modify" in notice
    monkeypatch.setenv(tp.ENV_VAR, str(tmp_path / "tpl"))
    assert tp.template_dir() == tmp_path / "tpl"
    for kind in tp.TEMPLATE_FILES:
        p = tp.template_path(kind)
        assert p.parent == tmp_path / "tpl"
        assert _sha(p) == _sha(tp._nilearn_data_dir() / p.name)  # copied unchanged


def test_clear_errors(tmp_path, monkeypatch, no_env):
    with pytest.raises(KeyError, match="load_template"):
        tp.template_path("mask")
    with pytest.raises(KeyError, match="unknown template kind"):
        tp.template_path("t2")
    (tmp_path / "partial").mkdir()
    monkeypatch.setenv(tp.ENV_VAR, str(tmp_path / "partial"))
    with pytest.raises(tp.TemplateNotFound, match="export"):
        tp.template_path("t1")
    monkeypatch.delenv(tp.ENV_VAR)
    monkeypatch.setattr(tp, "_nilearn_data_dir", lambda: None)
    with pytest.raises(tp.TemplateNotFound, match="nilearn is not installed"):
        tp.template_dir()


def test_command_line(tmp_path, capsys, no_env):
    assert tp.main(["where"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(tp._nilearn_data_dir()) and [ln.split("\t")[0] for ln in lines[1:]] == ["t1", "gm", "wm"]
    assert tp.main(["export", str(tmp_path / "x")]) == 0
    assert (tmp_path / "x" / tp.NOTICE_FILE).is_file()
