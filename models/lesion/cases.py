"""Training and test cases for the template-space lesion models, prepared as the scanner's pipeline
prepares a study: HD-BET brain mask, N4, T1-w <-> FLAIR registration (the preprocessing stage
itself), then registration to the MNI152 template (:mod:`openrecon_stroke.template`).

Heads:

* synthetic: SynthSeg label maps (``synthseg_01`` .. ``synthseg_20``) and the MNI head (``mni``),
  acquired as T1-w (1 mm, random orientation) and FLAIR (4 mm slices) with realistic jittered
  contrasts, bias and noise (:func:`simulator.phantom.make_study`);
* real: ``chris_t1`` (full-head T1-w), ``gd_t1`` (contrast-enhanced T1-w brain), ``flair_real``
  (FLAIR brain), from ``../shared/data/real_mri``; lesions are painted into them
  (:mod:`simulator.real_lesions`). Each real head is one contrast only.

``lesions``: ``0`` makes a healthy head; otherwise 1-3 lesions (``kinds`` drawn per case, the
cerebellar kind with probability 0.15). Every random draw of a case (contrast, bias, noise, slice
orientation, lesions) comes from its head and seed together (:func:`study_seed`), so that the
heads of one seed differ in all of them; caches made before 2026-12-01 drew them from the seed
alone (``scheme`` 1 in their pickles; 2 now) and should be made again.

One case is stored as ``<cache>/<head>_<seed>.npz``: per contrast the image in template space
(``t1``/``flair``, float32 on the 1.5 mm template grid, absent contrasts missing), the HD-BET
brain mask there (``brain``), the truth lesion fraction there (``lesion``, 0-1), and for each
native series (``native_<c>``) the truth mask, the brain mask and the probability-to-native
transform in a pickle beside it (``.pkl``) so that an evaluation maps predictions back onto the
series' own grid exactly as the lesion stage does. A study with both contrasts also holds the
FLAIR as it is analysed when it arrives alone (its own HD-BET mask and template registration):
``flair_alone``, ``flair_alone_brain``, ``flair_alone_lesion``, ``native_flair_alone_brain`` and the transform
``to_template["flair_alone"]``, when that registration passes its check; the pickle's
``flair_alone`` says ``"registered"`` or why not (None: not tried). An evaluation scores a FLAIR
that was not registered as the scanner gets it, with no lesion mask (:func:`flair_alone_failed`).

    .venv/bin/python models/lesion/cases.py --cache ~/.cache/openrecon-stroke/lesion-cases \\
        --heads synthseg_01-14 mni --seeds 0-3 --healthy-seeds 100
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import re
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from openrecon_stroke import template  # noqa: E402
from openrecon_stroke.geometry import Volume  # noqa: E402

log = logging.getLogger("cases")

DATA = Path(os.environ.get("OPENRECON_SHARED_DATA", REPO.parent / "shared" / "data"))
#: real head -> (file under the shared data, contrast, already skull-stripped)
REAL_HEADS = {
    "chris_t1": ("real_mri/chris_t1.nii.gz", "t1", False),
    "gd_t1": ("real_mri/mr_gd_t1_contrast_brain.nii.gz", "t1", True),
    "flair_real": ("real_mri/flair_brain_extracted.nii.gz", "flair", True),
}
#: Voxel size (mm) of the template-space grid the lesion models work on.
GRID_MM = 1.5
ORIENT_T1 = ("sagittal", "axial", "coronal", "oblique")
ORIENT_FLAIR = ("axial", "oblique", "coronal")


def head_source(head: str) -> str:
    if head == "mni":
        return "mni"
    m = re.fullmatch(r"synthseg_(\d\d)", head)
    if m:
        return str(DATA / "synthseg_label_maps" / f"training_seg_{m.group(1)}.nii.gz")
    raise ValueError(f"unknown head {head!r}")


def preprocess(volumes: dict[str, Volume], given_mask: sitk.Image | None = None) -> dict:
    """The pipeline's own preprocessing stage on a study of these volumes: ``n4`` and
    ``brain_mask`` per contrast, and ``flair_to_t1`` when the series registration passed.

    ``given_mask``: the brain of a head that came already skull-stripped (single series). HD-BET
    is made for whole heads and can cut such a brain short; when its mask keeps less than 85 %
    of the given brain, the given brain is used instead (N4 redone inside it), and the result
    says so (``brain_mask_source``)."""
    from openrecon_stroke.preprocess import n4_correct
    from openrecon_stroke.stages.base import SkipStudy
    from openrecon_stroke.stages.brain import Preprocess
    from openrecon_stroke.stages.results import BrainResult, SeriesRegistration
    from openrecon_stroke.study import Study

    def with_given_brain(out: dict, why: str) -> dict:
        """``out`` with the given brain as the series' mask and N4 redone inside it."""
        (c,) = volumes
        mask = sitk.Cast(given_mask, sitk.sitkUInt8)
        out["brain_mask"][c] = mask
        out["n4"][c], _ = n4_correct(volumes[c].to_sitk(), sitk.BinaryDilate(mask, [5, 5, 5]))
        out["brain_mask_source"] = f"given ({why})"
        return out

    try:
        res = Preprocess().run(Study(inputs=dict(volumes)))
    except SkipStudy as e:
        # HD-BET is made for whole heads: on a brain stripped by another tool it can keep so little
        # that the stage's brain-volume check stops the study. With the given brain, go on with that.
        if given_mask is None or len(volumes) != 1:
            raise
        log.warning("preprocessing stopped (%s): the given brain of this skull-stripped head is used", e)
        return with_given_brain(
            {"n4": {}, "brain_mask": {}, "flair_to_t1": None},
            "HD-BET found too little brain in a skull-stripped head",
        )
    for w in res.warnings:
        log.warning("preprocessing: %s", w)
    brain = next(r for r in res.results if isinstance(r, BrainResult))
    reg = next((r for r in res.results if isinstance(r, SeriesRegistration)), None)
    out = {
        "n4": dict(brain.n4),
        "brain_mask": dict(brain.brain_mask),
        "flair_to_t1": reg.flair_to_t1 if reg else None,
        "brain_mask_source": "HD-BET",
    }
    if given_mask is not None and len(volumes) == 1:
        (c,) = volumes
        both = brain.brain_mask[c] * given_mask  # named: a view of a temporary image reads freed memory
        kept = float(sitk.GetArrayViewFromImage(both).sum())
        given = float(sitk.GetArrayViewFromImage(given_mask).sum())
        if kept < 0.85 * given:
            log.warning(
                "HD-BET kept %.0f %% of the given brain of this skull-stripped head: the given brain is used",
                100 * kept / given,
            )
            out = with_given_brain(out, "HD-BET kept too little of a skull-stripped brain")
    return out


