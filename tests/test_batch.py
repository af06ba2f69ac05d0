"""`openrecon-stroke batch`: a BIDS cohort on a real Dask LocalCluster.

Orchestration tests run the real, quick ``headmask`` pipeline on small NIfTI heads written here;
one slow test runs the default pipeline on one phantom subject. Faults are injected by wrapping
the real per-subject function (``run_job``): it fails once, always, or kills its own worker
process; the batch must retry, record and carry on.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

pytest.importorskip("distributed")
pytest.importorskip("bids")

import cloudpickle  # noqa: E402 - a dependency of distributed
from conftest import rotation  # noqa: E402

from openrecon_stroke.batch import bids as bidsmod  # noqa: E402
from openrecon_stroke.batch.engine import BatchSettings, SlurmSettings, run_batch  # noqa: E402
from openrecon_stroke.batch.figures import to_display  # noqa: E402
from openrecon_stroke.batch.subject import run_job  # noqa: E402
from openrecon_stroke.cli import main as cli_main  # noqa: E402
from openrecon_stroke.geometry import Grid  # noqa: E402
from openrecon_stroke.runtime import physical_cores  # noqa: E402

# the fault-injecting job functions below travel to the worker processes by value
cloudpickle.register_pickle_by_value(sys.modules[__name__])

HEADMASK = {"config": "headmask"}


# ---------------------------------------------------------------------------------------------
# a small cohort
# ---------------------------------------------------------------------------------------------
def textured_head(grid: Grid, seed: int) -> np.ndarray:
    """A sphere of 'tissue' (smooth texture, 300-700) in dark background, in LPS mm."""
    rng = np.random.default_rng(seed)
    nz, ny, nx = grid.shape
    idx = np.stack(np.meshgrid(np.arange(nx), np.arange(ny), np.arange(nz), indexing="xy"), -1)
    lps = grid.index_to_lps(idx.reshape(-1, 3)).reshape(ny, nx, nz, 3).transpose(2, 0, 1, 3)
    r = np.linalg.norm(lps, axis=-1)
    tissue = 500 + 200 * np.sin(lps[..., 0] / 6.0) * np.cos(lps[..., 1] / 7.0) + rng.normal(0, 20, r.shape)
    return np.where(r < 40.0, tissue, 5.0 + rng.normal(0, 1, r.shape)).astype(np.float32)


GRID_T1 = Grid((20, 40, 40), (2.5, 2.5, 5.0), np.eye(3), (-50.0, -50.0, -50.0))
GRID_FLAIR = Grid((16, 36, 36), (2.8, 2.8, 6.0), rotation(0, 0, 8), (-50.0, -50.0, -48.0))


def write_nifti(path: Path, grid: Grid, data: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(grid.to_sitk(data), str(path))
    return path


def make_cohort(root: Path, subjects=("01", "02", "03", "04"), session="1", flair=True, description=True) -> Path:
    if description:
        root.mkdir(parents=True, exist_ok=True)
        (root / "dataset_description.json").write_text(
            json.dumps({"Name": "tiny cohort", "BIDSVersion": "1.8.0", "DatasetDOI": "10.0000/tiny"})
        )
    for n, s in enumerate(subjects):
        anat = root / f"sub-{s}" / f"ses-{session}" / "anat"
        write_nifti(anat / f"sub-{s}_ses-{session}_T1w.nii.gz", GRID_T1, textured_head(GRID_T1, n))
        if flair:
            write_nifti(anat / f"sub-{s}_ses-{session}_FLAIR.nii.gz", GRID_FLAIR, textured_head(GRID_FLAIR, 100 + n))
    return root


def settings(bids_dir, out_dir, **kw) -> BatchSettings:
    kw.setdefault("raw_params", dict(HEADMASK))
    kw.setdefault("workers", 2)
    kw.setdefault("progress", False)
    return BatchSettings(bids_dir=Path(bids_dir), out_dir=Path(out_dir), **kw)


def read_tsv(path: Path) -> list[dict]:
    lines = path.read_text().splitlines()
    head = lines[0].split("\t")
    return [dict(zip(head, ln.split("\t"))) for ln in lines[1:]]


# ---------------------------------------------------------------------------------------------
# fault injection: wrappers around the real per-subject function (run on the workers)
# ---------------------------------------------------------------------------------------------
def faulty_job(job, out_dir, bids_dir, raw_params, attempt):
    """sub-01 fails at its first attempt, sub-02 always, sub-03 kills its worker process once;
    everything else is the real run_job. Marker files live in OUT_DIR/../faults."""
    faults = Path(out_dir).parent / "faults"
    faults.mkdir(exist_ok=True)
    with open(faults / "calls.txt", "a") as fh:
        fh.write(f"{job.id} {attempt} {os.getpid()}\n")
    if job.subject == "01" and not (faults / "01.failed-once").exists():
        (faults / "01.failed-once").write_text("")
        raise RuntimeError("injected transient failure")
    if job.subject == "02":
        raise RuntimeError(f"injected permanent failure (attempt {attempt})")
    if job.subject == "03" and not (faults / "03.killed").exists():
        (faults / "03.killed").write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return run_job(job, out_dir, bids_dir, raw_params, attempt)


def counting_job(job, out_dir, bids_dir, raw_params, attempt):
    with open(Path(out_dir).parent / "calls.txt", "a") as fh:
        fh.write(f"{job.id}\n")
    return run_job(job, out_dir, bids_dir, raw_params, attempt)


# ---------------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------------
def test_two_worker_processes_then_resume_does_no_work(tmp_path):
    bids_dir = make_cohort(tmp_path / "bids")
    out = tmp_path / "out"
    res = run_batch(settings(bids_dir, out), job_fn=counting_job)
    assert res.exit_code == 0 and not res.failed
    assert sorted(r["id"] for r in res.done) == [f"sub-0{i}_ses-1" for i in range(1, 5)]
    # two worker processes, neither of them this one, each capped at cores // 2 threads
    assert len(res.worker_setup) == 2
    pids = {w["pid"] for w in res.worker_setup.values()}
    assert len(pids) == 2 and os.getpid() not in pids
    assert {r["pid"] for r in res.done} == pids, "both workers should have processed subjects"
    assert all(w["threads"] == max(1, physical_cores() // 2) for w in res.worker_setup.values())
    for i in range(1, 5):
        anat = out / f"sub-0{i}" / "ses-1" / "anat"
        for mod in ("T1w", "FLAIR"):
            m = anat / f"sub-0{i}_ses-1_mod-{mod}_space-orig_desc-head_mask.nii.gz"
            assert m.is_file()
            grid = GRID_T1 if mod == "T1w" else GRID_FLAIR
            assert Grid.from_sitk(sitk.ReadImage(str(m))).same_as(grid)
            side = json.loads(m.with_name(m.name.replace(".nii.gz", ".json")).read_text())
            assert side["Sources"] == [f"bids:raw:sub-0{i}/ses-1/anat/sub-0{i}_ses-1_{mod}.nii.gz"]
        report = json.loads((anat / f"sub-0{i}_ses-1_report.json").read_text())
        assert report["stage_status"] == {"input_check": "ok", "head_mask": "ok"}
        page = (out / f"sub-0{i}_ses-1.html").read_text()
        # self-contained: every picture inline, nothing fetched from anywhere
        assert page.count('src="data:image/png;base64,') == 2 and not re.search(r'(src|href)="(?!data:)', page)
        assert (out / report["batch"]["thumbnail"]).is_file()
    index = (out / "index.html").read_text()
    assert all(f'href="sub-0{i}_ses-1.html"' in index for i in range(1, 5))
    assert not (out / ".work").exists() and not (out / "failures.tsv").exists()
    table = read_tsv(out / "lesions.tsv")
    assert [r["participant_id"] for r in table] == [f"sub-0{i}" for i in range(1, 5)]
    assert all(r["status"] == "ok" and r["session_id"] == "ses-1" and r["lesion_count"] == "n/a" for r in table)
    calls = (tmp_path / "calls.txt").read_text().split()
    assert sorted(calls) == sorted(r["id"] for r in res.done)

    # second run: nothing submitted, no cluster started, nothing rewritten
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("sub-*/ses-1/anat/*")}
    again = run_batch(settings(bids_dir, out), job_fn=counting_job)
    assert again.exit_code == 0 and again.submitted == 0 and again.startup_s == 0.0
    assert sorted(again.already_done) == sorted(r["id"] for r in res.done)
    assert (tmp_path / "calls.txt").read_text().split() == calls
    assert {p: p.stat().st_mtime_ns for p in out.glob("sub-*/ses-1/anat/*")} == stamps
    assert len(read_tsv(out / "lesions.tsv")) == 4


def test_faults_retry_record_and_survive_a_killed_worker(tmp_path):
    bids_dir = make_cohort(tmp_path / "bids", subjects=("01", "02", "03", "04"), flair=False)
    out = tmp_path / "out"
    res = run_batch(settings(bids_dir, out), job_fn=faulty_job)
    assert res.exit_code == 1
    done = {r["id"]: r for r in res.done}
    assert sorted(done) == ["sub-01_ses-1", "sub-03_ses-1", "sub-04_ses-1"]
    assert done["sub-01_ses-1"]["attempts"] == 2 and done["sub-04_ses-1"]["attempts"] == 1
    # sub-03 killed its worker; its second attempt ran in another (new or the other) process
    killed = int((tmp_path / "faults" / "03.killed").read_text())
    assert done["sub-03_ses-1"]["attempts"] == 2 and done["sub-03_ses-1"]["pid"] != killed
    (failed,) = res.failed
    assert failed["id"] == "sub-02_ses-1" and failed["attempts"] == 2
    assert "injected permanent failure (attempt 2)" in failed["error"]
    calls = [ln.split()[:2] for ln in (tmp_path / "faults" / "calls.txt").read_text().splitlines()]
    assert sorted(calls) == sorted(
        [
            ["sub-01_ses-1", "1"],
            ["sub-01_ses-1", "2"],
            ["sub-02_ses-1", "1"],
            ["sub-02_ses-1", "2"],
            ["sub-03_ses-1", "1"],
            ["sub-03_ses-1", "2"],
            ["sub-04_ses-1", "1"],
        ]
    )
    fail_rows = read_tsv(out / "failures.tsv")
    assert [(r["participant_id"], r["attempts"], r["log"]) for r in fail_rows] == [
        ("sub-02", "2", "logs/sub-02_ses-1.log")
    ]
    log_text = (out / "logs" / "sub-02_ses-1.log").read_text()
    assert "attempt 1 failed: RuntimeError: injected permanent failure (attempt 1)" in log_text
    assert "attempt 2 failed: RuntimeError: injected permanent failure (attempt 2)" in log_text
    assert "attempt 1 failed: its worker died" in (out / "logs" / "sub-03_ses-1.log").read_text()
    status = {r["participant_id"]: r["status"] for r in read_tsv(out / "lesions.tsv")}
    assert status == {"sub-01": "ok", "sub-02": "failed", "sub-03": "ok", "sub-04": "ok"}
    assert not (out / "sub-02").exists(), "a failed subject leaves no partial folder"

    # a rerun submits only the failed subject
    (tmp_path / "faults" / "calls.txt").unlink()
    again = run_batch(settings(bids_dir, out), job_fn=faulty_job)
    assert again.submitted == 2 and sorted(again.already_done) == sorted(done)
    assert {ln.split()[0] for ln in (tmp_path / "faults" / "calls.txt").read_text().splitlines()} == {"sub-02_ses-1"}


def test_bad_inputs_are_named_and_the_batch_goes_on(tmp_path, capsys):
    bids_dir = make_cohort(tmp_path / "bids", subjects=("01", "02"), flair=False, description=False)
    corrupt = bids_dir / "sub-03" / "ses-1" / "anat" / "sub-03_ses-1_T1w.nii.gz"
    corrupt.parent.mkdir(parents=True)
    corrupt.write_bytes(b"\x1f\x8b this is not a NIfTI file")
    (bids_dir / "sub-04" / "ses-1" / "anat").mkdir(parents=True)
    (bids_dir / "sub-04" / "ses-1" / "anat" / "sub-04_ses-1_T2w.json").write_text("{}")
    out = tmp_path / "out"
    rc = cli_main(
        [
            "batch",
            str(bids_dir),
            str(out),
            "participant",
            "--participant-label",
            "01",
            "sub-03",
            "04",
            "zz",
            "--workers",
            "1",
            "--param",
            "config=headmask",
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1
    assert f"{bids_dir / 'dataset_description.json'} is missing" in err
    failures = {r["participant_id"]: r for r in read_tsv(out / "failures.tsv")}
    assert set(failures) == {"sub-03", "sub-04", "sub-zz"}
    assert str(corrupt) in failures["sub-03"]["error"] and failures["sub-03"]["attempts"] == "1"
    log_text = (out / failures["sub-03"]["log"]).read_text()
    assert "Traceback" in log_text and "InputError" in log_text and str(corrupt) in log_text
    assert "no usable image" in failures["sub-04"]["error"]
    assert str(bids_dir / "sub-04" / "ses-1" / "anat") in failures["sub-04"]["error"]
    assert "participant label 'zz'" in failures["sub-zz"]["error"] and "01, 02, 03, 04" in failures["sub-zz"]["error"]
    for sid in ("sub-03", "sub-04", "sub-zz"):
        assert sid in err
    assert (out / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_report.json").is_file()
    assert not (out / "sub-02").exists(), "sub-02 was not asked for"
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["SourceDatasets"] == [{"URL": bids_dir.resolve().as_uri()}]


def test_bids_discovery_and_derivative_names(tmp_path):
    root = tmp_path / "bids"
    root.mkdir()
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "x", "BIDSVersion": "1.8.0", "DatasetDOI": "10.0000/x"})
    )
    anat = root / "sub-r001s001" / "ses-1" / "anat"
    # ATLAS-style names (space- entity) and two runs of FLAIR
    t1 = write_nifti(anat / "sub-r001s001_ses-1_space-MNI152NLin2009aSym_T1w.nii.gz", GRID_T1, np.zeros(GRID_T1.shape))
    write_nifti(anat / "sub-r001s001_ses-1_acq-tra_run-2_FLAIR.nii.gz", GRID_FLAIR, np.zeros(GRID_FLAIR.shape))
    f1 = write_nifti(anat / "sub-r001s001_ses-1_acq-tra_run-1_FLAIR.nii.gz", GRID_FLAIR, np.zeros(GRID_FLAIR.shape))
    write_nifti(
        anat / "sub-r001s001_ses-1_space-MNI152NLin2009aSym_label-L_desc-T1lesion_mask.nii.gz",
        GRID_T1,
        np.zeros(GRID_T1.shape),
    )
    write_nifti(root / "sub-02" / "anat" / "sub-02_T1w.nii", GRID_T1, np.zeros(GRID_T1.shape))
    jobs, problems, notes = bidsmod.find_jobs(root)
    assert not problems
    assert [j.id for j in jobs] == ["sub-02", "sub-r001s001_ses-1"]
    j = jobs[1]
    assert j.sources == {"t1": str(t1.resolve()), "flair": str(f1.resolve())}
    assert any("2 FLAIR images" in n and f1.name in n for n in notes)
    assert jobs[0].folder == Path("sub-02") and j.folder == Path("sub-r001s001/ses-1")
    assert (
        bidsmod.derivative_name(j, "t1", "brain_mask") == "sub-r001s001_ses-1_mod-T1w_space-orig_desc-brain_mask.nii.gz"
    )
    assert (
        bidsmod.derivative_name(j, "flair", "lesion_mask")
        == "sub-r001s001_ses-1_acq-tra_run-1_mod-FLAIR_space-orig_label-L_mask.nii.gz"
    )
    assert (
        bidsmod.derivative_name(j, "flair", "lesion_probability")
        == "sub-r001s001_ses-1_acq-tra_run-1_mod-FLAIR_space-orig_label-L_probseg.nii.gz"
    )
    assert (
        bidsmod.derivative_name(j, "t1", "anomaly_map")
        == "sub-r001s001_ses-1_mod-T1w_space-orig_desc-anomaly_map.nii.gz"
    )
    assert bidsmod.report_name(j) == "sub-r001s001_ses-1_report.json"
    assert (
        bidsmod.derivative_name(j, "flair", "n4_image", "image")
        == "sub-r001s001_ses-1_acq-tra_run-1_mod-FLAIR_space-orig_desc-n4image_FLAIR.nii.gz"
    )
    # sessions filter and labels with prefixes
    jobs, problems, notes = bidsmod.find_jobs(root, ["sub-r001s001", "02"], ["ses-2"])
    assert jobs == [] and not problems and len(notes) == 2
    desc = bidsmod.dataset_description(root)
    assert desc["DatasetType"] == "derivative"
    assert desc["GeneratedBy"][0]["Name"] == "openrecon-stroke" and desc["GeneratedBy"][0]["Version"]
    assert desc["SourceDatasets"] == [{"URL": root.resolve().as_uri(), "DOI": "10.0000/x", "Name": "x"}]
    assert desc["DatasetLinks"]["raw"] == root.resolve().as_uri()
    with pytest.raises(bidsmod.BidsError, match="does not exist"):
        bidsmod.find_jobs(tmp_path / "nope")


@pytest.mark.parametrize(
    "direction",
    [
        np.eye(3),
        np.array([[0, 1, 0], [0, 0, -1], [1, 0, 0]], float).T,
        rotation(10, 15, -5),
        np.diag([-1.0, -1.0, 1.0]),
    ],
)
def test_display_orientation_matches_simpleitk_dicomorient(direction):
    g = Grid((7, 9, 11), (1.0, 2.0, 3.0), direction, np.zeros(3))
    a = np.random.default_rng(0).random(g.shape).astype(np.float32)
    ref = sitk.DICOMOrient(g.to_sitk(a), "LPS")
    out, spacing = to_display(g, a)
    assert np.array_equal(out, sitk.GetArrayFromImage(ref)) and spacing == ref.GetSpacing()
    rgb = np.repeat(a[..., None], 3, axis=-1)
    assert np.array_equal(to_display(g, rgb)[0][..., 1], out)


def test_slurm_job_script_books_the_cores_for_one_single_threaded_worker(tmp_path):
    jq = pytest.importorskip("dask_jobqueue")
    s = SlurmSettings(queue="short", account="stroke", cores=4, memory="12GB", walltime="01:00:00", dashboard=":0")
    cluster = jq.SLURMCluster(**s.cluster_kwargs(tmp_path / "logs"))
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    for want in (
        "#SBATCH -p short",
        "#SBATCH -A stroke",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH -t 01:00:00",
        "--nthreads 1",
        sys.executable,
    ):
        assert want in script, want


# ---------------------------------------------------------------------------------------------
# the visual reports in a real browser
# ---------------------------------------------------------------------------------------------
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium (Debian: apt-get install chromium)")


def chromium(tmp_path: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Headless Chromium with a fresh profile, no network services."""
    profile = tmp_path / f"chromium-profile-{len(list(tmp_path.glob('chromium-profile-*')))}"
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def screenshot(tmp_path: Path, page: Path, height: int = 2400) -> np.ndarray:
    png = tmp_path / f"{page.stem}-{height}.png"
    r = chromium(tmp_path, f"--window-size=1200,{height}", f"--screenshot={png}", page.as_uri())
    assert png.is_file(), r.stderr[-2000:]
    return np.asarray(Image.open(png).convert("RGB")).astype(int)


