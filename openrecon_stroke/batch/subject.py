"""One subject/session of a cohort, on a worker: the same code path as ``process``, BIDS names.

:func:`run_job` runs :func:`openrecon_stroke.offline.analyse` (load + pipeline, exactly what
``process`` runs), writes everything into a private temporary folder under ``OUTPUT_DIR/.work``
and only then renames it to ``sub-XX[/ses-YY]``: a subject's folder exists only when complete.
Its HTML page goes in first (``OUTPUT_DIR/sub-XX[_ses-YY].html``, itself written then renamed),
so a finished folder always has its page. Everything the job logs goes to
``OUTPUT_DIR/logs/sub-XX[_ses-YY].log`` (appended, one block per attempt).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..offline import analyse, derived_image
from ..outputs import report_dict
from ..stages.results import AnomalyResult, LesionResult
from . import bids, figures, html

log = logging.getLogger(__name__)

PACKAGE_LOGGER = "openrecon_stroke"
WORK = ".work"

#: What this process has done so far (a worker runs many jobs; networks load once, at its set-up).
PROCESS_STATE: dict = {"jobs": 0, "networks_load_s": None}


def is_done(out_dir: Path, job: bids.Job) -> bool:
    """True when ``job``'s folder is in place with its report (a finished subject)."""
    return (Path(out_dir) / job.folder / "anat" / bids.report_name(job)).is_file()


@contextmanager
def job_log(path: Path, job: bids.Job, attempt: int):
    """Send this thread's package log records to ``path`` while the job runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    me = threading.get_ident()
    handler.addFilter(lambda r: r.thread == me)
    logger = logging.getLogger(PACKAGE_LOGGER)
    old = logger.level
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        log.info(
            "=== %s attempt %d on %s (pid %d): %s",
            job.id,
            attempt,
            socket.gethostname(),
            os.getpid(),
            ", ".join(f"{c}={p}" for c, p in job.sources.items()),
        )
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)
        handler.close()


def _write_nifti(img: sitk.Image, path: Path, sidecar: dict) -> None:
    sitk.WriteImage(img, str(path), useCompression=True)
    path.with_name(path.name.replace(".nii.gz", ".json")).write_text(json.dumps(sidecar, indent=1) + "\n")


def write_session(study, job: bids.Job, bids_root: Path, folder: Path) -> tuple[list[str], dict]:
    """The BIDS derivatives (NIfTI + JSON sidecar) of a finished study into ``folder/anat``.

    Returns the written file names (relative to ``folder``) and the sources as BIDS URIs."""
    anat = folder / "anat"
    anat.mkdir(parents=True, exist_ok=True)
    written = []
    sources = {c: bids.bids_uri(p, bids_root) for c, p in job.sources.items()}
    for d in study.derived:
        if d.kind not in ("mask", "map", "image"):
            continue  # RGB overlay and report page go into the HTML page and figures/
        name = bids.derivative_name(job, d.reference, d.name, d.kind)
        side = {"Sources": [sources[d.reference]], "Description": d.comment or d.description}
        if d.name == "brain_mask":
            side["Type"] = "Brain"
        _write_nifti(derived_image(study, d), anat / name, side)
        written.append(f"anat/{name}")
    lesions = study.result(LesionResult)
    for c, prob in (lesions.probability if lesions is not None else {}).items():
        if c not in study.inputs:
            continue
        name = bids.derivative_name(job, c, "lesion_probability")
        _write_nifti(
            study.inputs[c].grid.to_sitk(np.asarray(prob, np.float32)),
            anat / name,
            {
                "Sources": [sources[c]],
                "Description": "stroke lesion probability (ensemble mean, 0-1)",
                "Threshold": float(study.params["lesionthreshold"]),
            },
        )
        written.append(f"anat/{name}")
    return written, sources


def _figures(study, job: bids.Job, folder: Path) -> tuple[list[tuple[str, bytes, str]], str | None]:
    """Pictures for the page (heading, PNG, caption) and the thumbnail's path in ``folder``."""
    from ..stages.report import anomaly_display, page_reference

    out: list[tuple[str, bytes, str]] = []
    thumb = None
    figs = folder / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    key = page_reference(study)
    for c in ([key] if key else []) + [c for c in study.inputs if c != key]:
        vol = study.inputs[c]
        label = bids.SUFFIX[c]
        brain = study.get("brain_mask", c) or study.get("head_mask", c)
        les, ano = study.get("lesion_mask", c), study.get("anomaly_map", c)
        thr, top = anomaly_display(study.result(AnomalyResult), ano)
        layers = figures.Layers(
            vol.grid,
            vol.data,
            None if les is None else les.data,
            None if ano is None else ano.data,
            thr,
            top,
            None if brain is None else brain.data,
        )
        if les is not None or ano is not None:
            shown = (["lesion red with a yellow outline"] if les is not None else []) + (
                [f"anomaly >= {thr:g} blue to white"] if ano is not None else []
            )
            out.append(
                (
                    f"Lesion and anomaly overlay ({label})",
                    figures.png(figures.overlay_mosaic(layers)),
                    "Axial slices, radiological view (patient's right on the left), inferior to superior; "
                    + "; ".join(shown)
                    + ".",
                )
            )
        if brain is not None:
            what = "Brain mask" if brain.name == "brain_mask" else "Head mask"
            out.append(
                (
                    f"{what} ({label})",
                    figures.png(figures.brain_mask_mosaic(layers)),
                    f"{what} outline in green on the {label} image, axial slices, radiological view.",
                )
            )
        if thumb is None:
            name = f"{job.id}_desc-thumb.png"
            (figs / name).write_bytes(figures.png(figures.thumbnail(layers)))
            thumb = f"figures/{name}"
    for d in study.derived:
        if d.kind == "page":
            png = figures.png(d.data[0])
            (figs / f"{job.id}_desc-report.png").write_bytes(png)
            out.append(("Report page", png, "The page the scanner receives as a series (research use only)."))
    return out, thumb