def register_study(shared: dict) -> tuple[str, template.TemplateRegistration]:
    """Template registration of the study's reference series (T1-w when there is one)."""
    ref = "t1" if "t1" in shared["n4"] else "flair"
    return ref, template.register(shared["n4"][ref], shared["brain_mask"][ref])


#: Version of how a case's random draws are made (in each case's pickle as ``scheme``). 1 (until
#: 2026-12-01): from the seed alone, so every head of one seed had the same contrasts, slice
#: orientations and lesion draws (3 T1-w contrasts among all lesion cases, 3 others among the
#: healthy ones, the test heads' the same as training's). 2: from the head and the seed.
SCHEME = 2


def study_seed(head: str, seed: int) -> int:
    """The simulator's seed of case (``head``, ``seed``): its contrasts, slice orientations and
    lesions differ from head to head (:data:`SCHEME` 2), and the same pair gives the same case."""
    return int(np.random.SeedSequence([seed, zlib.crc32(head.encode())]).generate_state(1)[0] % 1_000_000_000)


def synthetic_study(
    head: str, seed: int, lesions: int | None, ventricle_growth: float = 0.0
) -> tuple[dict[str, Volume], dict[str, np.ndarray], list, float]:
    """Volumes, truth masks and lesions of a synthetic study (its lateral ventricles grown by
    ``ventricle_growth`` of their volume), and its true lateral-ventricle volume (mL)."""
    from simulator.phantom import make_study

    seed = study_seed(head, seed)
    rng = np.random.default_rng([seed, 1501])
    orient = {"t1": ORIENT_T1[rng.integers(len(ORIENT_T1))], "flair": ORIENT_FLAIR[rng.integers(len(ORIENT_FLAIR))]}
    kinds = None
    if lesions and rng.random() < 0.15:
        kinds = ["cerebellar"] + [
            str(k) for k in rng.choice(["lacunar", "cortical", "subcortical", "territorial"], size=max(lesions - 1, 0))
        ]
    vols, truth, les = {}, {}, []
    st: dict = {}
    for c in ("t1", "flair"):
        st = make_study(
            head_source(head),
            seed,
            randomize="realistic",
            orientation=orient[c],
            series=(c,),
            n_lesions=lesions if kinds is None else len(kinds),
            kinds=kinds,
            ventricle_growth=ventricle_growth,
        )
        s = st["series"][c]
        vols[c] = s["volume"]
        truth[c] = s["lesion_mask"].astype(np.uint8)
        les = st["lesions"]
    lab = sitk.GetArrayViewFromImage(st["labels"])
    ventricle_ml = float((lab == 1).sum()) * float(np.prod(st["labels"].GetSpacing())) / 1000
    return vols, truth, les, ventricle_ml


