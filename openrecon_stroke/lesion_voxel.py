"""Template-space lesion models: a voxel classifier (ONNX) over features of the registered brain.

The model card (``card.json``, ``"kind": "voxel_classifier"``) names everything the runner needs:

* ``inputs``: contrasts, e.g. ``["t1", "flair"]``;
* ``template``: ``{"name": ..., "spacing_mm": 1.5}``: the template grid the features are computed on
  (:func:`openrecon_stroke.template.template_grid`);
* ``features``: feature names in the model's column order (:mod:`openrecon_stroke.voxel_features`);
* ``normative``: folder of the normative model (relative to the card), when a feature needs it;
* ``files``: ``[{"file": "model.onnx", "sha256": ...}]`` (several files are averaged);
* ``output``: ``{"activation": "probability", "channel": 1}``: which column of the ONNX output
  ``probabilities`` is the lesion class;
* ``smoothing_mm`` (optional): Gaussian smoothing of the probability map in template space;
* ``threshold``, ``min_lesion_mm3``, ``status``, ``status_note``, ``training``, ``metrics``.

Flow: each contrast (N4-corrected, on its own grid) is resampled once onto the template grid
through its template transform; tissue intensities are estimated there; features go through
the ONNX model in blocks of rows; the probability map is returned on the template grid. The
stage maps it back onto every series' own grid (:meth:`VoxelLesionModel.on_grid`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from . import template, voxel_features
from .model_card import LazySessions, ModelCardError, read_card_json, verify_model_file

#: Rows per ONNX Runtime call (bounds memory: rows x features x 4 bytes).
BLOCK_ROWS = 200_000


@dataclass(frozen=True)
class VoxelModelCard:
    path: Path
    name: str
    version: str
    inputs: tuple[str, ...]
    spacing_mm: float
    features: tuple[str, ...]
    files: tuple[Path, ...]
    sha256: tuple[str, ...]
    channel: int = 1
    normative: Path | None = None
    smoothing_mm: float = 0.0
    threshold: float = 0.2
    min_lesion_mm3: float = 10.0
    status: str = ""
    status_note: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.inputs or any(c not in ("t1", "flair") for c in self.inputs):
            raise ModelCardError(f"{self.path}: inputs must be contrasts among t1, flair; got {self.inputs}")
        if not 0.5 <= self.spacing_mm <= 4:
            raise ModelCardError(f"{self.path}: template spacing_mm must be 0.5-4 mm")
        known = set(voxel_features.PRIOR_FEATURES) | {f"{c}_{f}" for c in self.inputs
                                                      for f in voxel_features.IMAGE_FEATURES}
        bad = [f for f in self.features if f not in known]
        if bad or not self.features:
            raise ModelCardError(f"{self.path}: unknown features {bad} (known: {sorted(known)})")
        needs_norm = any(f.split("_", 1)[1] in voxel_features.NORMATIVE_FEATURES for f in self.features
                         if not f.startswith("prior_"))
        if needs_norm and self.normative is None:
            raise ModelCardError(f"{self.path}: features {list(self.features)} need a 'normative' model folder")
        if not self.files:
            raise ModelCardError(f"{self.path}: no model files listed")
        if not 0 < self.threshold < 1:
            raise ModelCardError(f"{self.path}: threshold must be in (0, 1)")

    @staticmethod
    def load(path: str | Path, verify: bool = True) -> "VoxelModelCard":
        card_file, d = read_card_json(path)
        if d.get("kind") != "voxel_classifier":
            raise ModelCardError(f"{card_file}: not a voxel classifier card (kind {d.get('kind')!r})")
        try:
            files = tuple(card_file.parent / f["file"] for f in d["files"])
            sums = tuple(str(f.get("sha256", "")) for f in d["files"])
            card = VoxelModelCard(
                path=card_file, name=str(d["name"]), version=str(d["version"]), inputs=tuple(d["inputs"]),
                spacing_mm=float(d["template"]["spacing_mm"]), features=tuple(d["features"]), files=files,
                sha256=sums, channel=int(d.get("output", {}).get("channel", 1)),
                normative=(card_file.parent / d["normative"]) if d.get("normative") else None,
                smoothing_mm=float(d.get("smoothing_mm", 0.0)), threshold=float(d.get("threshold", 0.2)),
                min_lesion_mm3=float(d.get("min_lesion_mm3", 10.0)), status=str(d.get("status", "")),
                status_note=str(d.get("status_note", "")),
                extra={k: d[k] for k in ("training", "metrics") if k in d})
        except (KeyError, TypeError, ValueError) as e:
            raise ModelCardError(f"{card_file}: missing or malformed field ({e})") from e
        if verify:
            for f, s in zip(card.files, card.sha256):
                verify_model_file(f, s, card_file)
        return card


def load_normative(folder: Path, contrasts, spacing_mm: float) -> voxel_features.Normative:
    """A normative model folder: ``normative.json`` plus ``<contrast>.npz`` holding ``mean`` and
    ``std`` (float16) on the template grid of ``spacing_mm``, cropped to ``box`` (z, y, x slices
    recorded in the json); outside the box the mean is 0 and the std 1."""
    meta = json.loads((Path(folder) / "normative.json").read_text())
    if abs(float(meta["spacing_mm"]) - spacing_mm) > 1e-6:
        raise ModelCardError(f"{folder}: normative model is on a {meta['spacing_mm']} mm grid, "
                             f"the lesion model needs {spacing_mm} mm")
    shape = tuple(int(v) for v in meta["shape"])
    box = tuple(slice(a, b) for a, b in meta["box"])
    mean, std = {}, {}
    for c in contrasts:
        f = Path(folder) / f"{c}.npz"
        if not f.is_file():
            raise ModelCardError(f"{folder}: no normative statistics for {c} ({f.name})")
        with np.load(f) as z:
            m = np.zeros(shape, np.float32)
            s = np.ones(shape, np.float32)
            m[box] = z["mean"].astype(np.float32)
            s[box] = z["std"].astype(np.float32)
        mean[c], std[c] = m, s
    return voxel_features.Normative(mean, std)


class VoxelLesionModel:
    """A voxel-classifier card with its ONNX Runtime sessions and normative model (loaded once)."""

    def __init__(self, card: VoxelModelCard):
        self.card = card
        self._sessions = LazySessions(card.files)
        self._normative = None

    @property
    def normative(self) -> voxel_features.Normative | None:
        if self._normative is None and self.card.normative is not None:
            self._normative = load_normative(self.card.normative, self.card.inputs, self.card.spacing_mm)
        return self._normative

    def grid(self) -> sitk.Image:
        return template.template_grid(self.card.spacing_mm)

    def priors(self) -> dict[str, np.ndarray]:
        return template.load_template(self.card.spacing_mm).arrays()

    def probability_arrays(self, images_t: dict[str, np.ndarray], brain_t: np.ndarray) -> np.ndarray:
        """Lesion probability ``(nz, ny, nx)`` on the template grid, from each contrast's image
        already on that grid and the brain mask there."""
        pri = self.priors()
        means = {c: template.tissue_means(images_t[c], pri["gm"], pri["wm"], pri["csf"], brain_t & (pri["brain"] > 0))
                 for c in self.card.inputs}
        x = voxel_features.compute(self.card.features, images_t, brain_t, means, pri, self.card.spacing_mm,
                                   self.normative)
        p = np.zeros(x.shape[0], np.float32)
        sessions = self._sessions.get()
        for s in sessions:
            name = s.get_inputs()[0].name
            out_names = [o.name for o in s.get_outputs()]
            col = out_names.index("probabilities") if "probabilities" in out_names else len(out_names) - 1
            for a in range(0, x.shape[0], BLOCK_ROWS):
                prob = s.run([out_names[col]], {name: x[a:a + BLOCK_ROWS]})[0]
                p[a:a + BLOCK_ROWS] += np.asarray(prob)[:, self.card.channel]
        p /= len(sessions)
        out = np.zeros(brain_t.shape, np.float32)
        out[brain_t] = p
        if self.card.smoothing_mm > 0:
            out = voxel_features.smooth_in(out, brain_t, self.card.smoothing_mm, self.card.spacing_mm)
        return out

    def probability(self, images: dict[str, sitk.Image], brain: sitk.Image,
                    to_native: dict[str, sitk.Transform], reference: str) -> sitk.Image:
        """Lesion probability on the template grid (SimpleITK image).

        ``images``: per card input, the N4-corrected series on its own grid; ``brain``: the brain
        mask on the grid of ``reference``; ``to_native``: per contrast, the transform mapping
        template points to that series' points.
        """
        grid = self.grid()
        imgs = {c: sitk.GetArrayFromImage(sitk.Resample(sitk.Cast(images[c], sitk.sitkFloat32), grid, to_native[c],
                                                        sitk.sitkLinear, 0.0, sitk.sitkFloat32))
                for c in self.card.inputs}
        b = sitk.GetArrayFromImage(sitk.Resample(sitk.Cast(brain, sitk.sitkFloat32), grid, to_native[reference],
                                                 sitk.sitkLinear, 0.0, sitk.sitkFloat32)) >= 0.5
        prob = self.probability_arrays(imgs, b)
        out = sitk.GetImageFromArray(prob)
        out.CopyInformation(grid)
        return out

    @staticmethod
    def on_grid(prob_t: sitk.Image, image: sitk.Image, to_template: sitk.Transform) -> np.ndarray:
        """A template-space probability on ``image``'s grid (``to_template``: its points -> template)."""
        return sitk.GetArrayFromImage(sitk.Resample(prob_t, image, to_template, sitk.sitkLinear, 0.0,
                                                    sitk.sitkFloat32))


def dilate_mm(mask: np.ndarray, mm: float, spacing_mm: float) -> np.ndarray:
    return ndimage.binary_dilation(mask, iterations=max(1, int(round(mm / spacing_mm))))
