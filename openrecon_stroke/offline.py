"""``process``: the very same pipeline as the server, on files, writing NIfTI and report.json.

Each derived series is written on the grid of the input it derives from (NIfTI is RAS on disk;
SimpleITK converts from our LPS grids). With both contrasts the files get a ``_t1`` /
``_flair`` suffix. The report page goes out as ``report.png``. With ``dicom=True`` every output
is also written as DICOM under ``<out>/dicom/<series>/`` (:mod:`openrecon_stroke.dicom_export`).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .assembly import assemble_study
from .outputs import report_dict
from .params import coerce
from .pipeline import build_pipeline, resolve_pipeline_name
from .study import DerivedSeries, Study

log = logging.getLogger(__name__)


def analyse(t1=None, flair=None, raw_params: dict | None = None) -> tuple[Study, str]:
    """Load the inputs and run the configured pipeline: the one code path that ``process`` and
    the cohort ``batch`` (:mod:`openrecon_stroke.batch`) share. Returns the finished study and
    the pipeline's name.

    Raises :class:`~openrecon_stroke.inputs.InputError` (a ``ValueError``) naming the file when
    an input cannot be read."""
    params = coerce(raw_params)
    for w in params.warnings:
        log.warning(w)
    t0 = time.perf_counter()
    study = assemble_study(params, files={"t1": t1, "flair": flair}, warnings=params.warnings)
    study.timings_s["load"] = time.perf_counter() - t0
    name, _ = resolve_pipeline_name(params["config"])
    build_pipeline(name).run(study)
    return study, name


def derived_image(study: Study, d: DerivedSeries) -> sitk.Image:
    """A derived volume as a SimpleITK image on its input's exact grid: masks uint8, maps and
    images float32, RGB as a 3-component vector image."""
    arr = d.data
    if d.kind == "mask":
        arr = arr.astype(np.uint8)
    elif d.kind in ("map", "image"):
        arr = arr.astype(np.float32)
    return study.inputs[d.reference].grid.to_sitk(arr)


def process(
    t1=None, flair=None, out_dir: Path = Path("out"), raw_params: dict | None = None, dicom: bool = False
) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    study, name = analyse(t1, flair, raw_params)
    both = len(study.inputs) > 1
    for d in study.derived:
        if d.kind == "page":
            from PIL import Image

            fname = f"{d.name}_{d.reference}.png" if both else f"{d.name}.png"
            Image.fromarray(d.data[0]).save(out_dir / fname)
            log.info("wrote %s", out_dir / fname)
            continue
        fname = f"{d.name}_{d.reference}.nii.gz" if both else f"{d.name}.nii.gz"
        sitk.WriteImage(derived_image(study, d), str(out_dir / fname), useCompression=True)
        log.info("wrote %s", out_dir / fname)
    report = report_dict(study, name)
    if dicom:
        from .dicom_export import export_study

        res = export_study(study, out_dir / "dicom", sources={"t1": t1, "flair": flair})
        report["dicom"] = {k: len(v) for k, v in res.series.items()}
        report["warnings"] = list(report["warnings"]) + res.warnings
        log.info("wrote DICOM to %s: %s", res.folder, report["dicom"])
    (out_dir / "report.json").write_text(json.dumps(report, indent=1))
    return report
