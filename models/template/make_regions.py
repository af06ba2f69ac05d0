"""Build the template-space region map the report uses to say where a lesion lies.

``regions.nii.gz`` (uint8, 1 mm, on the MNI ICBM152 2009a symmetric grid) and ``regions.json``
(label -> name). Regions, each split into left and right by the sign of MNI x:

* from the tissue map of the MNI head (:func:`simulator.anatomy.load_head` ``"mni"``): lateral
  ventricles, deep grey matter (basal ganglia and thalamus: split at MNI y = -8 mm), cerebellum,
  brainstem (one midline label);
* deep white matter: cerebral white matter within 12 mm of a ventricle;
* cortex and subcortical white matter by lobe, with lobar boundaries approximated by planes in
  MNI coordinates (central sulcus y = -10 - 0.45 (z - 30); Sylvian fissure z = 5 - 0.25 y for
  y > -68; parieto-occipital boundary y = -68; insula: 28 < |x| < 42, -25 < y < 25,
  -10 < z < 22). These are approximations (about a centimetre near a boundary): the report
  names them as such.

    .venv/bin/python models/template/make_regions.py --out models/template
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from openrecon_stroke import template  # noqa: E402
from openrecon_stroke.model_card import file_sha256  # noqa: E402


def build() -> tuple[np.ndarray, sitk.Image, dict[int, str]]:
    from simulator import anatomy
    from simulator.anatomy import Tissue

    grid = template.load_template(1.0).grid
    lab = sitk.GetArrayFromImage(
        sitk.Resample(anatomy.load_head("mni"), grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    )
    # MNI (RAS) coordinates of every voxel
    zi, yi, xi = np.indices(lab.shape, dtype=np.float32)
    o, sp = np.array(grid.GetOrigin()), np.array(grid.GetSpacing())
    X = -(o[0] + xi * sp[0])
    Y = -(o[1] + yi * sp[1])
    Z = o[2] + zi * sp[2]
    names: dict[int, str] = {}
    out = np.zeros(lab.shape, np.uint8)

    def put(mask, name):
        for side, sel in (("right", X > 0), ("left", X <= 0)):
            k = len(names) + 1
            names[k] = f"{side} {name}"
            out[mask & sel & (out == 0)] = k

    vent = lab == Tissue.CSF
    cerebral = np.isin(lab, (Tissue.GM, Tissue.WM))
    cs = -10 - 0.45 * (Z - 30)
    occ = Y < -68
    temporal = (Z < 5 - 0.25 * Y) & ~occ & (Y < 25) & (np.abs(X) > 20)
    insula = (np.abs(X) > 28) & (np.abs(X) < 42) & (Y > -25) & (Y < 25) & (Z > -10) & (Z < 22)
    near_vent = ndimage.distance_transform_edt(~vent) <= 12
    put(vent, "lateral ventricle")
    put((lab == Tissue.DEEP_GM) & (Y < -8) & (Z > -10), "thalamus")
    put((lab == Tissue.DEEP_GM), "basal ganglia")
    put(np.isin(lab, (Tissue.CEREBELLUM_GM, Tissue.CEREBELLUM_WM)), "cerebellum")
    k = len(names) + 1
    names[k] = "brainstem"
    out[(lab == Tissue.BRAINSTEM) & (out == 0)] = k
    put(cerebral & (lab == Tissue.WM) & near_vent, "deep white matter")
    put(cerebral & insula, "insula")
    put(cerebral & occ, "occipital lobe")
    put(cerebral & temporal, "temporal lobe")
    put(cerebral & (Y > cs), "frontal lobe")
    put(cerebral, "parietal lobe")
    return out, grid, names


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = ap.parse_args(argv)
    arr, grid, names = build()
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(grid)
    args.out.mkdir(parents=True, exist_ok=True)
    f = args.out / "regions.nii.gz"
    sitk.WriteImage(img, str(f), useCompression=True)
    meta = {
        "labels": {str(k): v for k, v in names.items()},
        "template": template.TEMPLATE_NAME,
        "file": f.name,
        "sha256": file_sha256(f),
        "command": "models/template/make_regions.py",
        "note": "lobar boundaries are planes in MNI coordinates (approximate); deep structures, "
        "ventricles, cerebellum and brainstem from the simulator's MNI head",
    }
    (args.out / "regions.json").write_text(json.dumps(meta, indent=1) + "\n")
    vox = {names[k]: int((arr == k).sum()) for k in names}
    print(json.dumps(vox, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
