"""Lesion segmentation stage: the shipped ONNX models, driven by their model cards.

Two families of cards (:mod:`openrecon_stroke.model_card`):

* ``voxel_classifier`` (the shipped models): a voxel classifier over template-space features
  (:mod:`openrecon_stroke.lesion_voxel`); it reads the study's :class:`~.results.TemplateResult`
  (every contrast already on the template grid), and its probability goes back onto each
  series' grid through the series' composed template transform. Each lesion is located through
  the template (MNI coordinates, named region: :mod:`openrecon_stroke.regions`);
* ``segmentation`` (a native-space network, e.g. a team's nnU-Net export): the network runs on
  each series' own frame, as below.

Which model runs (each an ensemble of folds, voxel-wise mean probability):

* T1-w and FLAIR both known (same connection or the study cache) and registered: the late-fusion
  model, on the T1-w frame, FLAIR brought in through the checked rigid transform;
* one contrast only, or a registration that failed its check: the single-contrast model of each
  series present, each on its own frame (with a warning saying what was lost);
* a site model instead, when the site points at one (UI ``lesionmodel``: a folder name in the
  lesion models folder; else the environment variable ``OPENRECON_LESION_MODEL``: a folder name
  there or a path), e.g. a team's nnU-Net v2 model brought in by ``openrecon-stroke
  import-nnunet``. Its card says which contrasts it reads and whether it expects brain-extracted
  images; it runs on our preprocessed (bias-corrected, registered) series, without mirroring.
  When its contrasts are not all there (or T1-w/FLAIR registration failed), the shipped models
  run instead, with a warning.

The probability is mapped back onto every input series' own grid, thresholded (UI
``lesionthreshold``, default 0.2; at the default the model card's threshold applies: 0.5 for
an nnU-Net model, its arg-max; the template-space models' operating point chosen on validation
heads) and cleaned of components under ``minlesion`` mm³ (default 10).
Findings: per-lesion volume (mL), centroid (LPS, mm), hemisphere and cortical/subcortical
region, described on the reference series (T1-w when present). The probability itself stays in
:class:`~.results.LesionResult` (``probability``) for offline writers.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .. import regions
from ..lesion import Lesion, LesionSegmenter, describe, postprocess
from ..lesion_voxel import VoxelLesionModel
from ..model_card import Card, ModelCard, ModelCardError, VoxelClassifierCard, load_card
from ..params import BY_ID
from ..resample import FULL, box_of
from ..runtime import ModelCache, model_folder, study_threads
from ..study import Study
from .base import Stage, StageResult
from .results import LESION_MASK, BrainResult, LesionResult, SeriesRegistration, TemplateResult

log = logging.getLogger(__name__)

MODEL_FOLDERS = {("t1", "flair"): "fusion", ("t1",): "t1", ("flair",): "flair"}


def _load_model(folder: Path) -> LesionSegmenter | VoxelLesionModel:
    card: Card = load_card(folder)
    if isinstance(card, VoxelClassifierCard):
        # the anomaly stage runs beside this one (its ``overlaps``): each session call takes half
        # the cores (ONNX Runtime's own threads spin while they wait, which the other stage pays
        # for; demo, medians of 4 interleaved runs: T1-w connection's lesion+anomaly 2.91 -> 2.55 s),
        # and feature columns and blocks of rows go to two workers, so the stage also takes the
        # cores the anomaly stage leaves when it is done (lesion+anomaly 4.41 -> 3.72 s, T1-w)
        threads = max(1, study_threads() // 2)
        return VoxelLesionModel(card, threads=threads, workers=max(1, study_threads() // threads))
    if isinstance(card, ModelCard):
        return LesionSegmenter(card)
    raise ModelCardError(f"{folder}: a {card.kind} model is not a lesion model")


_segmenters: ModelCache[Path, LesionSegmenter | VoxelLesionModel] = ModelCache(_load_model)


def get_segmenter(inputs: tuple[str, ...]) -> LesionSegmenter | VoxelLesionModel:
    """The (process-wide, loaded once) segmenter for a contrast combination, from its
    sub-folder of the lesion models folder (:func:`openrecon_stroke.runtime.model_folder`)."""
    folder = model_folder("lesion") / MODEL_FOLDERS[inputs]
    if not (folder / "card.json").is_file():
        raise FileNotFoundError(
            f"no lesion model for {'+'.join(inputs)} at {folder} (the image was built without "
            "models/lesion; rebuild it, or train with models/lesion/train_all.sh)"
        )
    return _segmenters.get(folder)


def segmenter_at(folder: Path) -> LesionSegmenter:
    """The (process-wide, loaded once) native-space segmenter of a model folder (a site model)."""
    seg = _segmenters.get(folder)
    if not isinstance(seg, LesionSegmenter):
        raise ModelCardError(f"{folder}: a site lesion model must be a native-space segmentation model")
    return seg


def site_model_folder(ui_value: str = "") -> Path | None:
    """The site's own lesion model folder: the UI ``lesionmodel`` (a folder name in the lesion
    models folder), else ``OPENRECON_LESION_MODEL`` (a folder name there, or a path), else
    None. A missing folder raises FileNotFoundError naming where it was looked for."""
    name = (ui_value or "").strip()
    if name:
        if not all(ch.isalnum() or ch in "._-" for ch in name) or name.startswith("."):
            raise FileNotFoundError(f"lesion model name {name!r} is not a plain folder name")
        folder = model_folder("lesion") / name
    else:
        env = os.environ.get("OPENRECON_LESION_MODEL", "").strip()
        if not env:
            return None
        folder = Path(env) if ("/" in env or "\\" in env) else model_folder("lesion") / env
    if not (folder / "card.json").is_file():
        raise FileNotFoundError(f"no lesion model card at {folder / 'card.json'}")
    return folder


def native_segmenter(inputs: tuple[str, ...]) -> LesionSegmenter:
    seg = get_segmenter(inputs)
    if not isinstance(seg, LesionSegmenter):
        raise ModelCardError(f"the {'+'.join(inputs)} lesion model is not a native-space model")
    return seg


Run = tuple[LesionSegmenter, tuple[str, ...], dict[str, sitk.Transform]]


class LesionSegmentation(Stage):
    name = "lesion"
    reads = (BrainResult,)
    optional = (SeriesRegistration, TemplateResult)
    writes = (LesionResult,)

    def warm_up(self) -> None:
        for inputs in MODEL_FOLDERS:
            get_segmenter(inputs).load()
        site = site_model_folder()  # OPENRECON_LESION_MODEL, if the site set one
        if site is not None:
            segmenter_at(site).load()

    def run(self, study: Study) -> StageResult:
        brain = study.need(BrainResult)
        reg = study.result(SeriesRegistration)
        res = StageResult()
        n4, brains = brain.n4, brain.brain_mask
        flair_to_t1 = reg.flair_to_t1 if reg is not None else None
        thr_ui = float(study.params["lesionthreshold"])
        thr_default = thr_ui == BY_ID["lesionthreshold"].default
        min_mm3 = float(study.params["minlesion"])

        # which model(s): (segmenter, contrasts it reads, transforms to its other contrasts)
        runs = self._site_run(study, n4, flair_to_t1, res)
        if not runs and isinstance(get_segmenter((brain.reference,)), VoxelLesionModel):
            return self._run_template(study, res)
        runs = runs or self._shipped_runs(study, n4, flair_to_t1, res)

        lesions_out: list[Lesion] | None = None
        used = []
        probability: dict[str, np.ndarray] = {}
        for seg, inputs, to_contrast in runs:
            card = seg.card
            thr = card.threshold if thr_default else thr_ui
            kind = ", nnU-Net v2" if card.preprocessing is not None else ""
            used.append(f"{card.name} {card.version} ({len(card.files)} folds{kind})")
            if card.status == "experimental":
                res.warnings.append(
                    f"lesion model {card.name} is experimental ({card.status_note or 'not validated'}); "
                    "do not interpret its masks clinically"
                )
            ref = next(c for c in inputs if c not in to_contrast)
            prob = seg.probability({c: n4[c] for c in inputs}, brains[ref], to_contrast)
            # onto every input series this model speaks for
            targets = [c for c in study.inputs if c in inputs or c in to_contrast]
            for c in targets:
                img = n4[c]
                # points of series c -> points of the reference frame
                tx = None
                if c != ref:
                    tx = to_contrast[c].GetInverse()
                p = seg.on_grid(prob, img, tx)
                inside = sitk.GetArrayViewFromImage(brains[c]) > 0
                p = np.where(inside, p, 0.0)
                probability[c] = p.astype(np.float32)
                vol = study.inputs[c]
                mask = postprocess(p, vol.grid.voxel_volume_mm3, thr, min_mm3)
                comment = f"stroke lesion, {card.name} {card.version}, p>={thr:g}, >= {min_mm3:g} mm3"
                res.derived.append(LESION_MASK.on(c, mask.astype(np.uint8), comment))
                if lesions_out is None or c == "t1":
                    lesions_out = self._describe(mask, img, inside, c)
        res.results.append(LesionResult(lesions=lesions_out or [], model="; ".join(used), probability=probability))
        return res

    def _run_template(self, study: Study, res: StageResult) -> StageResult:
        """The template-space models: fusion when both contrasts reached the template, else the
        reference series' own model."""
        brain = study.need(BrainResult)
        tmpl = study.result(TemplateResult)
        if tmpl is None:
            res.warnings.append(
                "lesion segmentation was not run: its models work in template space and the "
                "registration to the template failed (see the warning above)"
            )
            return res
        thr_ui = float(study.params["lesionthreshold"])
        min_mm3 = float(study.params["minlesion"])
        have = tuple(c for c in ("t1", "flair") if c in tmpl.images and c not in tmpl.alone)
        inputs = have if have in MODEL_FOLDERS else (tmpl.reference,)
        # (model inputs, brain mask on the template grid, series it speaks for)
        groups = [(inputs, tmpl.brain, [c for c in study.inputs if c in tmpl.to_template and c not in tmpl.alone])]
        groups += [((c,), mask, [c]) for c, mask in tmpl.alone.items()]
        if tmpl.alone:
            res.warnings.append(
                "lesion segmentation ran on each series alone (T1-w/FLAIR not fused, registration "
                "failed): expect lower sensitivity for small lesions"
            )
        elif len(have) < len([c for c in ("t1", "flair") if c in brain.n4]):
            res.warnings.append(
                "T1-w/FLAIR registration failed: lesions were segmented on the "
                f"{'T1-w' if tmpl.reference == 't1' else 'FLAIR'} alone, not fused"
            )
        elif inputs == ("t1",):
            res.warnings.append(
                "FLAIR missing: lesions were segmented on T1-w alone, which misses "
                "more small lesions; add the FLAIR series for the fused model"
            )
        elif inputs == ("flair",):
            res.warnings.append("T1-w missing: lesions were segmented on FLAIR alone")
        described: list[Lesion] | None = None
        probability: dict[str, np.ndarray] = {}
        used = []
        for inputs, brain_t, targets in groups:
            if not targets:  # e.g. the cached T1-w of a FLAIR that is analysed alone
                continue
            model = get_segmenter(inputs)
            assert isinstance(model, VoxelLesionModel)
            card = model.card
            if abs(card.spacing_mm - tmpl.spacing_mm) > 1e-6:
                raise ValueError(
                    f"lesion model {card.name} works on a {card.spacing_mm} mm template grid, "
                    f"the template stage gives {tmpl.spacing_mm} mm"
                )
            used.append(f"{card.name} {card.version}")
            if card.status == "experimental":
                res.warnings.append(
                    f"lesion model {card.name} is experimental ({card.status_note or 'not validated'}); "
                    "do not interpret its masks clinically"
                )
            # the UI default means "the model's own operating point" (chosen on validation heads)
            thr = card.threshold if thr_ui == BY_ID["lesionthreshold"].default else thr_ui
            # the cascade is calibrated not to skip voxels at its safe probability or above: used
            # only at thresholds from there up
            use_cascade = card.cascade is None or thr >= card.cascade.safe_probability
            # candidates are judged as components at the filter's own threshold: at a lower one
            # a rejected candidate's fringe would remain, so the filter is off there
            use_filter = card.candidate_filter is None or thr >= card.candidate_filter.threshold
            prob_t = model.probability_image(
                {c: tmpl.images[c] for c in card.inputs}, brain_t, cascade=use_cascade, candidates=use_filter
            )
            for c in targets:
                img = brain.n4[c]
                inside = sitk.GetArrayViewFromImage(brain.brain_mask[c]) > 0
                box = box_of(inside) or FULL  # nothing outside the brain: resample and label its box only
                p = np.where(inside, model.on_grid(prob_t, img, tmpl.to_template[c], box), 0.0).astype(np.float32)
                probability[c] = p
                mask = np.zeros(p.shape, bool)
                vox = study.inputs[c].grid.voxel_volume_mm3
                mask[box] = postprocess(p[box], vox, thr, min_mm3, card.seed_probability)
                comment = f"stroke lesion, {card.name} {card.version}, p>={thr:g}, >= {min_mm3:g} mm3"
                res.derived.append(LESION_MASK.on(c, mask.astype(np.uint8), comment))
                if described is None or c == "t1":
                    described = self._describe(mask, img, inside, c, tmpl)
        res.results.append(LesionResult(lesions=described or [], model="; ".join(used), probability=probability))
        return res

    @staticmethod
    def _shipped_runs(study: Study, n4: dict, flair_to_t1, res: StageResult) -> list[Run]:
        """The shipped models: fused when both contrasts are registered, else one per series."""
        if "t1" in n4 and "flair" in n4 and flair_to_t1 is not None:
            return [(native_segmenter(("t1", "flair")), ("t1", "flair"), {"flair": flair_to_t1})]
        runs: list[Run] = [(native_segmenter((c,)), (c,), {}) for c in ("t1", "flair") if c in study.inputs]
        if "t1" in n4 and "flair" in n4:
            res.warnings.append(
                "lesion segmentation ran on each series alone (T1-w/FLAIR not fused, "
                "registration failed): expect lower sensitivity for small lesions"
            )
        elif "flair" not in n4:
            res.warnings.append(
                "FLAIR missing: lesions were segmented on T1-w alone, which misses "
                "more small lesions; add the FLAIR series for the fused model"
            )
        elif "t1" not in n4:
            res.warnings.append("T1-w missing: lesions were segmented on FLAIR alone")
        return runs

    @staticmethod
    def _site_run(study: Study, n4: dict, flair_to_t1, res: StageResult) -> list[Run]:
        """``[(segmenter, contrasts, transforms)]`` for the site's model, or ``[]`` when there is
        none or it cannot run on this study (then a warning says why)."""
        try:
            folder = site_model_folder(study.params["lesionmodel"])
            if folder is None:
                return []
            seg = segmenter_at(folder)
        except (FileNotFoundError, ModelCardError) as e:
            res.warnings.append(f"site lesion model not used ({e}); the shipped models ran instead")
            return []
        card = seg.card
        missing = [c for c in card.inputs if c not in n4]
        if missing:
            res.warnings.append(
                f"site lesion model {card.name} needs {'+'.join(card.inputs)}; "
                f"{'+'.join(missing)} missing: the shipped models ran instead"
            )
            return []
        to_contrast: dict[str, sitk.Transform] = {}
        if len(card.inputs) == 1 and flair_to_t1 is not None:  # its mask also goes onto the other series
            other = "flair" if card.inputs[0] == "t1" else "t1"
            to_contrast = {other: flair_to_t1 if other == "flair" else flair_to_t1.GetInverse()}
        elif len(card.inputs) > 1:
            if flair_to_t1 is None:
                res.warnings.append(
                    f"site lesion model {card.name} needs T1-w and FLAIR registered, and the "
                    "registration failed: the shipped models ran instead"
                )
                return []
            to_contrast = {"flair": flair_to_t1}
        return [(seg, tuple(card.inputs), to_contrast)]

    @staticmethod
    def _describe(
        mask: np.ndarray, img: sitk.Image, brain: np.ndarray, contrast: str, tmpl: TemplateResult | None = None
    ) -> list[Lesion]:
        """The lesions of ``mask`` on series ``contrast``'s grid; with the template registration
        ``tmpl``, each also located (region, MNI coordinates, hemisphere)."""
        if not mask.any():
            return []
        zyx = np.argwhere(brain).mean(0)[::-1]
        midline = img.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in zyx))[0]
        to_template = tmpl.to_template[contrast] if tmpl is not None else None
        out = describe(
            mask,
            img,
            midline,
            brain,
            (tmpl.regions_on(contrast, img, brain), regions.load_regions()[1]) if tmpl is not None else None,
        )
        for les in out:
            les.series = contrast
            if to_template is not None:
                mni = regions.mni_of(les.centroid_lps_mm, to_template)
                les.mni_mm = (mni[0], mni[1], mni[2])
                les.hemisphere = "right" if mni[0] > 0 else "left"  # the template is symmetric about MNI x = 0
        return out
