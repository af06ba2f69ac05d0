"""BIDS in, BIDS derivatives out: which images a cohort holds, and what the outputs are called.

Input: a BIDS dataset read with pybids (``validate=False``: ATLAS-style names carry a ``space-``
entity the validator rejects). Per subject and session, one ``T1w`` and one ``FLAIR`` NIfTI under
``anat/`` (the first by run when there are several, with a warning). A session with both runs
fused, exactly like ``process --t1 --flair``.

Output names keep the source image's entities, say which image they were computed on with
``mod-<T1w|FLAIR>`` (the BIDS entity for "the modality this mask belongs to") and sit on that
image's own voxel grid (``space-orig``)::

    sub-01/ses-1/anat/sub-01_ses-1_mod-FLAIR_space-orig_desc-brain_mask.nii.gz
    sub-01/ses-1/anat/sub-01_ses-1_mod-FLAIR_space-orig_label-L_mask.nii.gz      (lesion, 0/1)
    sub-01/ses-1/anat/sub-01_ses-1_mod-FLAIR_space-orig_label-L_probseg.nii.gz   (lesion probability)
    sub-01/ses-1/anat/sub-01_ses-1_mod-FLAIR_space-orig_desc-anomaly_map.nii.gz  (1 = healthy threshold)
    sub-01/ses-1/anat/sub-01_ses-1_report.json                                    (the session's report)

Each NIfTI has a JSON sidecar whose ``Sources`` is a BIDS URI (``bids:raw:...``) of the image it
was computed from; ``dataset_description.json`` links ``raw`` to the input dataset.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from .. import APP_NAME, __version__

log = logging.getLogger(__name__)

#: BIDS suffix of each contrast the pipeline reads, and back.
SUFFIX = {"t1": "T1w", "flair": "FLAIR"}
CONTRAST = {v: k for k, v in SUFFIX.items()}
NIFTI_EXTENSIONS = (".nii", ".nii.gz")
BIDS_VERSION = "1.10.0"

#: Source entities kept in derivative names, in BIDS order (``space`` is replaced by ``orig``).
_KEEP = ("subject", "session", "acquisition", "ceagent", "reconstruction", "run", "echo", "part")
_SHORT = {
    "subject": "sub",
    "session": "ses",
    "acquisition": "acq",
    "ceagent": "ce",
    "reconstruction": "rec",
    "run": "run",
    "echo": "echo",
    "part": "part",
}

#: Derived series (by pipeline name) -> the entities and suffix of their BIDS file.
DERIVATIVES = {
    "brain_mask": ("desc-brain", "mask"),
    "lesion_mask": ("label-L", "mask"),
    "lesion_probability": ("label-L", "probseg"),
    "anomaly_map": ("desc-anomaly", "map"),
    "head_mask": ("desc-head", "mask"),
}


class BidsError(ValueError):
    """The BIDS folder cannot be used (the message says why and what to do)."""


@dataclass(frozen=True)
class Job:
    """One unit of work: a subject's session (or a subject without sessions) and its images.

    ``sources`` maps contrast (``t1``/``flair``) to the absolute path of its NIfTI."""

    subject: str
    session: str | None
    sources: dict = field(default_factory=dict)
    entities: dict = field(default_factory=dict)  # contrast -> the source file's BIDS entities

    @property
    def id(self) -> str:
        """``sub-01_ses-1`` (or ``sub-01``): file-name prefix of everything this job writes."""
        return f"sub-{self.subject}" + (f"_ses-{self.session}" if self.session else "")

    @property
    def folder(self) -> Path:
        """Output folder relative to the derivatives root: ``sub-01/ses-1`` or ``sub-01``."""
        p = Path(f"sub-{self.subject}")
        return p / f"ses-{self.session}" if self.session else p


@dataclass
class Problem:
    """A subject or session the batch cannot process, with the sentence that says why."""

    subject: str
    session: str | None
    error: str

    @property
    def id(self) -> str:
        return f"sub-{self.subject}" + (f"_ses-{self.session}" if self.session else "")


def _label(text: str, prefix: str) -> str:
    """``sub-01`` or ``01`` -> ``01`` (BIDS-Apps accept both)."""
    t = str(text).strip()
    return t[len(prefix) + 1 :] if t.startswith(prefix + "-") else t


def find_jobs(
    bids_dir: str | Path, participant_labels=None, sessions=None
) -> tuple[list[Job], list[Problem], list[str]]:
    """Every (subject, session) of ``bids_dir`` with a usable T1w and/or FLAIR.

    Args:
        bids_dir: the BIDS dataset root.
        participant_labels: subjects to take (``01`` or ``sub-01``); default all.
        sessions: sessions to take (``1`` or ``ses-1``); default all.

    Returns:
        ``(jobs, problems, notes)``: the work; subjects or sessions that cannot be processed (an
        unknown participant label, no usable image), each with its reason; and warnings about
        the dataset (a missing ``dataset_description.json``, several runs of one contrast).

    Raises:
        BidsError: ``bids_dir`` is not a folder, or holds no subject at all.
    """
    from bids import BIDSLayout
    from bids.layout import Query

    root = Path(bids_dir).resolve()
    if not root.is_dir():
        raise BidsError(f"BIDS folder {root} does not exist")
    notes: list[str] = []
    desc = root / "dataset_description.json"
    if not desc.is_file():
        notes.append(
            f"{desc} is missing: {root} is read as BIDS all the same; add the file "
            "(Name, BIDSVersion) to make the dataset valid"
        )
    try:
        layout = BIDSLayout(str(root), validate=False)
    except Exception as e:  # noqa: BLE001 - pybids raises many kinds; all mean "not readable BIDS"
        raise BidsError(f"{root} could not be read as BIDS ({type(e).__name__}: {e})") from None
    subjects = sorted(layout.get_subjects())
    if not subjects:
        raise BidsError(f"{root} holds no subject folders (sub-<label>/); is it the BIDS root?")
    problems: list[Problem] = []
    if participant_labels:
        wanted = list(dict.fromkeys(_label(s, "sub") for s in participant_labels))
        for s in wanted:
            if s not in subjects:
                shown = ", ".join(subjects[:20]) + (" ..." if len(subjects) > 20 else "")
                problems.append(Problem(s, None, f"participant label '{s}' is not in {root} (subjects there: {shown})"))
        subjects = [s for s in wanted if s in subjects]
    wanted_sessions = [_label(s, "ses") for s in sessions] if sessions else None
    jobs: list[Job] = []
    for sub in subjects:
        have = sorted(layout.get_sessions(subject=sub))
        if wanted_sessions is not None:
            todo = [s for s in have if s in wanted_sessions]
            if not todo:
                notes.append(
                    f"sub-{sub} has none of the sessions {', '.join(wanted_sessions)} "
                    f"(it has {', '.join(have) or 'no sessions'}); skipped"
                )
                continue
        else:
            todo = have or [None]
        for ses in todo:
            job, problem, more = _job(layout, Query, root, sub, ses)
            notes += more
            if job is not None:
                jobs.append(job)
            else:
                problems.append(problem)
    return jobs, problems, notes


def _run_key(f) -> tuple:
    e = f.get_entities()
    run = e.get("run")
    try:
        run = int(run)
    except (TypeError, ValueError):
        run = 0
    return ("space" in e, run, f.path)  # native-space images first, then by run


def _job(layout, Query, root: Path, sub: str, ses: str | None):
    files = layout.get(
        subject=sub,
        session=ses if ses else Query.NONE,
        datatype="anat",
        suffix=list(SUFFIX.values()),
        extension=list(NIFTI_EXTENSIONS),
    )
    where = f"sub-{sub}" + (f"/ses-{ses}" if ses else "")
    notes = []
    sources, entities = {}, {}
    for suffix, contrast in CONTRAST.items():
        found = sorted((f for f in files if f.get_entities().get("suffix") == suffix), key=_run_key)
        if not found:
            continue
        if len(found) > 1:
            notes.append(
                f"{where}: {len(found)} {suffix} images; using {Path(found[0].path).name} "
                f"(not {', '.join(Path(f.path).name for f in found[1:])})"
            )
        sources[contrast] = str(Path(found[0].path).resolve())
        entities[contrast] = dict(found[0].get_entities())
    if not sources:
        anat = root / where / "anat"
        there = sorted(p.name for p in anat.iterdir()) if anat.is_dir() else []
        shown = ", ".join(there[:8]) + (" ..." if len(there) > 8 else "")
        reason = f"no usable image: {anat} holds no *_T1w.nii[.gz] or *_FLAIR.nii[.gz]" + (
            f" (it has {shown})" if there else " (the folder is missing)"
        )
        return None, Problem(sub, ses, reason), notes
    return Job(sub, ses, sources, entities), None, notes


# ---------------------------------------------------------------------------------------------
# derivative names
# ---------------------------------------------------------------------------------------------
def source_prefix(job: Job, contrast: str) -> str:
    """Entities of ``job``'s ``contrast`` image as a name prefix, with ``mod-`` and ``space-orig``:
    ``sub-01_ses-1_acq-iso_mod-T1w_space-orig``."""
    ent = job.entities.get(contrast, {"subject": job.subject, "session": job.session})
    parts = [f"{_SHORT[k]}-{ent[k]}" for k in _KEEP if ent.get(k) not in (None, "")]
    parts.append(f"mod-{SUFFIX[contrast]}")
    parts.append("space-orig")
    return "_".join(parts)


def derivative_name(job: Job, contrast: str, series: str, kind: str = "map", extension: str = ".nii.gz") -> str:
    """File name of derived series ``series`` (a pipeline name such as ``brain_mask``) on the grid
    of ``job``'s ``contrast`` image. A series without a BIDS name of its own gets
    ``desc-<name>`` and a suffix from its kind: ``mask``, ``map``, or the source's own suffix
    (``T1w``/``FLAIR``) for an image."""
    if series in DERIVATIVES:
        ents, suffix = DERIVATIVES[series]
    else:
        ents = f"desc-{re.sub(r'[^a-zA-Z0-9]', '', series)}"
        suffix = {"mask": "mask", "image": SUFFIX[contrast]}.get(kind, "map")
    return f"{source_prefix(job, contrast)}_{ents}_{suffix}{extension}"


def report_name(job: Job) -> str:
    return f"{job.id}_report.json"


def bids_uri(path: str | Path, root: Path) -> str:
    """``bids:raw:sub-01/anat/...`` for a file of the input dataset."""
    return "bids:raw:" + Path(path).resolve().relative_to(root.resolve()).as_posix()


def dataset_description(bids_dir: str | Path) -> dict:
    """``dataset_description.json`` of the derivatives: derivative type, what generated them,
    the source dataset (its DOI when it states one) and a ``raw`` link for the BIDS URIs."""
    root = Path(bids_dir).resolve()
    source = {"URL": root.as_uri()}
    try:
        src = json.loads((root / "dataset_description.json").read_text())
        if src.get("DatasetDOI"):
            source["DOI"] = str(src["DatasetDOI"])
        if src.get("Name"):
            source["Name"] = str(src["Name"])
    except (OSError, ValueError):
        pass
    return {
        "Name": f"{APP_NAME} derivatives",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [
            {
                "Name": APP_NAME,
                "Version": __version__,
                "Description": "Chronic stroke lesion segmentation and anomaly mapping (research use only)",
            }
        ],
        "SourceDatasets": [source],
        "DatasetLinks": {"raw": root.as_uri()},
    }


def write_dataset_description(out_dir: Path, bids_dir: str | Path) -> Path:
    """Write (or refresh) ``dataset_description.json`` and ``.bidsignore`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    p = out_dir / "dataset_description.json"
    tmp = p.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(dataset_description(bids_dir), indent=2) + "\n")
    tmp.replace(p)
    (out_dir / ".bidsignore").write_text("logs/\n*.html\nfailures.tsv\n.work/\n")
    return p