def real_study(
    head: str, seed: int, lesions: int | None
) -> tuple[dict[str, Volume], dict[str, np.ndarray], list, sitk.Image | None]:
    """A real head (with lesions painted in unless ``lesions`` is 0): volumes, truth masks,
    lesions, and the head's own brain mask when it came skull-stripped."""
    from openrecon_stroke.preprocess import n4_correct
    from simulator import real_lesions

    path, contrast, stripped = REAL_HEADS[head]
    src = sitk.DICOMOrient(sitk.Cast(sitk.ReadImage(str(DATA / path)), sitk.sitkFloat32), "LPS")
    arr = np.clip(sitk.GetArrayFromImage(src), 0, None)
    img = sitk.GetImageFromArray(arr * np.float32(1000.0 / max(float(np.percentile(arr, 99.5)), 1e-3)))
    img.CopyInformation(src)
    given = None
    if stripped:
        given = sitk.GetImageFromArray(ndimage.binary_fill_holes(arr > 0).astype(np.uint8))
        given.CopyInformation(src)
    vol = Volume.from_sitk(img, description=f"{head} ({contrast})")
    if not lesions:
        return {contrast: vol}, {contrast: np.zeros(vol.data.shape, np.uint8)}, [], given
    shared = preprocess({contrast: vol}, given)
    ref, reg = register_study(shared)
    if not reg.ok:
        raise RuntimeError(f"{head}: template registration failed ({reg.reason})")
    _, bias = n4_correct(img, sitk.BinaryDilate(shared["brain_mask"][contrast], [3, 3, 3]))
    rng = np.random.default_rng([study_seed(head, seed), 1502])
    kinds = None
    if rng.random() < 0.15:
        kinds = ["cerebellar"] + [str(k) for k in rng.choice(["lacunar", "cortical", "subcortical"], size=lesions - 1)]
    new, mask, les = real_lesions.insert(
        img,
        shared["brain_mask"][contrast],
        reg,
        contrast,
        rng,
        n_lesions=lesions if kinds is None else None,
        kinds=kinds,
        bias=bias,
    )
    vol = Volume.from_sitk(new, description=vol.description)
    return {contrast: vol}, {contrast: sitk.GetArrayFromImage(mask)}, les, given


