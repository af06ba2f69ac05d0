"""`openrecon-stroke process`: the same pipeline offline, outputs on each input's own grid."""

from __future__ import annotations

import json

import numpy as np
import SimpleITK as sitk

from openrecon_stroke.cli import main as cli_main
from openrecon_stroke.geometry import Grid, Volume
from openrecon_stroke.mrdfile import MrdStream, make_header_xml, volume_to_images, write

from conftest import rotation


def head_like(grid: Grid, centre_lps, radius_mm=40.0) -> np.ndarray:
    nz, ny, nx = grid.shape
    idx = np.stack(np.meshgrid(np.arange(nx), np.arange(ny), np.arange(nz), indexing="xy"), -1)
    lps = grid.index_to_lps(idx.reshape(-1, 3)).reshape(ny, nx, nz, 3).transpose(2, 0, 1, 3)
    r = np.linalg.norm(lps - np.asarray(centre_lps), axis=-1)
    return np.where(r < radius_mm, 500.0, 5.0).astype(np.float32)


def test_process_nifti_and_ismrmrd_inputs_write_outputs_on_their_own_grids(tmp_path):
    centre = np.array([3.0, -10.0, 15.0])
    g1 = Grid((30, 48, 44), (2.0, 2.0, 3.0), rotation(10, 15, -5), centre - 45)
    g2 = Grid((20, 40, 40), (2.5, 2.5, 5.0), np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], float).T,
              centre + np.array([-50, -40, 50]))
    t1 = tmp_path / "t1.nii.gz"
    sitk.WriteImage(g1.to_sitk(head_like(g1, centre)), str(t1))
    flair = tmp_path / "flair.h5"
    v2 = Volume(head_like(g2, centre), g2)
    write(flair, MrdStream(header_xml=make_header_xml(protocol_name="t2_tirm_tra_dark-fluid", ti_ms=2500),
                           images=volume_to_images(v2, 2)))
    out = tmp_path / "out"
    rc = cli_main(["process", "--t1", str(t1), "--flair", str(flair), "--out", str(out),
                   "--param", "config=headmask"])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["stage_status"] == {"input_check": "ok", "head_mask": "ok"}
    sphere_ml = 4 / 3 * np.pi * 40**3 / 1000
    for key, grid in (("t1", g1), ("flair", g2)):
        m = sitk.ReadImage(str(out / f"head_mask_{key}.nii.gz"))
        assert Grid.from_sitk(m).same_as(grid)
        assert abs(report["findings"][f"head_volume_ml_{key}"] - sphere_ml) / sphere_ml < 0.15
    assert "load" in report["timings_s"]


def test_process_needs_an_input(tmp_path, capsys):
    assert cli_main(["process", "--out", str(tmp_path)]) == 2
    assert "at least one" in capsys.readouterr().err


def test_process_reports_missing_file_clearly(tmp_path, capsys):
    assert cli_main(["process", "--t1", str(tmp_path / "nope.nii.gz"), "--out", str(tmp_path)]) == 2
    assert "nope.nii.gz" in capsys.readouterr().err


def test_process_reports_bad_parameters_first_and_in_order(tmp_path):
    g = Grid((20, 40, 40), (2.5, 2.5, 5.0), np.eye(3), (-50.0, -50.0, -50.0))
    t1 = tmp_path / "t1.nii.gz"
    sitk.WriteImage(g.to_sitk(head_like(g, (0.0, 0.0, 0.0))), str(t1))
    rc = cli_main(["process", "--t1", str(t1), "--out", str(tmp_path / "o"), "--param", "config=headmask",
                   "--param", "sendoriginal=maybe", "--param", "zzz=1"])
    assert rc == 0
    w = json.loads((tmp_path / "o" / "report.json").read_text())["warnings"]
    assert "sendoriginal" in w[0] and "zzz" in w[1]
