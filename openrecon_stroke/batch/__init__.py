"""``openrecon-stroke batch``: a whole BIDS cohort, as a BIDS App, on Dask.

``openrecon-stroke batch BIDS_DIR OUTPUT_DIR participant [--participant-label 01 02 ...]
[--session ...] [--workers N] [--scheduler ADDRESS | --slurm] [--param key=value ...]``

Modules: :mod:`.bids` (what the cohort holds, what outputs are called), :mod:`.subject` (one
subject on a worker: the same code path as ``process``), :mod:`.engine` (Dask, retries, cohort
tables), :mod:`.figures` and :mod:`.html` (the visual reports). Importing this package needs only
the standard library: Dask and pybids (the ``batch`` extra) load when a batch runs, so the
scanner image does not need them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bids_dir", metavar="BIDS_DIR", help="the BIDS dataset (read-only)")
    p.add_argument("output_dir", metavar="OUTPUT_DIR", help="where the BIDS derivatives go (created)")
    p.add_argument(
        "analysis_level",
        metavar="participant",
        choices=["participant"],
        help="BIDS-App analysis level: participant (the cohort tables are made as it runs)",
    )
    p.add_argument(
        "--participant-label",
        "--participant_label",
        nargs="+",
        metavar="LABEL",
        help="subjects to process (01 or sub-01); default all",
    )
    p.add_argument(
        "--session", "--session-label", nargs="+", metavar="LABEL", help="sessions to process (1 or ses-1); default all"
    )
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="pipeline parameter, as for process (e.g. lesionthreshold=0.3); repeatable",
    )
    w = p.add_argument_group("where it runs (default: this machine)")
    w.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="worker processes (local: default one per 2 cores; --slurm: SLURM jobs, default 2)",
    )
    w.add_argument(
        "--threads", type=int, metavar="N", help="threads per subject (default: cores / workers on this machine)"
    )
    w.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="join an existing Dask cluster, e.g. tcp://host:8786 (workers need the same paths)",
    )
    w.add_argument("--slurm", action="store_true", help="start workers as SLURM jobs (needs dask-jobqueue)")
    w.add_argument("--slurm-queue", metavar="PARTITION")
    w.add_argument("--slurm-account", metavar="ACCOUNT")
    w.add_argument("--slurm-cores", type=int, default=2, metavar="N", help="cores per SLURM job (default 2)")
    w.add_argument("--slurm-memory", default="16GB", metavar="SIZE", help="memory per SLURM job (default 16GB)")
    w.add_argument("--slurm-walltime", default="04:00:00", metavar="HH:MM:SS")
    w.add_argument("--dashboard", metavar="ADDRESS", help="serve the Dask dashboard of the local cluster, e.g. :8787")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (a log line per subject instead)")


def run(args) -> int:
    """The ``batch`` command: exit 0 when every subject finished, 1 when some failed, 2 when the
    batch could not start."""
    from ..params import parse_cli_params

    try:
        from .bids import BidsError
        from .engine import BatchSettings, SlurmSettings, run_batch
    except ImportError as e:
        print(
            f"error: the batch command needs Dask and pybids ({e}); install them with "
            "pip install 'openrecon-stroke[batch]'",
            file=sys.stderr,
        )
        return 2
    if args.scheduler and args.slurm:
        print("error: give either --scheduler or --slurm, not both", file=sys.stderr)
        return 2
    if args.workers is not None and args.workers < 1:
        print("error: --workers must be at least 1", file=sys.stderr)
        return 2
    slurm = None
    if args.slurm:
        slurm = SlurmSettings(
            queue=args.slurm_queue,
            account=args.slurm_account,
            cores=args.slurm_cores,
            memory=args.slurm_memory,
            walltime=args.slurm_walltime,
        )
    settings = BatchSettings(
        bids_dir=Path(args.bids_dir),
        out_dir=Path(args.output_dir),
        participant_labels=args.participant_label,
        sessions=args.session,
        raw_params=parse_cli_params(args.param),
        workers=args.workers,
        threads=args.threads,
        scheduler=args.scheduler,
        slurm=slurm,
        progress=not args.no_progress,
        dashboard=args.dashboard,
    )
    for name in ("distributed", "bids", "bidsschematools", "tornado"):
        if logging.getLogger(name).getEffectiveLevel() < logging.WARNING:
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        if settings.progress:
            from tqdm.contrib.logging import logging_redirect_tqdm

            with logging_redirect_tqdm():
                res = run_batch(settings)
        else:
            res = run_batch(settings)
    except BidsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.output_dir)
    for n in res.notes:
        print(f"note: {n}", file=sys.stderr)
    print(
        f"{len(res.done)} subject/session(s) processed, {len(res.already_done)} already complete, "
        f"{len(res.failed)} failed; outputs in {out} (cohort table lesions.tsv, report index.html)"
    )
    if res.failed:
        print(f"FAILED ({len(res.failed)}; details in {out / 'failures.tsv'}):", file=sys.stderr)
        for f in res.failed:
            print(f"  {f['id']}: {f['error']}", file=sys.stderr)
    return res.exit_code