def make_case(
    head: str, seed: int, lesions: int | None, flair_alone: bool = True, ventricle_growth: float = 0.0
) -> tuple[dict, dict]:
    """Arrays (template space and native truth) and the pickled native-side objects of one case."""
    t0 = time.perf_counter()
    ventricle_ml, given = None, None
    if head in REAL_HEADS:
        vols, truth, les, given = real_study(head, seed, lesions)
    else:
        vols, truth, les, ventricle_ml = synthetic_study(head, seed, lesions, ventricle_growth)
    t1 = time.perf_counter()
    shared = preprocess(vols, given)
    ref, reg = register_study(shared)
    t2 = time.perf_counter()
    if not reg.ok:
        raise RuntimeError(f"{head} seed {seed}: template registration failed ({reg.reason})")
    to_nat, to_tmpl = template.series_transforms(reg, ref, shared["n4"], shared.get("flair_to_t1"))
    arrays: dict[str, np.ndarray] = {}
    for c, tx in to_nat.items():
        arrays[c] = template.resample_to_template(shared["n4"][c], tx, GRID_MM)
    arrays["brain"] = (template.resample_to_template(shared["brain_mask"][ref], to_nat[ref], GRID_MM) >= 0.5).astype(
        np.uint8
    )
    if reg.log_jacobian is not None:  # the deformation's local volume change (2 mm template grid)
        arrays["log_jacobian"] = sitk.GetArrayFromImage(reg.log_jacobian).astype(np.float32)
    ref_truth = sitk.GetImageFromArray(truth[ref].astype(np.float32))
    ref_truth.CopyInformation(shared["n4"][ref])
    arrays["lesion"] = template.resample_to_template(ref_truth, to_nat[ref], GRID_MM).astype(np.float16)
    for c in vols:
        arrays[f"native_{c}_truth"] = truth[c].astype(np.uint8)
        arrays[f"native_{c}_brain"] = sitk.GetArrayFromImage(shared["brain_mask"][c]).astype(np.uint8)
    if flair_alone and "t1" in vols and "flair" in vols:
        # the FLAIR as it is analysed when it comes alone: its own HD-BET mask and registration
        alone = preprocess({"flair": vols["flair"]})
        _, reg_f = register_study(alone)
        if reg_f.ok:
            arrays["flair_alone"] = template.resample_to_template(alone["n4"]["flair"], reg_f.to_native, GRID_MM)
            arrays["flair_alone_brain"] = (
                template.resample_to_template(alone["brain_mask"]["flair"], reg_f.to_native, GRID_MM) >= 0.5
            ).astype(np.uint8)
            arrays["native_flair_alone_brain"] = sitk.GetArrayFromImage(alone["brain_mask"]["flair"]).astype(np.uint8)
            ftruth = sitk.GetImageFromArray(truth["flair"].astype(np.float32))
            ftruth.CopyInformation(alone["n4"]["flair"])
            arrays["flair_alone_lesion"] = template.resample_to_template(ftruth, reg_f.to_native, GRID_MM).astype(
                np.float16
            )
            to_tmpl["flair_alone"] = reg_f.to_template
        flair_alone_status = "registered" if reg_f.ok else f"not registered: {reg_f.reason}"
    else:
        flair_alone_status = None  # not tried
    side = {
        "head": head,
        "seed": seed,
        "scheme": SCHEME,
        "lesions": les,
        "true_ventricle_ml": ventricle_ml,
        "brain_mask_source": shared["brain_mask_source"],
        "reference": ref,
        "registration": reg.summary,
        "registration_kind": reg.kind,
        "flair_alone": flair_alone_status,
        "to_template": to_tmpl,
        "affine_det": reg.affine_det,
        "native_grids": {c: _grid_only(shared["n4"][c]) for c in vols},
        "seconds": {
            "synthesis": round(t1 - t0, 1),
            "preprocess_register": round(t2 - t1, 1),
            "flair_alone": round(time.perf_counter() - t2, 1),
        },
        "true_ml": {c: float(truth[c].sum()) * float(np.prod(vols[c].grid.spacing)) / 1000 for c in vols},
    }
    return arrays, side


def _grid_only(img: sitk.Image) -> sitk.Image:
    g = sitk.Image(img.GetSize(), sitk.sitkUInt8)
    g.CopyInformation(img)
    return g


def case_path(cache: Path, head: str, seed: int) -> Path:
    return Path(cache) / f"{head}_{seed}.npz"


def list_cases(cache: Path, heads) -> list[tuple[str, int]]:
    """The complete cases of these heads in ``cache``, as (head, seed)."""
    out = []
    for p in sorted(Path(cache).glob("*.npz")):
        if p.name.endswith(".tmp.npz") or not p.with_suffix(".pkl").exists():
            continue
        head, _, seed = p.stem.rpartition("_")
        if head in heads:
            out.append((head, int(seed)))
    return out


def load_case(cache: Path, head: str, seed: int, side: bool = False):
    p = case_path(cache, head, seed)
    with np.load(p) as z:
        arrays = {k: z[k] for k in z.files}
    if not side:
        return arrays
    with open(p.with_suffix(".pkl"), "rb") as f:
        return arrays, pickle.load(f)


def ensure_case(
    cache: Path, head: str, seed: int, lesions: int | None, flair_alone: bool = True, ventricle_growth: float = 0.0
) -> Path:
    p = case_path(cache, head, seed)
    if p.exists() and p.with_suffix(".pkl").exists():
        return p
    arrays, side = make_case(head, seed, lesions, flair_alone, ventricle_growth)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.stem + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    with open(p.with_suffix(".pkl.tmp"), "wb") as f:
        pickle.dump(side, f)
    os.replace(p.with_suffix(".pkl.tmp"), p.with_suffix(".pkl"))
    os.replace(tmp, p)
    return p