def colour_count(img: np.ndarray, rgb, tol: int = 40) -> int:
    return int((np.abs(img - np.asarray(rgb)).max(axis=-1) <= tol).sum())


def mid_grey_count(img: np.ndarray) -> int:
    """Pixels of anatomy grey (not the page's near-white, nor text black)."""
    spread = img.max(axis=-1) - img.min(axis=-1)
    return int(((spread < 12) & (img.mean(axis=-1) > 60) & (img.mean(axis=-1) < 200)).sum())


@needs_chromium
def test_reports_render_in_chromium_with_their_images(tmp_path):
    bids_dir = make_cohort(tmp_path / "bids", subjects=("01", "02", "03"))
    out = tmp_path / "out"
    res = run_batch(settings(bids_dir, out))
    assert res.exit_code == 0
    page = out / "sub-02_ses-1.html"
    text = page.read_text()
    assert 'src="data:image/png;base64,' in text and "http" not in text.replace("http-equiv", "")
    shot = screenshot(tmp_path, page)
    green, grey = colour_count(shot, (0, 255, 0), 60), mid_grey_count(shot)
    assert green > 2000 and grey > 60000, (green, grey)
    # the same page without its pictures shows neither (so the check above can fail)
    bare = tmp_path / "bare.html"
    bare.write_text(re.sub(r'src="data:image/png;base64,[^"]*"', 'src=""', text))
    shot = screenshot(tmp_path, bare)
    assert colour_count(shot, (0, 255, 0), 60) == 0 and mid_grey_count(shot) < 20000
    # the index: a thumbnail per subject, links, and sorting done by its script in the browser
    index = out / "index.html"
    grey = mid_grey_count(screenshot(tmp_path, index, 900))
    bare = out / "bare-index.html"  # beside index.html, so that only the pictures differ
    bare.write_text(re.sub(r"<img [^>]*>", "", index.read_text()))
    assert grey - mid_grey_count(screenshot(tmp_path, bare, 900)) > 3 * 2000, "thumbnails not shown"
    times = {r["participant_id"]: float(r["time_s"]) for r in read_tsv(out / "lesions.tsv")}
    dom = chromium(tmp_path, "--dump-dom", index.as_uri() + "#sort=-time_s").stdout
    order = re.findall(r'<tr data-id="(sub-\d+)_ses-1"', dom)
    assert order == sorted(times, key=lambda s: -times[s]), (order, times)
    assert 'data-sorted="-time_s"' in dom
    for s in times:
        assert f'href="{s}_ses-1.html"' in dom


