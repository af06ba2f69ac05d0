"""The MNI ICBM152 2009a nonlinear symmetric brain template: the few NIfTI files the pipeline reads.

Kinds (:data:`TEMPLATE_FILES`): ``t1`` (skull-stripped T1-w average), ``gm`` and ``wm`` (grey and
white matter probability maps). All three are uint8 (0..255; the maps are probability x 255) on
one 197 x 233 x 189 grid of 1 mm voxels, symmetric about x = 0, stored RAS in the files;
SimpleITK reads them with an LPS direction, as the rest of the pipeline. ``mask`` is the brain
mask derived from the T1 (nilearn's definition: T1 / max(T1) > 0.2), built in memory by
:func:`load_template`, so it has no file of its own.

Where the files are (first match wins):

1. ``$OPENRECON_TEMPLATES_DIR``: a folder written by :func:`export_templates`. The container
   image sets it to ``/opt/openrecon-stroke/templates`` (``docker/build.sh`` exports the files
   into the build context): the image holds these files, not the nilearn library.
2. The installed ``nilearn`` package (the ``simulator`` and ``dev`` extras), which ships these
   files in ``nilearn/datasets/data/``. nilearn is located, never imported.

Nothing is downloaded. Licence: the ICBM 2009 templates are (C) 1993-2004 Louis Collins, McConnell
Brain Imaging Centre, Montreal Neurological Institute, McGill University, under a permissive
notice that must travel with every copy: :data:`NOTICE`, written beside the exported files.

    python -m openrecon_stroke.templates export DIR   # what docker/build.sh runs
    python -m openrecon_stroke.templates where        # the folder in use and each file
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

#: kind -> file name (as shipped in nilearn and in the image)
TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
#: kinds :func:`load_template` builds from a file kind
DERIVED_KINDS = ("mask",)
#: T1 / max(T1) above this is brain (nilearn's ``load_mni152_brain_mask`` default)
MASK_THRESHOLD = 0.2
ENV_VAR = "OPENRECON_TEMPLATES_DIR"
NOTICE_FILE = "NOTICE.txt"

NOTICE = """\
MNI ICBM152 2009a nonlinear symmetric template (T1-w, grey and white matter maps, 1 mm)
Files: {files}
Taken unchanged from the nilearn package (nilearn/datasets/data/), which redistributes them.

Copyright (C) 1993-2004 Louis Collins, McConnell Brain Imaging Centre, Montreal Neurological
Institute, McGill University. Permission to use, copy, modify, and distribute this software and
its documentation for any purpose and without fee is hereby granted, provided that the above
copyright notice appear in all copies. The authors and McGill University make no representations
about the suitability of this software for any purpose. It is provided "as is" without express
or implied warranty. The authors are not responsible for any data loss, equipment damage,
property loss, or injury to subjects or patients resulting from the use or misuse of this
software package.

References: VS Fonov, AC Evans, RC McKinstry, CR Almli, DL Collins, Unbiased nonlinear average
age-appropriate brain templates from birth to adulthood, NeuroImage 47 (Suppl 1), S102, 2009.
VS Fonov, AC Evans, K Botteron, CR Almli, RC McKinstry, DL Collins and BDCG, Unbiased average
age-appropriate atlases for pediatric studies, NeuroImage 54(1), 313-327, 2011.
DL Collins, AP Zijdenbos, WFC Baare, AC Evans, ANIMAL+INSECT: improved cortical structure
segmentation, IPMI 1999, LNCS 1613, 210-223.
"""


class TemplateNotFound(FileNotFoundError):
    """The template files are in no known place; the message says how to provide them."""


def _nilearn_data_dir() -> Path | None:
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


def _has_all(folder: Path) -> bool:
    return all((folder / f).is_file() for f in TEMPLATE_FILES.values())


def template_dir() -> Path:
    """The folder holding every file of :data:`TEMPLATE_FILES` (read at call time)."""
    env = os.environ.get(ENV_VAR)
    if env:
        folder = Path(env)
        if not _has_all(folder):
            missing = [f for f in TEMPLATE_FILES.values() if not (folder / f).is_file()]
            raise TemplateNotFound(
                f"{ENV_VAR}={env} lacks {', '.join(missing)}: export the template "
                f"there with `python -m openrecon_stroke.templates export {env}` "
                f"(needs nilearn), or unset {ENV_VAR}"
            )
        return folder
    data = _nilearn_data_dir()
    if data is not None and _has_all(data):
        return data
    why = "nilearn is not installed" if data is None else f"{data} lacks the ICBM152 2009a files"
    raise TemplateNotFound(
        f"the MNI152 template was not found ({why}): install nilearn "
        f"(pip install 'openrecon-stroke[simulator]') or set {ENV_VAR} to a folder "
        "made by `python -m openrecon_stroke.templates export DIR`"
    )


def template_path(kind: str) -> Path:
    """Path of the NIfTI file of ``kind`` (``t1``, ``gm`` or ``wm``)."""
    if kind not in TEMPLATE_FILES:
        extra = f"; '{kind}' has no file, use load_template('{kind}')" if kind in DERIVED_KINDS else ""
        raise KeyError(f"unknown template kind {kind!r}: one of {', '.join(TEMPLATE_FILES)}{extra}")
    return template_dir() / TEMPLATE_FILES[kind]


def load_template(kind: str) -> sitk.Image:
    """The template of ``kind`` as a SimpleITK image (LPS direction; mm).

    ``t1``, ``gm``, ``wm``: the file as stored (uint8). ``mask``: uint8 brain mask (1 = brain),
    T1 / max(T1) > :data:`MASK_THRESHOLD`, on the same grid.
    """
    if kind == "mask":
        t1 = sitk.ReadImage(str(template_path("t1")))
        arr = sitk.GetArrayViewFromImage(t1)
        mask = sitk.GetImageFromArray((arr.astype(np.float32) > MASK_THRESHOLD * float(arr.max())).astype(np.uint8))
        mask.CopyInformation(t1)
        return mask
    return sitk.ReadImage(str(template_path(kind)))


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def export_templates(dest: str | Path) -> list[Path]:
    """Copy the template files (from :func:`template_dir`) and :data:`NOTICE` into ``dest``."""
    src = template_dir()
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for name in TEMPLATE_FILES.values():
        if (src / name).resolve() != (dest / name).resolve():
            shutil.copyfile(src / name, dest / name)
        out.append(dest / name)
    (dest / NOTICE_FILE).write_text(NOTICE.format(files=", ".join(TEMPLATE_FILES.values())), encoding="utf-8")
    return out + [dest / NOTICE_FILE]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m openrecon_stroke.templates",
        description="The MNI152 template files: where they are, or export them to a folder.",
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("where", help="print the folder in use and each file with its SHA-256")
    e = sub.add_parser("export", help="copy the files and their licence notice into DIR (docker/build.sh runs this)")
    e.add_argument("dir", type=Path)
    args = ap.parse_args(argv)
    try:
        if args.cmd == "where":
            print(template_dir())
            for kind in TEMPLATE_FILES:
                p = template_path(kind)
                print(f"{kind}\t{p.stat().st_size}\t{sha256(p)}\t{p.name}")
        else:
            for p in export_templates(args.dir):
                print(p)
    except TemplateNotFound as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