def expand(items: list[str]) -> list[str]:
    """``synthseg_01-14`` -> synthseg_01 .. synthseg_14; other names as they are."""
    out = []
    for it in items:
        m = re.fullmatch(r"synthseg_(\d\d)-(\d\d)", it)
        if m:
            out += [f"synthseg_{i:02d}" for i in range(int(m.group(1)), int(m.group(2)) + 1)]
        else:
            out.append(it)
    return out


def seeds(spec: str) -> list[int]:
    out = []
    for part in spec.split(","):
        if "-" in part:
            a, b = part.split("-")
            out += list(range(int(a), int(b) + 1))
        elif part:
            out.append(int(part))
    return out


def main(argv=None) -> int:
    from openrecon_stroke.runtime import flush_denormals

    flush_denormals()  # as every entry point of the package does (denormals cost 7x on Intel hosts)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", type=Path, required=True)
    p.add_argument("--heads", nargs="+", required=True)
    p.add_argument("--seeds", default="0-3", help="seeds of cases with lesions, e.g. 0-3")
    p.add_argument("--healthy-seeds", default="100", help="seeds of healthy cases (no lesion), e.g. 100,101")
    p.add_argument(
        "--ventricle-growth",
        type=float,
        default=0.0,
        help="synthetic heads: lateral ventricles grown by this fraction of their volume (e.g. 0.4 with "
        "--seeds '' --healthy-seeds 200: healthy heads with enlarged ventricles, as negatives for training)",
    )
    p.add_argument(
        "--no-flair-alone",
        action="store_true",
        help="skip the FLAIR-alone preprocessing (HD-BET and registration on the FLAIR itself)",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    jobs = [
        (h, s, n)
        for h in expand(args.heads)
        for s, n in [(s, None) for s in seeds(args.seeds)] + [(s, 0) for s in seeds(args.healthy_seeds)]
    ]
    t0 = time.perf_counter()
    failed = []
    for i, (h, s, n) in enumerate(jobs, 1):
        if case_path(args.cache, h, s).exists():
            continue
        try:
            ensure_case(
                args.cache,
                h,
                s,
                n if n == 0 else (None if h not in REAL_HEADS else int(1 + s % 3)),
                not args.no_flair_alone,
                args.ventricle_growth,
            )
        except Exception as e:  # keep going: one bad case must not stop the set
            log.exception("case %s seed %d failed", h, s)
            failed.append(f"{h}_{s}: {e}")
        el = time.perf_counter() - t0
        log.info(
            "case %d/%d (%s seed %d) done; %.0f s elapsed, ~%.0f s left",
            i,
            len(jobs),
            h,
            s,
            el,
            el / i * (len(jobs) - i),
        )
    if failed:
        log.error("%d case(s) failed: %s", len(failed), "; ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())


def flair_alone_failed(side: dict) -> str | None:
    """Why the FLAIR of this case, analysed as if it had come alone, was not registered to the
    template (None: registered, or not tried). The pipeline sends no lesion mask for such a
    FLAIR, so an evaluation counts an empty prediction; training may still use the FLAIR as
    registered with the T1-w (:func:`model_view`)."""
    status = side.get("flair_alone")
    return status if status and status != "registered" else None


def model_view(arrays: dict, inputs: tuple[str, ...]) -> dict | None:
    """What a model with these ``inputs`` sees of a stored case, as the pipeline would give it:
    ``images`` (per contrast, template space), ``brain``, ``lesion`` (template space), and for the
    series it is scored on (``target``) the native brain mask key and the transform key. A FLAIR
    model on a study that also had a T1-w sees the FLAIR as analysed alone. None when the case
    lacks an input."""
    if inputs == ("flair",) and "flair_alone" in arrays:
        return {
            "images": {"flair": arrays["flair_alone"]},
            "brain": arrays["flair_alone_brain"] > 0,
            "lesion": arrays["flair_alone_lesion"],
            "target": "flair",
            "native_brain": "native_flair_alone_brain",
            "transform": "flair_alone",
        }
    if not all(c in arrays for c in inputs):
        return None
    return {
        "images": {c: arrays[c] for c in inputs},
        "brain": arrays["brain"] > 0,
        "lesion": arrays["lesion"],
        "target": inputs[0],
        "native_brain": f"native_{inputs[0]}_brain",
        "transform": inputs[0],
    }
