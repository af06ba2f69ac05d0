"""The synthetic stroke study generator (simulator.anatomy + simulator.phantom)."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from openrecon_stroke import mrdfile
from openrecon_stroke.geometry import Grid, assemble_series
from simulator import anatomy, phantom
from simulator.anatomy import Tissue

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("OPENRECON_SHARED_DATA", REPO.parent / "shared" / "data"))
SYNTHSEG = SHARED / "synthseg_label_maps"
SYNTHSEG_MAP = SYNTHSEG / "training_seg_01.nii.gz"
needs_synthseg = pytest.mark.skipif(
    not SYNTHSEG_MAP.exists(),
    reason=f"SynthSeg label maps not found at {SYNTHSEG} (set OPENRECON_SHARED_DATA to the shared data folder)")

SEED = 5
KINDS = "territorial,lacunar"


def _run_cli(argv: list[str]) -> list[str]:
    p = argparse.ArgumentParser()
    phantom.add_arguments(p)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert phantom.run(p.parse_args(argv)) == 0
    return buf.getvalue().split()


@pytest.fixture(scope="module")
def head():
    return anatomy.load_head(), anatomy.load_hemispheres()


@pytest.fixture(scope="module")
def study(tmp_path_factory, head):
    out = tmp_path_factory.mktemp("study")
    printed = _run_cli(["--out", str(out), "--seed", str(SEED), "--kinds", KINDS])
    return out, printed


@pytest.fixture(scope="module")
def lesioned(head):
    labels, hemi = head
    return anatomy.insert_lesions(labels, np.random.default_rng(11), kinds=list(anatomy.LESION_KINDS),
                                  hemispheres=hemi)


def _small(labels: sitk.Image) -> sitk.Image:
    """A 64 mm cube around the brain centre (fast contrast tests)."""
    a = sitk.GetArrayViewFromImage(labels)
    c = np.argwhere(anatomy.brain_mask(a)[::4, ::4, ::4]).mean(axis=0).astype(int) * 4
    z, y, x = (int(v) for v in c)
    return labels[x - 32:x + 32, y - 32:y + 32, z - 24:z + 40]


# --------------------------------------------------------------------------------------------
def test_head_labels(head):
    labels, hemi = head
    assert labels.GetPixelID() == sitk.sitkInt16 and hemi.GetPixelID() == sitk.sitkUInt8
    assert np.allclose(labels.GetSpacing(), 1.0) and np.allclose(labels.GetDirection(), np.eye(3).ravel())
    a = sitk.GetArrayViewFromImage(labels)
    present = set(np.unique(a).tolist())
    assert {int(t) for t in Tissue if t < 20} <= present
    h = sitk.GetArrayViewFromImage(hemi)
    bm = anatomy.brain_mask(a)
    # about 1.2-1.9 L of brain, split evenly; LPS +x is the patient's left
    vol_ml = bm.sum() / 1000
    assert 1100 < vol_ml < 2000
    left, right = (bm & (h == anatomy.LEFT)).sum(), (bm & (h == anatomy.RIGHT)).sum()
    assert abs(left - right) / (left + right) < 0.05
    g = Grid.from_sitk(labels)
    xs = g.index_to_lps(np.argwhere((h == anatomy.LEFT) & bm)[::500, ::-1].astype(float))[:, 0]
    assert np.all(xs >= 0) and xs.mean() > 20


def test_lesions_in_brain_parenchyma_only(head, lesioned):
    labels, _ = head
    with_les, mask, lesions = lesioned
    before = sitk.GetArrayViewFromImage(labels)
    after = sitk.GetArrayViewFromImage(with_les)
    m = sitk.GetArrayViewFromImage(mask)
    assert [les["kind"] for les in lesions] == list(anatomy.LESION_KINDS)
    is_lesion = np.isin(after, [Tissue.LESION_CORE, Tissue.LESION_RIM])
    assert np.array_equal(is_lesion, m > 0)
    assert np.all(np.isin(before[is_lesion], anatomy.PARENCHYMA_LABELS))
    assert set(np.unique(m).tolist()) == set(range(len(lesions) + 1))
    # every lesion has a CSF-like core inside a rim; outside the lesions nothing left the brain
    assert (after == Tissue.LESION_CORE).any() and (after == Tissue.LESION_RIM).any()
    changed = (before != after) & ~is_lesion
    assert np.all(after[changed] == Tissue.CSF)  # ex-vacuo ventricle enlargement only
    assert np.all(np.isin(before[changed], (Tissue.WM, Tissue.DEEP_GM)))
    g = Grid.from_sitk(labels)
    for les in lesions:
        n = int((m == les["index"]).sum())
        assert les["volume_ml"] == pytest.approx(n / 1000, abs=1e-3)
        assert les["volume_ml"] >= les["core_volume_ml"] > 0
        x = les["centroid_lps_mm"][0]
        if abs(x) > 5:
            assert (x > 0) == (les["hemisphere"] == "left")
        assert g.same_as(Grid.from_sitk(mask))
    terr = next(les for les in lesions if les["kind"] == "territorial")
    lac = next(les for les in lesions if les["kind"] == "lacunar")
    assert terr["volume_ml"] > 2 and lac["volume_ml"] < 2.5


def test_lesion_sizes_vary_and_stay_in_brain(head):
    labels, hemi = head
    before = sitk.GetArrayViewFromImage(labels)
    vols = []
    for seed in range(4):
        out, mask, lesions = anatomy.insert_lesions(labels, np.random.default_rng(100 + seed), n_lesions=2,
                                                    hemispheres=hemi)
        m = sitk.GetArrayViewFromImage(mask) > 0
        assert np.all(np.isin(before[m], anatomy.PARENCHYMA_LABELS))
        vols += [les["volume_ml"] for les in lesions]
    assert min(vols) < 3 and max(vols) > 3


def test_contrasts(head, lesioned):
    small = _small(lesioned[0])
    lab = sitk.GetArrayViewFromImage(small)
    assert (lab == Tissue.WM).sum() > 1000

    def mean(img, t):
        return float(sitk.GetArrayViewFromImage(img)[lab == t].mean())

    t1 = anatomy.synthesize(small, "t1", np.random.default_rng(0))
    fl = anatomy.synthesize(small, "flair", np.random.default_rng(0))
    assert t1.GetPixelID() == sitk.sitkFloat32 and Grid.from_sitk(t1).same_as(Grid.from_sitk(small))
    assert mean(t1, Tissue.WM) > mean(t1, Tissue.GM) > mean(t1, Tissue.CSF)
    assert mean(fl, Tissue.GM) > mean(fl, Tissue.WM) > 3 * mean(fl, Tissue.CSF)
    if (lab == Tissue.LESION_CORE).any():
        assert mean(t1, Tissue.LESION_CORE) < 0.5 * mean(t1, Tissue.WM)
        assert mean(t1, Tissue.LESION_RIM) < mean(t1, Tissue.WM)
        assert mean(fl, Tissue.LESION_RIM) > 1.3 * mean(fl, Tissue.WM)
        assert mean(fl, Tissue.LESION_CORE) < 0.5 * mean(fl, Tissue.WM)
    r = anatomy.synthesize(small, "t1", np.random.default_rng(1), randomize=True)
    ra = sitk.GetArrayViewFromImage(r)
    assert np.all(np.isfinite(ra)) and ra.min() >= 0
    assert not np.allclose(ra, sitk.GetArrayViewFromImage(t1))
    with pytest.raises(ValueError):
        anatomy.synthesize(small, "dwi", np.random.default_rng(0))


def test_resample_slice_profile():
    # a 1 mm image with one bright axial plane, sampled with 5 mm slices: the plane spreads
    # over the Gaussian slice profile and the signal is conserved
    a = np.zeros((60, 20, 20), np.float32)
    a[30] = 100.0
    img = sitk.GetImageFromArray(a)
    g = Grid((12, 20, 20), (1.0, 1.0, 5.0), np.eye(3), (0.0, 0.0, 0.0))
    v = anatomy.resample(img, g, sitk.sitkLinear, slice_thickness_mm=5.0)
    assert v.grid is g and v.data.shape == (12, 20, 20)
    prof = v.data[:, 10, 10]
    assert int(np.argmax(prof)) == 6 and prof[6] < 100 and prof[5] > 0
    assert prof.sum() * 5 == pytest.approx(100.0, rel=0.1)  # sampled Gaussian: ~6 % ripple
    nn = anatomy.resample(img, g, sitk.sitkNearestNeighbor, slice_thickness_mm=5.0)
    assert set(np.unique(nn.data)) <= {0.0, 100.0}


@pytest.mark.parametrize("orientation", list(anatomy.ORIENTATIONS))
def test_acquisition_grids(head, orientation):
    labels, _ = head
    g = anatomy.acquisition_grid(labels, orientation, (0.9, 0.9, 4.0))
    d = g.direction
    assert np.allclose(d.T @ d, np.eye(3), atol=1e-9) and np.linalg.det(d) > 0
    assert g.shape[1] % 2 == 0 and g.shape[2] % 2 == 0
    read, phase, normal = d.T
    expect = {"axial": ((1, 0, 0), (0, 1, 0)), "sagittal": ((0, 1, 0), (0, 0, -1)),
              "coronal": ((1, 0, 0), (0, 0, -1)), "flipped": ((-1, 0, 0), (0, 1, 0))}
    if orientation in expect:
        assert np.allclose(read, expect[orientation][0]) and np.allclose(phase, expect[orientation][1])
    else:  # oblique: tilted about two axes, still near-axial
        assert 0.85 < normal[2] < 0.99 and abs(normal[0]) > 0.1 and abs(normal[1]) > 0.1
    if orientation == "flipped":
        assert np.allclose(normal, (0, 0, -1))
    # the whole brain lies inside the field of view
    src = Grid.from_sitk(labels)
    pts = src.index_to_lps(np.argwhere(anatomy.brain_mask(sitk.GetArrayViewFromImage(labels)))[::97, ::-1]
                           .astype(float))
    idx = g.lps_to_index(pts)
    assert np.all(idx > -0.5) and np.all(idx < np.array(g.shape[::-1]) - 0.5)
    jittered = anatomy.acquisition_grid(labels, orientation, (0.9, 0.9, 4.0), np.random.default_rng(0))
    assert not np.allclose(jittered.direction, d)


def test_cli_prints_every_file(study):
    out, printed = study
    names = ["t1.h5", "t1_lesion_mask.nii.gz", "t1_brain_mask.nii.gz", "flair.h5",
             "flair_lesion_mask.nii.gz", "flair_brain_mask.nii.gz", "lesions.json"]
    assert [Path(p).name for p in printed] == names
    assert all(Path(p).is_file() for p in printed)
    doc = json.loads((out / "lesions.json").read_text())
    assert doc["seed"] == SEED and [les["kind"] for les in doc["lesions"]] == KINDS.split(",")
    assert doc["series"]["t1"]["protocol_name"] == "t1_mprage_sag_p2_iso"
    assert doc["series"]["flair"]["protocol_name"] == "t2_tirm_tra_dark-fluid"


def _read_series(path: Path):
    s = mrdfile.read(path)
    return s, assemble_series(s.images), mrdfile.parse_header(s.header_xml)


def test_files_assemble_onto_mask_grids(study):
    out, _ = study
    uids = set()
    vols = {}
    for name, index, n_slices_min in (("t1", 1, 100), ("flair", 2, 25)):
        s, vol, hdr = _read_series(out / f"{name}.h5")
        vols[name] = vol
        assert len(s.images) == vol.grid.shape[0] >= n_slices_min  # 2D slices
        assert all(im.image_series_index == index for im in s.images)
        assert s.images[0].data.dtype == np.uint16
        for m in ("lesion", "brain"):
            mimg = sitk.ReadImage(str(out / f"{name}_{m}_mask.nii.gz"))
            assert Grid.from_sitk(mimg).same_as(vol.grid), (name, m)
        uids.add((hdr.studyInformation.studyInstanceUID, hdr.measurementInformation.frameOfReferenceUID))
        sp = hdr.sequenceParameters
        if name == "t1":
            assert sp.TI[0] == pytest.approx(900) and sp.TR[0] == pytest.approx(2300)
            assert np.allclose(vol.grid.spacing, 1.0)
        else:
            assert sp.TI[0] == pytest.approx(2500) and sp.TR[0] == pytest.approx(9000)
            assert np.allclose(vol.grid.spacing, (0.9, 0.9, 4.0), atol=1e-4)
    assert len(uids) == 1
    study_uid, for_uid = uids.pop()
    assert study_uid and for_uid and study_uid != for_uid
    # realistic range, and the lesions are visible: dark on T1-w, bright rim on FLAIR
    for name, vol in vols.items():
        les = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{name}_lesion_mask.nii.gz"))) > 0
        brain = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{name}_brain_mask.nii.gz"))) > 0
        assert les.sum() > 50 and np.all(brain[les])
        assert 800 < np.percentile(vol.data[brain], 99) < 4000
        if name == "t1":
            assert np.median(vol.data[les]) < 0.6 * np.median(vol.data[brain])
        else:
            assert np.percentile(vol.data[les], 98) > np.percentile(vol.data[brain & ~les], 90)


def test_same_seed_same_volumes(study):
    out, _ = study
    again = phantom.make_study("mni", SEED, kinds=KINDS.split(","), series=("t1",))
    assert list(again["series"]) == ["t1"]
    for name, s in again["series"].items():
        _, vol, _ = _read_series(out / f"{name}.h5")
        assert vol.grid.same_as(s["volume"].grid)
        assert np.array_equal(vol.data, s["volume"].data)
        for m in ("lesion", "brain"):
            disk = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{name}_{m}_mask.nii.gz")))
            assert np.array_equal(disk, s[f"{m}_mask"])
    doc = json.loads((out / "lesions.json").read_text())
    assert doc["lesions"] == json.loads(json.dumps(again["lesions"]))
    # and the library functions themselves are reproducible
    a = anatomy.insert_lesions(again["labels"], np.random.default_rng(3), n_lesions=1)
    b = anatomy.insert_lesions(again["labels"], np.random.default_rng(3), n_lesions=1)
    assert np.array_equal(sitk.GetArrayViewFromImage(a[0]), sitk.GetArrayViewFromImage(b[0]))


def test_oblique_3d_study(tmp_path, head):
    study = phantom.make_study("mni", 2, n_lesions=1, kinds=["cortical"], orientation="oblique", t1_3d=True,
                               series=("t1",))
    written = phantom.write_study(study, tmp_path, seed=2, source="mni")
    assert [p.name for p in written] == ["t1.h5", "t1_lesion_mask.nii.gz", "t1_brain_mask.nii.gz", "lesions.json"]
    s, vol, hdr = _read_series(tmp_path / "t1.h5")
    assert len(s.images) == 1 and vol.is_3d and s.images[0].getHead().matrix_size[2] == vol.grid.shape[0] > 100
    normal = vol.grid.direction[:, 2]
    assert 0.85 < abs(normal[2]) < 0.99 and abs(normal[0]) > 0.1 and abs(normal[1]) > 0.1
    assert hdr.measurementInformation.protocolName == "t1_mprage_tra_p2_iso"
    for m in ("lesion", "brain"):
        mimg = sitk.ReadImage(str(tmp_path / f"t1_{m}_mask.nii.gz"))
        assert Grid.from_sitk(mimg).same_as(vol.grid)
        assert sitk.GetArrayViewFromImage(mimg).any()
    assert np.array_equal(vol.data, study["series"]["t1"]["volume"].data)


@needs_synthseg
def test_synthseg_head():
    labels = anatomy.load_head(str(SYNTHSEG_MAP))
    hemi = anatomy.load_hemispheres(str(SYNTHSEG_MAP))
    a = sitk.GetArrayViewFromImage(labels)
    assert np.allclose(labels.GetDirection(), np.eye(3).ravel())
    present = set(np.unique(a).tolist())
    assert present <= {int(t) for t in Tissue}
    for t in (Tissue.CSF, Tissue.GM, Tissue.WM, Tissue.DEEP_GM, Tissue.CEREBELLUM_GM, Tissue.BRAINSTEM,
              Tissue.EXTRA_CSF, Tissue.SKIN, Tissue.FAT, Tissue.SKULL, Tissue.EYES):
        assert int(t) in present, t.name
    h = sitk.GetArrayViewFromImage(hemi)
    bm = anatomy.brain_mask(a)
    assert 800 < bm.sum() / 1000 < 2200
    assert (bm & (h == anatomy.LEFT)).sum() > 0.4 * bm.sum() and (bm & (h == anatomy.RIGHT)).sum() > 0.4 * bm.sum()
    out, mask, lesions = anatomy.insert_lesions(labels, np.random.default_rng(0), kinds=["territorial", "lacunar"],
                                                hemispheres=hemi)
    m = sitk.GetArrayViewFromImage(mask) > 0
    assert len(lesions) == 2 and m.any()
    assert np.all(np.isin(a[m], anatomy.PARENCHYMA_LABELS))
    fs = np.array([2, 41, 3, 4, 10, 24, 7, 8, 16, 506, 511, 515, 999])
    assert anatomy.map_freesurfer_labels(fs).tolist() == [3, 3, 2, 1, 4, 8, 6, 5, 7, 13, 9, 11, 12]


@pytest.mark.parametrize("contrast", ["t1", "flair"])
def test_realistic_contrasts_keep_the_tissue_order(contrast):
    """T1-w: CSF < grey < white matter; FLAIR: CSF < white < grey matter, in every "realistic"
    draw (independent jitter had inverted grey and white matter in 6-9 % of draws)."""
    for seed in range(300):
        m = anatomy.contrast_parameters(contrast, np.random.default_rng(seed), "realistic")["means"]
        csf, gm, wm = (float(m[t]) for t in (anatomy.Tissue.CSF, anatomy.Tissue.GM, anatomy.Tissue.WM))
        if contrast == "t1":
            assert csf * 1.049 < gm and gm * 1.049 < wm, (seed, csf, gm, wm)
        else:
            assert csf * 1.049 < wm and wm * 1.049 < gm, (seed, csf, gm, wm)
