"""Template-space lesion models: a voxel classifier (ONNX) over features of the registered brain.

The model card (``card.json``, ``"kind": "voxel_classifier"``,
:class:`~openrecon_stroke.model_card.VoxelClassifierCard`) names everything the runner needs:

* ``inputs``: contrasts, e.g. ``["t1", "flair"]``;
* ``template``: ``{"name": ..., "spacing_mm": 1.5}``: the template grid the features are computed on
  (:func:`openrecon_stroke.template.template_grid`);
* ``features``: feature names in the model's column order (:mod:`openrecon_stroke.voxel_features`);
* ``normative``: folder of the normative model (relative to the card, :mod:`openrecon_stroke.normative`),
  when a feature needs it;
* ``files``: ``[{"file": "model.onnx", "sha256": ...}]`` (several files are averaged);
* ``output``: ``{"activation": "probability", "channel": 1}``: which column of the ONNX output
  ``probabilities`` is the lesion class;
* ``cascade`` (optional, :class:`~openrecon_stroke.model_card.Cascade`): a file with the
  model's first trees, run on every voxel; the whole model runs only where they reach its
  ``min_probability`` (calibrated on training heads by ``models/lesion/cascade.py``);
* ``candidate_filter`` (optional, :class:`~openrecon_stroke.model_card.CandidateFilter`): a
  classifier over whole lesion candidates (:mod:`openrecon_stroke.lesion_candidates`); the
  candidates it rejects are removed from the probability map;
* ``edge_refinement`` (optional, :class:`~openrecon_stroke.model_card.EdgeRefinement`): each
  lesion grown to its own intensity edge (:mod:`openrecon_stroke.lesion_edges`);
* ``smoothing_mm`` (optional): Gaussian smoothing of the probability map in template space;
* ``threshold``, ``min_lesion_mm3``, ``status``, ``status_note``, ``training``, ``metrics``.

Flow: the template stage has resampled each contrast (N4-corrected) once onto the template grid;
tissue intensities are estimated there; features go through the ONNX model in blocks of rows;
the probability map is returned on the template grid. The lesion stage maps it back onto every
series' own grid (:meth:`VoxelLesionModel.on_grid`).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import SimpleITK as sitk

from . import lesion_candidates, lesion_edges, memo, template, voxel_features
from .model_card import ModelCardError, VoxelClassifierCard
from .resample import Box, resample_array
from .runtime import LazySessions

log = logging.getLogger(__name__)

#: Rows per ONNX Runtime call (bounds memory: rows x features x 4 bytes).
BLOCK_ROWS = 200_000
#: Fewest rows per call when the rows are split between workers.
MIN_BLOCK_ROWS = 8_192
#: Feature columns kept for a later connection of the same study (the fused model's T1-w columns
#: on the FLAIR connection are the T1-w model's); one contrast's 11 columns of a head at 1.5 mm
#: are about 25 MB
FEATURE_COLUMNS: memo.ContentMemo[np.ndarray] = memo.ContentMemo("lesion feature columns", 96 << 20)


def head_anatomy(
    image_t: np.ndarray, brain_t: np.ndarray, means: dict[str, float], spacing_mm: float
) -> lesion_candidates.HeadAnatomy:
    """This head's lateral ventricles (:func:`openrecon_stroke.normative.ventricles_on_template`)
    and CSF-dark voxels (:data:`openrecon_stroke.lesion_candidates.DARK_FRACTION`), from
    ``image_t`` on the template grid, CSF darkest (T1-w, dark-fluid FLAIR); ``means``: its tissue
    intensities (:func:`openrecon_stroke.template.tissue_means`)."""
    from .normative import ventricles_on_template

    vent = ventricles_on_template(image_t, brain_t, means, spacing_mm)
    dark = brain_t & (image_t < means["csf"] + lesion_candidates.DARK_FRACTION * (means["gm"] - means["csf"]))
    return lesion_candidates.HeadAnatomy(vent, dark)


class VoxelLesionModel:
    """A voxel-classifier card with its ONNX Runtime sessions and normative model (loaded once)."""

    def __init__(self, card: VoxelClassifierCard, threads: int | None = None, workers: int = 1):
        """``threads``: intra-op threads of its ONNX Runtime sessions (default: the study's,
        :func:`~openrecon_stroke.runtime.study_threads`); ``workers``: feature columns computed
        and blocks of rows classified at once (each block on ``threads``)."""
        self.card = card
        self.workers = max(1, workers)
        self._sessions = LazySessions(card.files, threads=threads)
        # the cascade's first trees
        self._first = LazySessions([card.cascade.file], threads=threads) if card.cascade is not None else None
        f = card.candidate_filter
        self._filter = LazySessions([f.file], threads=threads) if f is not None else None
        self._priors: dict[str, np.ndarray] | None = None
        self._normative: voxel_features.Normative | None = None

    @property
    def normative(self) -> voxel_features.Normative | None:
        if self._normative is None and self.card.normative is not None:
            from .normative import get_normative

            model = get_normative(self.card.normative)
            if abs(model.card.spacing_mm - self.card.spacing_mm) > 1e-6:
                raise ModelCardError(
                    f"{self.card.path}: its normative model is on a {model.card.spacing_mm} mm "
                    f"grid, the model needs {self.card.spacing_mm} mm"
                )
            self._normative = model.as_features()
        return self._normative

    def load(self) -> None:
        """Create the sessions, read the normative model and compute the template's features now
        (server start-up), not during the first study."""
        self._sessions.all()
        if self._first is not None:
            self._first.all()
        if self._filter is not None:
            self._filter.all()
            lesion_candidates.ventricle_distance_mm(self.card.spacing_mm)
            if self.card.candidate_filter is not None and self.card.candidate_filter.uses_anatomy:
                from .regions import regions_on_template

                regions_on_template(self.card.spacing_mm)  # what head_anatomy reads, not in a study
        _ = self.normative
        self.priors()

    def grid(self) -> sitk.Image:
        return template.template_grid(self.card.spacing_mm)

    def priors(self) -> dict[str, np.ndarray]:
        """The template's maps on the model's grid, with the template-only features its card
        lists (:data:`~openrecon_stroke.voxel_features.TEMPLATE_FEATURES`), computed once per model."""
        if self._priors is None:
            sp = self.card.spacing_mm
            pri = template.load_template(sp).arrays()
            for f in voxel_features.TEMPLATE_FEATURES:
                if f"prior_{f}" in self.card.features or (f == "depth" and self.card.candidate_filter):
                    pri[f] = voxel_features.template_feature(f, pri, sp)
            self._priors = pri
        return self._priors

    def features(self, images_t: dict[str, np.ndarray], brain_t: np.ndarray) -> np.ndarray:
        """Feature rows ``(n brain voxels, n features)`` in the card's column order, from each
        contrast's image on the template grid and the brain mask there (C order of the grid)."""
        pri = self.priors()
        means = {
            c: template.tissue_means(images_t[c], pri["gm"], pri["wm"], pri["csf"], brain_t & (pri["brain"] > 0))
            for c in self.card.inputs
        }
        # every column of a contrast depends on its image, the brain, its tissue means, the grid and
        # the normative model only
        normative = self.card.normative.resolve() if self.card.normative is not None else None
        base = memo.digest(brain_t, self.card.spacing_mm, str(normative))
        keys = {c: memo.digest(base, c, images_t[c], means[c]) for c in self.card.inputs}
        hits = FEATURE_COLUMNS.hits
        x = voxel_features.compute(
            self.card.features,
            images_t,
            brain_t,
            means,
            pri,
            self.card.spacing_mm,
            self.normative,
            self.workers,
            reuse=(FEATURE_COLUMNS, keys),
        )
        if FEATURE_COLUMNS.hits > hits:
            log.info("%d feature column(s) reused from an earlier series of this study", FEATURE_COLUMNS.hits - hits)
        return x

    def classify(self, x: np.ndarray, cascade: bool = True) -> np.ndarray:
        """Lesion probability of each feature row (the files averaged). With the card's
        cascade (and ``cascade``), the first trees run on every row and the whole model only on
        the rows where they reach the cascade's ``min_probability``. Rows the whole model puts
        at the cascade's ``safe_probability`` or more are not skipped (calibrated on training
        heads), so masks at thresholds from there up match the whole model's."""
        c = self.card.cascade
        if c is None or self._first is None or not cascade:
            return self._classify(self._sessions.all(), x)
        p = self._classify(self._first.all(), x)
        rows = np.flatnonzero(p >= c.min_probability)
        if rows.size:
            p[rows] = self._classify(self._sessions.all(), np.ascontiguousarray(x[rows]))
        return p

    def _classify(self, sessions: list, x: np.ndarray) -> np.ndarray:
        """Mean probability of the ``sessions`` on the rows of ``x``, in blocks of rows; with
        ``workers`` > 1 the blocks run side by side (ONNX Runtime releases the GIL), so the
        classifier takes a core another stage has left free."""
        n = x.shape[0]
        p = np.zeros(n, np.float32)
        step = min(BLOCK_ROWS, max(MIN_BLOCK_ROWS, -(-n // (4 * self.workers))))
        for s in sessions:
            name = s.get_inputs()[0].name
            out_names = [o.name for o in s.get_outputs()]
            out = out_names[out_names.index("probabilities") if "probabilities" in out_names else -1]

            def block(a: int, s=s, name=name, out=out) -> None:
                p[a : a + step] += np.asarray(s.run([out], {name: x[a : a + step]})[0])[:, self.card.channel]

            starts = range(0, n, step)
            if self.workers > 1 and len(starts) > 1:
                with ThreadPoolExecutor(min(self.workers, len(starts)), "lesion-rows") as pool:
                    list(pool.map(block, starts))
            else:
                for a in starts:
                    block(a)
        p /= len(sessions)
        return p

    def probability_arrays(
        self,
        images_t: dict[str, np.ndarray],
        brain_t: np.ndarray,
        cascade: bool = True,
        candidates: bool = True,
        edges: bool = True,
    ) -> np.ndarray:
        """Lesion probability ``(nz, ny, nx)`` on the template grid, from each contrast's image
        already on that grid and the brain mask there (``cascade``: see :meth:`classify`; with
        ``candidates`` and the card's ``candidate_filter``, the candidates it rejects are set to 0;
        ``edges`` and the card's ``edge_refinement``, each lesion at the card's point is then grown
        to its own intensity edge: :mod:`openrecon_stroke.lesion_edges`)."""
        f = self.card.candidate_filter
        if f is None or not candidates:
            out = self._probability(self.features(images_t, brain_t), brain_t, cascade)
        else:
            x, out, lab, ids = self.candidates(images_t, brain_t, f.threshold, f.seed_probability, cascade)
            judged = self.judge_candidates(x, out, brain_t, lab, ids, images_t)
            drop = [k for k, q in zip(ids, judged) if q < f.min_probability]
            if drop:
                gone = np.isin(lab, drop)
                vox_ml = self.card.spacing_mm**3 / 1000
                sizes = np.bincount(lab[gone], minlength=max(drop) + 1)
                log.info(
                    "candidate filter: %d of %d lesion candidates removed (template space: %s; cut %.3f)",
                    len(drop),
                    len(ids),
                    ", ".join(
                        f"{sizes[k] * vox_ml:.2f} mL at p={q:.3f}" for k, q in zip(ids, judged) if q < f.min_probability
                    ),
                    f.min_probability,
                )
                out[gone] = 0.0
        return self.grow_to_edges(out, images_t, brain_t) if edges else out

    def grow_to_edges(self, prob: np.ndarray, images_t: dict[str, np.ndarray], brain_t: np.ndarray) -> np.ndarray:
        """``prob`` with the card's ``edge_refinement`` applied (unchanged without one)."""
        rule = self.card.edge_refinement
        if rule is None:
            return prob
        pri = self.priors()
        img = images_t[rule.contrast]
        means = template.tissue_means(img, pri["gm"], pri["wm"], pri["csf"], brain_t & (pri["brain"] > 0))
        if means["wm"] <= 0:
            return prob
        relative = img / means["wm"]
        expected = lesion_edges.healthy_intensity(relative, brain_t, means, pri, self.card.spacing_mm, rule.mirror)
        seed = self.card.seed_probability if self.card.seed_probability is not None else 0.0
        out, added_ml = lesion_edges.grow_to_edges(
            prob,
            relative,
            expected,
            brain_t,
            self.card.threshold,
            seed,
            self.card.min_lesion_mm3,
            self.card.spacing_mm,
            rule,
        )
        if added_ml > 0:
            log.info("lesion edges: %.2f mL joined the lesions at their %s intensity edge", added_ml, rule.contrast)
        return out

    def _probability(self, x: np.ndarray, brain_t: np.ndarray, cascade: bool) -> np.ndarray:
        out = np.zeros(brain_t.shape, np.float32)
        out[brain_t] = self.classify(x, cascade)
        if self.card.smoothing_mm > 0:
            out = voxel_features.smooth_in(out, brain_t, self.card.smoothing_mm, self.card.spacing_mm)
        return out

    def candidates(
        self,
        images_t: dict[str, np.ndarray],
        brain_t: np.ndarray,
        threshold: float,
        seed: float,
        cascade: bool = True,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
        """The voxel feature rows, the unfiltered probability on the template grid, its component
        labels and the labels that are candidates at ``threshold`` / ``seed``
        (:func:`openrecon_stroke.lesion_candidates.label`)."""
        x = self.features(images_t, brain_t)
        prob = self._probability(x, brain_t, cascade)
        lab, ids = lesion_candidates.label(prob, threshold, seed, self.card.min_lesion_mm3, self.card.spacing_mm**3)
        return x, prob, lab, ids

    def judge_candidates(
        self,
        x: np.ndarray,
        prob: np.ndarray,
        brain_t: np.ndarray,
        lab: np.ndarray,
        ids: list[int],
        images_t: dict[str, np.ndarray],
    ) -> np.ndarray:
        """The candidate filter's probability that each candidate in ``ids`` is a lesion."""
        f = self.card.candidate_filter
        if not ids or self._filter is None or f is None:
            return np.ones(len(ids), np.float32)
        rows = self.describe_candidates(x, prob, brain_t, lab, ids, images_t, f.uses_anatomy)
        return self._classify(self._filter.all(), rows)

    def describe_candidates(
        self,
        x: np.ndarray,
        prob: np.ndarray,
        brain_t: np.ndarray,
        lab: np.ndarray,
        ids: list[int],
        images_t: dict[str, np.ndarray],
        anatomy: bool,
    ) -> np.ndarray:
        """:func:`openrecon_stroke.lesion_candidates.describe` rows of the candidates ``ids``
        (``anatomy``: with the features of this head's own anatomy, measured on the first input's
        image: :func:`head_anatomy`)."""
        inputs = self.card.inputs
        vox = lesion_candidates.voxel_arrays(x, list(self.card.features), brain_t, inputs)
        pri = self.priors()
        head = None
        if anatomy:
            img = images_t[inputs[0]]
            means = template.tissue_means(img, pri["gm"], pri["wm"], pri["csf"], brain_t & (pri["brain"] > 0))
            head = head_anatomy(img, brain_t, means, self.card.spacing_mm)
        return lesion_candidates.describe(prob, lab, ids, brain_t, vox, inputs, pri, self.card.spacing_mm, head)

    def probability_image(
        self, images_t: dict[str, np.ndarray], brain_t: np.ndarray, cascade: bool = True, candidates: bool = True
    ) -> sitk.Image:
        """:meth:`probability_arrays` as a SimpleITK image on the template grid."""
        out = sitk.GetImageFromArray(self.probability_arrays(images_t, brain_t, cascade, candidates))
        out.CopyInformation(self.grid())
        return out

    @staticmethod
    def on_grid(
        prob_t: sitk.Image, image: sitk.Image, to_template: sitk.Transform, box: Box | None = None
    ) -> np.ndarray:
        """A template-space probability on ``image``'s grid (``to_template``: its points -> template);
        with ``box`` (e.g. the brain's), only there (0 elsewhere)."""
        return resample_array(prob_t, image, to_template, sitk.sitkLinear, 0.0, sitk.sitkFloat32, box)