def summary(report: dict) -> dict:
    """One row of the cohort table from a session's report."""
    f = report.get("findings", {})
    b = report.get("batch", {})
    an = f.get("anomaly") if isinstance(f.get("anomaly"), dict) else {}
    return {
        "id": b.get("id"),
        "subject": b.get("subject"),
        "session": b.get("session"),
        "status": b.get("status", "ok"),
        "lesion_count": f.get("lesion_count"),
        "lesion_volume_ml": f.get("lesion_volume_ml"),
        "anomaly_load_ml": an.get("load_ml") if an else None,
        "time_s": b.get("time_s"),
        "cpu_s": b.get("cpu_s"),
        "warnings": len(report.get("warnings") or []),
        "thumbnail": b.get("thumbnail"),
        "pid": b.get("pid"),
        "host": b.get("host"),
        "jobs_in_process": b.get("jobs_in_process"),
        "networks_load_s": b.get("networks_load_s"),
    }


def _status(study) -> str:
    bad = [f"{k} {v}" for k, v in study.stage_status.items() if v in ("failed", "skipped")]
    return "ok" if not bad else "partial: " + ", ".join(bad)


def run_job(job: bids.Job, out_dir: str, bids_dir: str, raw_params: dict | None = None, attempt: int = 1) -> dict:
    """Process one subject/session and put its outputs in place; returns its cohort-table row.

    Raises whatever the pipeline raises (an :class:`~openrecon_stroke.inputs.InputError` names
    the file); nothing is left in ``out_dir`` but the log then."""
    out = Path(out_dir)
    bids_root = Path(bids_dir)
    PROCESS_STATE["jobs"] += 1
    with job_log(out / "logs" / f"{job.id}.log", job, attempt):
        t0, cpu0 = time.perf_counter(), time.process_time()
        started = datetime.now()
        tmp = out / WORK / f"{job.id}.{attempt}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        try:
            study, pipeline = analyse(job.sources.get("t1"), job.sources.get("flair"), raw_params)
            t_out = time.perf_counter()
            written, sources = write_session(study, job, bids_root, tmp)
            figs, thumb = _figures(study, job, tmp)
            report = report_dict(study, pipeline)
            report["batch"] = {
                "id": job.id,
                "subject": job.subject,
                "session": job.session,
                "status": _status(study),
                "sources": sources,
                "outputs": written,
                "attempt": attempt,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "jobs_in_process": PROCESS_STATE["jobs"],
                "networks_load_s": PROCESS_STATE["networks_load_s"],
                "started": started.isoformat(timespec="seconds"),
                "thumbnail": f"{job.folder.as_posix()}/{thumb}" if thumb else None,
            }
            report["batch"]["outputs_s"] = round(time.perf_counter() - t_out, 3)  # NIfTI, figures (page: after)
            report["batch"]["time_s"] = round(time.perf_counter() - t0, 3)
            report["batch"]["cpu_s"] = round(time.process_time() - cpu0, 3)  # all threads of the worker
            report["batch"]["finished"] = datetime.now().isoformat(timespec="seconds")
            (tmp / "anat" / bids.report_name(job)).write_text(json.dumps(report, indent=1) + "\n")
            page = out / f"{job.id}.html"
            page_tmp = tmp / f"{job.id}.html"
            page_tmp.write_text(html.subject_page(job.id, report, figs), encoding="utf-8")
            page_tmp.replace(page)
            _commit(tmp, out / job.folder)
            log.info(
                "%s done in %.1f s (%s): %s lesion(s), %s mL",
                job.id,
                report["batch"]["time_s"],
                report["batch"]["status"],
                report["findings"].get("lesion_count", "n/a"),
                report["findings"].get("lesion_volume_ml", "n/a"),
            )
            return summary(report)
        except BaseException:
            log.exception("%s attempt %d failed", job.id, attempt)
            raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _commit(tmp: Path, final: Path) -> None:
    """Rename the finished temporary folder into place (atomic on one file system)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(tmp, final)
    except OSError:
        if (final / "anat").is_dir():  # another attempt of the same subject finished first
            log.warning("%s was already complete (another attempt finished first); kept that one", final)
            return
        raise


def setup_worker(threads: int | None, pipeline: str) -> dict:
    """Once per worker process: cap the threads a study uses (ONNX Runtime, SimpleITK), keep no
    study memo (:mod:`openrecon_stroke.memo`) and let every stage of ``pipeline`` load its
    networks now, so that no subject pays for it. Returns what it did (pid, threads, seconds
    spent loading, the process's CPU seconds so far)."""
    from ..memo import MEMO_ENV
    from ..pipeline import warm_up
    from ..runtime import THREADS_ENV, physical_cores

    n = int(threads) if threads else physical_cores()
    os.environ[THREADS_ENV] = str(n)
    os.environ[MEMO_ENV] = "0"  # each subject is one study, processed at once: nothing comes back for it
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(n)
    pkg = logging.getLogger(PACKAGE_LOGGER)
    if not any(isinstance(h, logging.NullHandler) for h in pkg.handlers):
        pkg.addHandler(logging.NullHandler())  # no stray console output between jobs
    if PROCESS_STATE["networks_load_s"] is None:
        t0 = time.perf_counter()
        problems = warm_up(pipeline)
        PROCESS_STATE["networks_load_s"] = round(time.perf_counter() - t0, 3)
        for p in problems:  # each subject reports it again, with its context
            log.warning("could not load the networks on this worker: %s", p)
    return {
        "pid": os.getpid(),
        "threads": n,
        "networks_load_s": PROCESS_STATE["networks_load_s"],
        # the worker's CPU so far: interpreter start-up, imports, networks
        "process_cpu_s": round(time.process_time(), 3),
    }
