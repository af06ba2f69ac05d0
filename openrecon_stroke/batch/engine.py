"""The cohort run on Dask: where the workers come from, what is submitted, what happens on failure.

Workers:

* default: an embedded :class:`distributed.LocalCluster` of ``--workers`` processes with one
  thread each; each study may use ``cores // workers`` threads (ONNX Runtime, SimpleITK) so that
  the workers together fill the machine without oversubscribing it;
* ``--scheduler tcp://host:8786``: an existing Dask cluster (its workers must see BIDS_DIR and
  OUTPUT_DIR at the same paths, and have openrecon-stroke installed);
* ``--slurm``: workers submitted as SLURM jobs through dask-jobqueue (``pip install
  'openrecon-stroke[slurm]'``).

Every worker gets a plugin that caps its threads and loads the networks once (not once per
subject). A subject already complete in OUTPUT_DIR is not submitted again. A subject that fails
(an error, or its worker dies) is submitted once more; if that fails too it goes to
``failures.tsv`` with the error while the others go on. Input errors (an unreadable file) are not
retried: they would fail the same way. The embedded cluster's scheduler reports a dead worker's
subject at once (``allowed-failures`` 0) so that this one retry rule holds; the nanny restarts the
worker.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from . import bids
from .html import index_page
from .subject import WORK, is_done, run_job, setup_worker, summary

log = logging.getLogger(__name__)

#: Columns of ``lesions.tsv`` (BIDS TSV: tab-separated, ``n/a`` for missing values).
TABLE_COLUMNS = (
    "participant_id",
    "session_id",
    "lesion_count",
    "lesion_volume_ml",
    "anomaly_load_ml",
    "status",
    "time_s",
)
FAILURE_COLUMNS = ("participant_id", "session_id", "attempts", "error", "log")


@dataclass
class SlurmSettings:
    """A SLURM job per worker (dask-jobqueue ``SLURMCluster``): the job books ``cores`` CPUs for
    one single-threaded worker, whose subject then uses all of them. Queue and account left
    unset come from the user's dask-jobqueue configuration (``~/.config/dask/jobqueue.yaml``)."""

    queue: str | None = None
    account: str | None = None
    cores: int = 2
    memory: str = "16GB"
    walltime: str = "04:00:00"
    job_extra: list[str] = field(default_factory=list)
    dashboard: str = ":8787"  # the scheduler's dashboard/HTTP address on this machine

    def cluster_kwargs(self, log_dir: Path) -> dict:
        kw = dict(
            cores=1,
            processes=1,
            job_cpu=self.cores,
            memory=self.memory,
            walltime=self.walltime,
            python=sys.executable,
            log_directory=str(log_dir),
            job_extra_directives=list(self.job_extra),
            job_name="openrecon-stroke",
            scheduler_options={"dashboard_address": self.dashboard},
        )
        if self.queue:
            kw["queue"] = self.queue
        if self.account:
            kw["account"] = self.account
        return kw


@dataclass
class BatchSettings:
    bids_dir: Path
    out_dir: Path
    participant_labels: list[str] | None = None
    sessions: list[str] | None = None
    raw_params: dict = field(default_factory=dict)
    workers: int | None = None  # default: local = 1 per 2 physical cores (at least 1); slurm = 2 jobs
    scheduler: str | None = None
    slurm: SlurmSettings | None = None
    threads: int | None = None  # threads per study; default cores // workers (local)
    retries: int = 1
    progress: bool = True
    dashboard: str | None = None  # e.g. ":8787" (needs bokeh)


@dataclass
class BatchResult:
    done: list[dict] = field(default_factory=list)  # rows of subjects finished in this run
    failed: list[dict] = field(default_factory=list)  # id, subject, session, attempts, error
    already_done: list[str] = field(default_factory=list)  # ids skipped because complete
    submitted: int = 0  # tasks submitted (retries included)
    notes: list[str] = field(default_factory=list)
    startup_s: float = 0.0  # cluster start and worker set-up (network loading included)
    worker_setup: dict = field(default_factory=dict)  # worker address -> setup_worker's answer
    wall_s: float = 0.0

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


