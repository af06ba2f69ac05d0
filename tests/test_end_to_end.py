"""A synthetic study from the phantom, replayed over MRD to the real server, comes back on
exactly the geometry of the phantom's truth masks (the head-mask pipeline: geometry only, in
two orientations; the default pipeline end to end is test_pipeline_server.py)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from openrecon_stroke.geometry import Grid, assemble_series
from openrecon_stroke.mrdfile import read
from simulator.__main__ import main as simulator_main

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("orientation", [None, "oblique"])
def test_phantom_replayed_through_server(server, tmp_path, orientation):
    study = tmp_path / "study"
    args = ["phantom", "--out", str(study), "--seed", "3"]
    if orientation:
        args += ["--orientation", orientation]
    assert simulator_main(args) == 0
    for series in ("t1", "flair"):
        out = tmp_path / f"back_{series}.h5"
        rc = simulator_main(["replay", str(study / f"{series}.h5"), "--port", str(server.port),
                             "--config", "headmask", "--out", str(out)])
        assert rc == 0
        back = read(out)
        sent = read(study / f"{series}.h5")
        by_series = {}
        for im in back.images:
            by_series.setdefault(int(im.image_series_index), []).append(im)
        assert len(by_series) == 2
        orig_idx = int(sent.images[0].image_series_index)
        orig = assemble_series(by_series.pop(orig_idx))
        (mask_images,) = by_series.values()
        head = assemble_series(mask_images)
        truth = sitk.ReadImage(str(study / f"{series}_brain_mask.nii.gz"))
        tgrid = Grid.from_sitk(truth)
        assert orig.grid.same_as(tgrid) and head.grid.same_as(tgrid)
        assert np.array_equal(orig.data, assemble_series(sent.images).data)
        brain = sitk.GetArrayFromImage(truth) > 0
        # the returned head mask covers the true brain, voxel for voxel on the same grid
        assert (head.data[brain] > 0).mean() > 0.9
        assert head.data.sum() > brain.sum()