# ---------------------------------------------------------------------------------------------
# the real default pipeline on one phantom subject
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_default_pipeline_on_one_subject_writes_bids_derivatives(tmp_path, capsys):
    from openrecon_stroke.inputs import load_volume
    from simulator.__main__ import main as simulator_main

    study = tmp_path / "phantom"
    assert simulator_main(["phantom", "--out", str(study), "--seed", "5", "--lesions", "2"]) == 0
    bids_dir = tmp_path / "bids"
    (bids_dir / "sub-p1" / "anat").mkdir(parents=True)
    (bids_dir / "dataset_description.json").write_text(json.dumps({"Name": "phantom", "BIDSVersion": "1.8.0"}))
    grids = {}
    for c, suffix in (("t1", "T1w"), ("flair", "FLAIR")):
        vol = load_volume(study / f"{c}.h5")
        grids[suffix] = vol.grid
        sitk.WriteImage(vol.to_sitk(), str(bids_dir / "sub-p1" / "anat" / f"sub-p1_{suffix}.nii.gz"))
    out = tmp_path / "out"
    rc = cli_main(["batch", str(bids_dir), str(out), "participant", "--workers", "1", "--no-progress"])
    assert rc == 0, capsys.readouterr().err[-3000:]

    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["GeneratedBy"][0]["Name"] == "openrecon-stroke"
    assert desc["SourceDatasets"][0]["URL"] == bids_dir.resolve().as_uri()
    anat = out / "sub-p1" / "anat"
    report = json.loads((anat / "sub-p1_report.json").read_text())
    assert set(report["stage_status"].values()) == {"ok"}, report["stage_status"]
    assert report["batch"]["status"] == "ok" and report["batch"]["networks_load_s"] > 0
    assert report["findings"]["lesion_model"].startswith("lesion-voxel-fusion")
    thr = report["parameters"]["lesionthreshold"]
    for suffix, grid in grids.items():
        names = {
            k: anat / f"sub-p1_mod-{suffix}_space-orig_{k}.nii.gz"
            for k in ("desc-brain_mask", "label-L_mask", "label-L_probseg", "desc-anomaly_map")
        }
        images = {k: sitk.ReadImage(str(p)) for k, p in names.items()}
        for k, img in images.items():
            assert Grid.from_sitk(img).same_as(grid), k
            side = json.loads(names[k].with_name(names[k].name.replace(".nii.gz", ".json")).read_text())
            assert side["Sources"] == [f"bids:raw:sub-p1/anat/sub-p1_{suffix}.nii.gz"]
        brain = sitk.GetArrayFromImage(images["desc-brain_mask"]) > 0
        lesion = sitk.GetArrayFromImage(images["label-L_mask"]) > 0
        prob = sitk.GetArrayFromImage(images["label-L_probseg"])
        assert 900 < brain.sum() * grid.voxel_volume_mm3 / 1000 < 2600  # an adult brain, in mL
        assert prob.min() >= 0 and prob.max() <= 1 and not prob[~brain].any()
        assert lesion.any() and np.all(prob[lesion] >= thr - 1e-6)  # the mask is the thresholded probability
    table = read_tsv(out / "lesions.tsv")
    assert [(r["participant_id"], r["session_id"], r["status"]) for r in table] == [("sub-p1", "n/a", "ok")]
    assert int(table[0]["lesion_count"]) == report["findings"]["lesion_count"]
    assert float(table[0]["lesion_volume_ml"]) == pytest.approx(report["findings"]["lesion_volume_ml"], abs=1e-3)

    if CHROMIUM is None:
        return
    shot = screenshot(tmp_path, out / "sub-p1.html", 4200)
    # lesion outline yellow and brain mask outline green on the mosaics, the report page's red banner
    assert colour_count(shot, (255, 225, 0), 50) > 100
    assert colour_count(shot, (0, 255, 0), 60) > 500
    assert colour_count(shot, (170, 0, 0), 30) > 5000


def test_joins_an_existing_dask_cluster_and_leaves_it_running(tmp_path):
    from distributed import Client, LocalCluster

    bids_dir = make_cohort(tmp_path / "bids", subjects=("01", "02"), flair=False)
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        worker_pids = set(client.run(os.getpid).values())
        res = run_batch(settings(bids_dir, tmp_path / "out", scheduler=cluster.scheduler_address, workers=None))
        assert res.exit_code == 0 and len(res.done) == 2
        assert {r["pid"] for r in res.done} == worker_pids
        assert client.submit(sum, [1, 2]).result() == 3, "the cluster must still serve after the batch"