class WorkerSetup(WorkerPlugin):
    """Dask worker plugin: :func:`~openrecon_stroke.batch.subject.setup_worker` on every worker,
    including workers that join or restart later."""

    name = "openrecon-stroke-setup"

    def __init__(self, threads: int | None, pipeline: str):
        self.threads = threads
        self.pipeline = pipeline

    def setup(self, worker):
        from ..runtime import physical_cores

        threads = self.threads or max(1, physical_cores() // max(1, worker.state.nthreads))
        worker.openrecon_setup = setup_worker(threads, self.pipeline)


def _worker_info(dask_worker=None):
    return getattr(dask_worker, "openrecon_setup", None)


def default_workers() -> int:
    from ..runtime import physical_cores

    return max(1, physical_cores() // 2)


@contextmanager
def _client(settings: BatchSettings, n_workers: int):
    """A Dask client on the cluster the settings ask for; the cluster is closed afterwards
    unless it was an existing one."""
    import dask
    from distributed import Client, LocalCluster

    if settings.scheduler:
        log.info("joining the Dask cluster at %s", settings.scheduler)
        client = Client(settings.scheduler, timeout="30s")
        try:
            yield client
        finally:
            client.close()
        return
    if settings.slurm is not None:
        try:
            from dask_jobqueue import SLURMCluster
        except ImportError:
            raise RuntimeError("--slurm needs dask-jobqueue: pip install 'openrecon-stroke[slurm]'") from None
        cluster: Any = SLURMCluster(**settings.slurm.cluster_kwargs(settings.out_dir / "logs" / "slurm"))
        cluster.scale(jobs=n_workers)
        log.info("submitted %d SLURM job(s) for workers; job script:\n%s", n_workers, cluster.job_script())
    else:
        with dask.config.set(
            {"distributed.scheduler.allowed-failures": 0, "distributed.scheduler.worker-saturation": 1.0}
        ):
            cluster = LocalCluster(
                n_workers=n_workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=settings.dashboard or ":0",
                silence_logs=logging.WARNING,
            )
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def _is_input_error(e: BaseException) -> bool:
    from ..inputs import InputError

    return isinstance(e, (InputError, bids.BidsError, FileNotFoundError))


def _describe(e: BaseException) -> str:
    from distributed import KilledWorker

    if isinstance(e, KilledWorker):
        return "its worker died while processing it (crashed, killed, or out of memory); the worker was replaced"
    text = str(e).strip().replace("\n", " ").replace("\t", " ")
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def run_batch(settings: BatchSettings, job_fn: Callable = run_job) -> BatchResult:
    """Run the cohort; see the module docstring. ``job_fn(job, out_dir, bids_dir, raw_params,
    attempt)`` runs one subject on a worker (default :func:`~openrecon_stroke.batch.subject.run_job`)."""
    t_start = time.perf_counter()
    res = BatchResult()
    out = Path(settings.out_dir).resolve()
    root = Path(settings.bids_dir).resolve()
    jobs, problems, notes = bids.find_jobs(root, settings.participant_labels, settings.sessions)
    res.notes = notes
    for n in notes:
        log.warning(n)
    bids.write_dataset_description(out, root)
    shutil.rmtree(out / WORK, ignore_errors=True)  # what an interrupted earlier run left
    for p in problems:
        log.error("%s: %s", p.id, p.error)
        res.failed.append({"id": p.id, "subject": p.subject, "session": p.session, "attempts": 0, "error": p.error})
    todo = []
    for job in jobs:
        if is_done(out, job):
            res.already_done.append(job.id)
        else:
            todo.append(job)
    if res.already_done:
        log.info("%d subject/session(s) already complete in %s: not submitted again", len(res.already_done), out)
    try:
        if todo:
            _run(settings, todo, out, root, res, job_fn)
    finally:  # also after Ctrl-C: the tables show what finished
        shutil.rmtree(out / WORK, ignore_errors=True)
        write_tables(out, res)
        res.wall_s = time.perf_counter() - t_start
    return res


def _run(settings: BatchSettings, todo: list[bids.Job], out: Path, root: Path, res: BatchResult, job_fn) -> None:
    from distributed import as_completed

    from ..params import coerce
    from ..pipeline import resolve_pipeline_name

    n_workers = settings.workers or (2 if settings.slurm is not None else default_workers())
    n_workers = max(1, min(n_workers, len(todo))) if not settings.scheduler else n_workers
    pipeline = resolve_pipeline_name(coerce(settings.raw_params)["config"])[0]
    threads = settings.threads
    if threads is None and settings.slurm is not None:
        threads = settings.slurm.cores
    elif threads is None and not settings.scheduler:
        from ..runtime import physical_cores

        threads = max(1, physical_cores() // n_workers)
    t0 = time.perf_counter()
    with _client(settings, n_workers) as client:
        client.register_plugin(WorkerSetup(threads, pipeline))
        res.worker_setup = client.run(_worker_info) if client.scheduler_info().get("workers") else {}
        res.startup_s = time.perf_counter() - t0
        loads = [w["networks_load_s"] for w in res.worker_setup.values() if w and w.get("networks_load_s") is not None]
        log.info(
            "%d worker(s) ready in %.1f s (threads per subject: %s; pipeline %s, networks loaded once per "
            "worker in %s s)",
            len(res.worker_setup),
            res.startup_s,
            threads or "per worker",
            pipeline,
            f"{max(loads):.1f}" if loads else "?",
        )
        pending: dict = {}

        def submit(job: bids.Job, attempt: int):
            fut = client.submit(
                job_fn,
                job,
                str(out),
                str(root),
                dict(settings.raw_params),
                attempt,
                key=f"{job.id}-attempt{attempt}-{os.urandom(4).hex()}",
                pure=False,
            )
            pending[fut] = (job, attempt)
            res.submitted += 1
            return fut

        queue = as_completed([submit(j, 1) for j in todo])
        bar = _progress(len(todo), settings.progress)
        t_run = time.perf_counter()
        for fut in queue:
            job, attempt = pending.pop(fut)
            try:
                row = fut.result()
            except BaseException as e:  # noqa: BLE001 - every failure is recorded, none stops the batch
                if isinstance(e, KeyboardInterrupt):
                    raise
                err = _describe(e)
                logfile = f"logs/{job.id}.log"
                _note(out / logfile, f"attempt {attempt} failed: {err}")
                if attempt <= settings.retries and not _is_input_error(e):
                    log.warning("%s attempt %d failed (%s); retrying (log: %s)", job.id, attempt, err, logfile)
                    queue.add(submit(job, attempt + 1))
                    continue
                log.error("%s failed after %d attempt(s): %s (log: %s)", job.id, attempt, err, logfile)
                res.failed.append(
                    {"id": job.id, "subject": job.subject, "session": job.session, "attempts": attempt, "error": err}
                )
            else:
                row["attempts"] = attempt
                res.done.append(row)
                log.info(
                    "%s done in %.1f s (attempt %d, worker pid %s): %s lesion(s), %s mL, status %s",
                    job.id,
                    row.get("time_s") or 0,
                    attempt,
                    row.get("pid"),
                    _tsv_value(row.get("lesion_count")),
                    _tsv_value(row.get("lesion_volume_ml")),
                    row.get("status"),
                )
            _tick(bar, len(res.done), len([f for f in res.failed if f["attempts"]]), len(todo), t_run)
        if bar is not None:
            bar.close()


def _note(path: Path, text: str) -> None:
    """Append what the driver saw (a failed attempt, a dead worker) to a subject's log."""
    from datetime import datetime

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(f"{datetime.now():%Y-%m-%d %H:%M:%S} BATCH {text}\n")
    except OSError as e:
        log.warning("could not write %s (%s)", path, e)


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    bar = tqdm(
        total=total,
        unit="subject",
        desc="cohort",
        file=sys.stderr,
        mininterval=0.5,
        bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}]{postfix}",
    )
    bar.set_postfix_str(f"done 0, failed 0, remaining {total}")
    return bar


def _tick(bar, done: int, failed: int, total: int, t_run: float) -> None:
    remaining = total - done - failed
    if bar is not None:
        bar.set_postfix_str(f"done {done}, failed {failed}, remaining {remaining}", refresh=False)
        bar.update(1)
    else:
        rate = (done + failed) / max(time.perf_counter() - t_run, 1e-6)
        eta = remaining / rate if rate > 0 else math.inf
        log.info(
            "progress: done %d, failed %d, remaining %d, about %s left",
            done,
            failed,
            remaining,
            "?" if not math.isfinite(eta) else f"{eta / 60:.1f} min",
        )


# ---------------------------------------------------------------------------------------------
# cohort tables and index
# ---------------------------------------------------------------------------------------------
def _tsv_value(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, float):
        return f"{v:.3f}".rstrip("0").rstrip(".") if v != int(v) else str(int(v))
    return str(v).replace("\t", " ").replace("\n", " ")


def _write_tsv(path: Path, columns, rows) -> None:
    tmp = path.with_suffix(".tsv.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        w.writerow(columns)
        for r in rows:
            w.writerow([_tsv_value(r.get(c)) for c in columns])
    tmp.replace(path)


def collect_reports(out_dir: Path) -> list[dict]:
    """Cohort-table rows of every finished subject/session in ``out_dir`` (this run's and earlier)."""
    import json

    rows = []
    for p in sorted(Path(out_dir).glob("sub-*/**/anat/*_report.json")):
        try:
            rows.append(summary(json.loads(p.read_text())))
        except (OSError, ValueError) as e:
            log.warning("%s could not be read (%s); left out of the cohort table", p, e)
    return rows


def write_tables(out: Path, res: BatchResult) -> None:
    """``lesions.tsv`` (every finished subject in OUTPUT_DIR and this run's failures),
    ``failures.tsv`` (this run's failures; removed when there are none) and ``index.html``."""
    rows = collect_reports(out)
    done_ids = {r["id"] for r in rows}
    failed = [f for f in res.failed if f["id"] not in done_ids]
    table = [
        dict(r, participant_id=f"sub-{r['subject']}", session_id=f"ses-{r['session']}" if r.get("session") else None)
        for r in rows
    ]
    table += [
        {
            "participant_id": f"sub-{f['subject']}",
            "session_id": f"ses-{f['session']}" if f.get("session") else None,
            "status": "failed",
            "id": f["id"],
        }
        for f in failed
    ]
    table.sort(key=lambda r: r["id"])
    _write_tsv(out / "lesions.tsv", TABLE_COLUMNS, table)
    fpath = out / "failures.tsv"
    if failed:
        _write_tsv(
            fpath,
            FAILURE_COLUMNS,
            [
                dict(
                    f,
                    participant_id=f"sub-{f['subject']}",
                    session_id=f"ses-{f['session']}" if f.get("session") else None,
                    log=f"logs/{f['id']}.log",
                )
                for f in failed
            ],
        )
    elif fpath.exists():
        fpath.unlink()
    index = [dict(r) for r in rows] + [{"id": f["id"], "status": "failed", "error": f["error"]} for f in failed]
    index.sort(key=lambda r: r["id"])
    tmp = out / "index.html.tmp"
    tmp.write_text(index_page(index, title=f"Cohort report: {out.name}"), encoding="utf-8")
    tmp.replace(out / "index.html")
