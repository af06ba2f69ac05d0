"""nnU-Net v2 inference, written anew from what nnU-Net documents and does (numpy, scipy,
SimpleITK; no PyTorch, no nnunetv2), so that a team's own ``3d_fullres`` model exported to ONNX
(``openrecon-stroke import-nnunet``) gives nnU-Net's answer here.

The card section :class:`NnUNetPreprocessing` (``"preprocessing": {"scheme": "nnunet_v2", ...}``
in ``card.json``) records every setting; :func:`predict_images` (SimpleITK images) and
:func:`predict_arrays` (arrays and spacing) apply them:

1. the channels as nnU-Net's SimpleITK reader sees them: the voxel array ``(z, y, x)`` of each
   image exactly as stored (the direction is *not* applied; optionally the image is first
   reoriented, by an exact axis permutation/flip, to ``orientation``, as nnU-Net's
   ``*WithReorient`` readers do), spacing ``(dz, dy, dx)`` in mm;
2. ``transpose_forward`` of the array axes (and of the spacing);
3. crop to the bounding box of the non-zero voxels of any channel (holes filled);
4. per-channel normalisation (``ZScoreNormalization`` over the whole crop, or only inside the
   non-zero mask when ``use_mask_for_norm``; ``CTNormalization`` with the dataset's foreground
   percentiles and statistics; ``NoNormalization``; ``RescaleTo01Normalization``);
5. resampling to ``target_spacing``: new shape = round(old spacing / new spacing x old shape);
   cubic spline (``order``) on voxel centres with edge values beyond the border, no
   anti-aliasing, clipped to the input's range; where either spacing is anisotropic (largest /
   smallest > 3, one axis clearly coarsest) each slice across that axis is resampled in-plane
   and the slice axis with ``order_z`` (nearest neighbour) apart;
6. Gaussian-weighted sliding window (step 0.5 of the patch, sigma 1/8 of the patch), logits
   averaged over mirrorings (float32), then over folds; the weighted sums, the fold average and
   the resampled logits are kept in half precision, as nnU-Net keeps them (on CPU too): this
   is what makes its answer at the edges of the crop, where the Gaussian weights are tiny,
   reproducible here;
7. back: logits resampled to the cropped shape (``order`` 1, same separate-z rule), softmax,
   background probability 1 outside the crop, axes transposed back.

Arrays here are numpy ``(channels, z, y, x)`` in SimpleITK's order; nnU-Net names the first
array axis "x", which is the same memory axis.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .sliding_window import mirrored_mean, mirrorings, pad_to_patch, windows

SCHEME = "nnunet_v2"
#: nnU-Net's ``ANISO_THRESHOLD``: a spacing is anisotropic when largest / smallest exceeds it.
ANISOTROPY_THRESHOLD = 3.0
NORMALISATIONS = ("ZScoreNormalization", "CTNormalization", "NoNormalization", "RescaleTo01Normalization")
#: nnU-Net's Gaussian map is stored in half precision with its peak at this value (the floor
#: that replaces zeros comes from there).
_GAUSSIAN_PEAK = 10.0


@dataclass(frozen=True)
class Resampling:
    """One of nnU-Net's ``resample_data_or_seg_to_shape`` settings: spline ``order`` (in-plane,
    or everywhere when not separate-z), ``order_z`` along a separately resampled slice axis, and
    ``force_separate_z`` (None: decide from the spacings)."""

    order: int
    order_z: int
    force_separate_z: bool | None = None

    def __post_init__(self):
        if not (0 <= self.order <= 5 and 0 <= self.order_z <= 5):
            raise ValueError(f"resampling orders must be 0-5, got order {self.order}, order_z {self.order_z}")
        if self.force_separate_z not in (None, True, False):
            raise ValueError("force_separate_z must be true, false or null")

    def as_dict(self) -> dict:
        return {"order": self.order, "order_z": self.order_z, "force_separate_z": self.force_separate_z}

    @staticmethod
    def from_dict(d: dict) -> Resampling:
        return Resampling(int(d["order"]), int(d["order_z"]), d.get("force_separate_z"))


@dataclass(frozen=True)
class NnUNetPreprocessing:
    """The ``preprocessing`` section of an imported nnU-Net v2 card (``scheme: nnunet_v2``).

    Axes: ``target_spacing`` (mm), ``patch_size`` (voxels) and ``mirror_axes`` are in the
    network's axis order, i.e. after ``transpose_forward`` of the ``(z, y, x)`` array axes.
    """

    transpose_forward: tuple[int, ...]
    target_spacing: tuple[float, ...]
    normalisation: tuple[str, ...]
    use_mask_for_norm: tuple[bool, ...]
    data_resampling: Resampling
    probability_resampling: Resampling
    patch_size: tuple[int, ...]
    labels: tuple[str, ...]
    mirror_axes: tuple[int, ...] = ()
    #: per channel: ``{"mean", "std", "percentile_00_5", "percentile_99_5"}`` (CTNormalization only)
    intensity_properties: tuple[dict, ...] = ()
    #: "" (the stored voxel axes, as SimpleITKIO / NibabelIO) or an ITK code such as "RAS"
    orientation: str = ""
    crop_to_nonzero: bool = True
    step: float = 0.5
    sigma_scale: float = 0.125
    anisotropy_threshold: float = ANISOTROPY_THRESHOLD
    #: the images the model was trained on were brain-extracted (zero outside the brain)
    skull_stripped: bool = False
    #: where it came from (dataset, trainer, plans, checkpoints; informative only)
    source: dict = field(default_factory=dict)

    def __post_init__(self):
        if sorted(self.transpose_forward) != [0, 1, 2]:
            raise ValueError(f"transpose_forward must be a permutation of 0, 1, 2, got {list(self.transpose_forward)}")
        if len(self.target_spacing) != 3 or min(self.target_spacing) <= 0:
            raise ValueError("target_spacing must be three positive numbers (mm)")
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise ValueError("patch_size must be three positive sizes")
        n = len(self.normalisation)
        if n < 1 or len(self.use_mask_for_norm) != n:
            raise ValueError("normalisation and use_mask_for_norm need one entry per channel")
        for s in self.normalisation:
            if s not in NORMALISATIONS:
                raise ValueError(f"unknown normalisation {s!r} (known: {', '.join(NORMALISATIONS)})")
        if "CTNormalization" in self.normalisation:
            if len(self.intensity_properties) != n:
                raise ValueError("CTNormalization needs intensity_properties for every channel")
            for c, (s, props) in enumerate(zip(self.normalisation, self.intensity_properties)):
                miss = [k for k in ("mean", "std", "percentile_00_5", "percentile_99_5") if k not in props]
                if s == "CTNormalization" and miss:
                    raise ValueError(f"channel {c}: CTNormalization needs intensity properties {miss}")
        if len(self.labels) < 2:
            raise ValueError("labels must name background and at least one class")
        if any(a not in (0, 1, 2) for a in self.mirror_axes):
            raise ValueError("mirror_axes are network axes 0, 1, 2")
        if self.orientation and (len(self.orientation) != 3 or set(self.orientation.upper()) - set("LRAPSI")):
            raise ValueError(f"orientation must be empty (stored axes) or a code such as RAS, got {self.orientation!r}")
        if not 0 < self.step <= 1:
            raise ValueError("step must be in (0, 1]")
        if self.sigma_scale <= 0:
            raise ValueError("sigma_scale must be positive")

    @property
    def n_channels(self) -> int:
        return len(self.normalisation)

    @property
    def transpose_backward(self) -> tuple[int, ...]:
        return tuple(int(i) for i in np.argsort(self.transpose_forward))

    def as_dict(self) -> dict:
        return {
            "scheme": SCHEME,
            "orientation": self.orientation or "stored",
            "transpose_forward": list(self.transpose_forward),
            "crop_to_nonzero": self.crop_to_nonzero,
            "normalisation": list(self.normalisation),
            "use_mask_for_norm": list(self.use_mask_for_norm),
            "intensity_properties": [dict(p) for p in self.intensity_properties],
            "target_spacing_mm": list(self.target_spacing),
            "resampling": {
                "data": self.data_resampling.as_dict(),
                "probabilities": self.probability_resampling.as_dict(),
                "anisotropy_threshold": self.anisotropy_threshold,
            },
            "patch_size": list(self.patch_size),
            "sliding_window": {"step": self.step, "gaussian_sigma_scale": self.sigma_scale},
            "mirror_axes": list(self.mirror_axes),
            "labels": list(self.labels),
            "skull_stripped": self.skull_stripped,
            "source": dict(self.source),
        }

    @staticmethod
    def from_dict(d: dict) -> NnUNetPreprocessing:
        """Parse and validate a card section; every problem is a ``ValueError`` naming the key."""
        if not isinstance(d, dict) or d.get("scheme") != SCHEME:
            raise ValueError(
                f"unknown preprocessing scheme {d.get('scheme') if isinstance(d, dict) else d!r} (known: {SCHEME})"
            )
        try:
            res = d["resampling"]
            win = d.get("sliding_window", {})
            orient = str(d.get("orientation", "stored"))
            return NnUNetPreprocessing(
                transpose_forward=tuple(int(i) for i in d["transpose_forward"]),
                target_spacing=tuple(float(v) for v in d["target_spacing_mm"]),
                normalisation=tuple(str(s) for s in d["normalisation"]),
                use_mask_for_norm=tuple(bool(b) for b in d["use_mask_for_norm"]),
                data_resampling=Resampling.from_dict(res["data"]),
                probability_resampling=Resampling.from_dict(res["probabilities"]),
                patch_size=tuple(int(v) for v in d["patch_size"]),
                labels=tuple(str(s) for s in d["labels"]),
                mirror_axes=tuple(int(a) for a in d.get("mirror_axes", ())),
                intensity_properties=tuple(dict(p) for p in d.get("intensity_properties", ())),
                orientation="" if orient == "stored" else orient,
                crop_to_nonzero=bool(d.get("crop_to_nonzero", True)),
                step=float(win.get("step", 0.5)),
                sigma_scale=float(win.get("gaussian_sigma_scale", 0.125)),
                anisotropy_threshold=float(res.get("anisotropy_threshold", ANISOTROPY_THRESHOLD)),
                skull_stripped=bool(d.get("skull_stripped", False)),
                source=dict(d.get("source", {})),
            )
        except KeyError as e:
            raise ValueError(f"the nnunet_v2 section lacks the key {e}") from None


# --- resampling (nnU-Net's resample_data_or_seg_to_shape, written anew) --------------------


def new_shape(shape, spacing, target_spacing) -> tuple[int, ...]:
    """nnU-Net's resampled shape: ``round(spacing / target x shape)`` per axis (Python rounding)."""
    return tuple(int(round(s / t * n)) for s, t, n in zip(spacing, target_spacing, shape))


def separate_z_axis(force: bool | None, spacing, target_spacing, threshold: float = ANISOTROPY_THRESHOLD) -> int | None:
    """The axis resampled apart (nnU-Net's separate-z rule), or None.

    Decided from the current spacing if it is anisotropic, else from the target spacing; the
    axis is the one with the largest spacing, and only when exactly one axis has it."""

    def lowres(sp):
        sp = np.asarray(sp, float)
        return np.where(sp.max() / sp == 1)[0]

    if force is not None:
        axes = lowres(spacing) if force else None
    elif max(spacing) / min(spacing) > threshold:
        axes = lowres(spacing)
    elif max(target_spacing) / min(target_spacing) > threshold:
        axes = lowres(target_spacing)
    else:
        axes = None
    return int(axes[0]) if axes is not None and len(axes) == 1 else None


def _resize(a: np.ndarray, shape, order: int) -> np.ndarray:
    """Spline of ``order`` through voxel centres (grid mode), edge value beyond the border, no
    anti-aliasing, result clipped to the input's range (float64)."""
    if tuple(a.shape) == tuple(shape):
        return a.copy()
    out = ndimage.zoom(a, [n / o for n, o in zip(shape, a.shape)], order=order, mode="nearest", grid_mode=True)
    if order > 0:
        np.clip(out, a.min(), a.max(), out=out)
    return out


def _resample_axis(a: np.ndarray, axis: int, n_new: int, order: int) -> np.ndarray:
    """Resample one axis to ``n_new`` samples (voxel centres aligned, edge mode): nearest
    neighbour picks whole slices, as nnU-Net's ``map_coordinates`` does for ``order_z`` 0."""
    n_old = a.shape[axis]
    coords = float(n_old) / n_new * (np.arange(n_new) + 0.5) - 0.5
    if order == 0:
        idx = ndimage.map_coordinates(np.arange(n_old, dtype=float), [coords], order=0, mode="nearest")
        return np.take(a, idx.astype(np.intp), axis=axis)
    zoom = [1.0] * a.ndim
    zoom[axis] = n_new / n_old
    return ndimage.zoom(a, zoom, order=order, mode="nearest", grid_mode=True)


def resample(
    data: np.ndarray, shape, spacing, target_spacing, how: Resampling, threshold: float = ANISOTROPY_THRESHOLD
) -> np.ndarray:
    """``(c, ...)`` data to spatial ``shape`` (``spacing`` -> ``target_spacing`` decides the
    separate-z axis); same dtype as ``data``, float64 arithmetic."""
    shape = tuple(int(n) for n in shape)
    if tuple(data.shape[1:]) == shape:
        return data
    axis = separate_z_axis(how.force_separate_z, spacing, target_spacing, threshold)
    out = np.empty((data.shape[0],) + shape, data.dtype)
    for c in range(data.shape[0]):
        a = data[c].astype(np.float64)
        if axis is None:
            out[c] = _resize(a, shape, how.order)
            continue
        inplane = tuple(n for i, n in enumerate(shape) if i != axis)
        slices = [_resize(np.take(a, k, axis=axis), inplane, how.order) for k in range(a.shape[axis])]
        tmp = np.stack(slices, axis=axis)
        out[c] = _resample_axis(tmp, axis, shape[axis], how.order_z) if a.shape[axis] != shape[axis] else tmp
    return out


# --- preprocessing ----------------------------------------------------------------------------


def nonzero_box(data: np.ndarray) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Mask of voxels non-zero in any channel (holes filled) and its bounding box (the whole
    array when nothing is non-zero)."""
    mask = ndimage.binary_fill_holes(np.any(data != 0, axis=0))
    if not mask.any():
        return mask, tuple(slice(0, n) for n in mask.shape)
    box = []
    for ax in range(3):
        hit = np.flatnonzero(mask.any(axis=tuple(i for i in range(3) if i != ax)))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return mask, tuple(box)


def normalise(
    image: np.ndarray, mask: np.ndarray | None, scheme: str, use_mask: bool, props: dict | None = None
) -> np.ndarray:
    """One channel (float32, changed in place and returned), as nnU-Net's normalisation classes."""
    eps = 1e-8
    if scheme == "ZScoreNormalization":
        if use_mask and mask is not None:
            sel = image[mask]
            mean, std = sel.mean(), sel.std()
            image[mask] = (sel - mean) / max(std, eps)
        else:
            mean, std = image.mean(), image.std()
            image -= mean
            image /= max(std, eps)
    elif scheme == "CTNormalization":
        assert props is not None, "CTNormalization needs the channel's intensity properties"
        np.clip(image, props["percentile_00_5"], props["percentile_99_5"], out=image)
        image -= props["mean"]
        image /= max(props["std"], eps)
    elif scheme == "RescaleTo01Normalization":
        image -= image.min()
        image /= np.clip(image.max(), a_min=eps, a_max=None)
    elif scheme != "NoNormalization":
        raise ValueError(f"unknown normalisation {scheme!r}")
    return image


@dataclass
class Prepared:
    """The network input and what it takes to put the output back."""

    data: np.ndarray  # (c, *) float32, network axes, target spacing
    spacing: tuple[float, ...]  # original spacing in network axes
    shape_before_crop: tuple[int, ...]  # network axes
    box: tuple[slice, ...]  # crop, network axes
    shape_after_crop: tuple[int, ...]


def preprocess(channels: np.ndarray, spacing_zyx, p: NnUNetPreprocessing) -> Prepared:
    """``(c, z, y, x)`` arrays and their spacing -> nnU-Net's network input (steps 2-5)."""
    if channels.shape[0] != p.n_channels:
        raise ValueError(f"the model takes {p.n_channels} channel(s), got {channels.shape[0]}")
    tf = p.transpose_forward
    data = channels.astype(np.float32).transpose((0,) + tuple(i + 1 for i in tf))
    spacing = tuple(float(abs(spacing_zyx[i])) for i in tf)
    before = tuple(int(n) for n in data.shape[1:])
    if p.crop_to_nonzero:
        mask, box = nonzero_box(data)
        data = np.ascontiguousarray(data[(slice(None),) + box])
        mask = mask[box]
    else:
        mask, box = None, tuple(slice(0, n) for n in before)
    after = tuple(int(n) for n in data.shape[1:])
    for c in range(data.shape[0]):
        props = p.intensity_properties[c] if p.intensity_properties else None
        data[c] = normalise(data[c], mask, p.normalisation[c], p.use_mask_for_norm[c], props)
    target = new_shape(after, spacing, p.target_spacing)
    data = resample(data, target, spacing, p.target_spacing, p.data_resampling, p.anisotropy_threshold)
    return Prepared(data, spacing, before, box, after)


def gaussian_weights(patch: Sequence[int], sigma_scale: float = 0.125) -> np.ndarray:
    """nnU-Net's importance map: a unit impulse at the patch centre (index n // 2) blurred with
    sigma = ``sigma_scale`` x patch size (zero beyond the border), peak scaled to 10 and stored
    in half precision, zeros replaced by its smallest non-zero value (float32 here)."""
    impulse = np.zeros(tuple(patch))
    impulse[tuple(n // 2 for n in patch)] = 1.0
    g = ndimage.gaussian_filter(impulse, [n * sigma_scale for n in patch], 0, mode="constant", cval=0)
    g = (g / (g.max() / _GAUSSIAN_PEAK)).astype(np.float16)
    zero = g == 0
    if zero.any():
        g[zero] = g[~zero].min()
    return g.astype(np.float32)


def sliding_window_logits(
    sessions, data: np.ndarray, p: NnUNetPreprocessing, mirror: bool = True, progress: Callable[[], None] | None = None
) -> np.ndarray:
    """Network-grid logits ``(C, *)`` (float16) for network input ``data`` (step 6): per fold,
    each window's mirror-averaged float32 logits times the Gaussian are added into half-precision
    sums, divided by the half-precision sum of weights; folds summed and averaged in half
    precision."""
    x, crop = pad_to_patch(data, p.patch_size)
    shape = x.shape[1:]
    g = gaussian_weights(p.patch_size, p.sigma_scale)
    g16 = g.astype(np.float16)
    flips = mirrorings(p.mirror_axes if mirror else ())
    slices = windows(shape, p.patch_size, 1.0 - p.step)
    total: np.ndarray | None = None
    for sess in sessions:
        name = sess.get_inputs()[0].name
        acc = np.zeros((len(p.labels),) + shape, np.float16)  # one output channel per label
        weight = np.zeros(shape, np.float16)
        for sl in slices:
            out = mirrored_mean(sess, x[(slice(None),) + sl][None], flips, name) * g
            at = (slice(None),) + sl
            acc[at] = (acc[at].astype(np.float32) + out).astype(np.float16)
            weight[sl] = weight[sl] + g16
            if progress is not None:
                progress()
        logits = (acc.astype(np.float32) / weight.astype(np.float32)).astype(np.float16)
        total = logits if total is None else total + logits
    assert total is not None, "no model files"
    if len(sessions) > 1:
        total = (total.astype(np.float32) / len(sessions)).astype(np.float16)
    return total[(slice(None),) + crop]


def restore(logits: np.ndarray, prep: Prepared, p: NnUNetPreprocessing) -> np.ndarray:
    """Network-grid logits ``(C, *)`` -> class probabilities ``(C, z, y, x)`` float32 on the
    input's array (step 7)."""
    logits = resample(
        logits, prep.shape_after_crop, p.target_spacing, prep.spacing, p.probability_resampling, p.anisotropy_threshold
    ).astype(np.float32)
    probs = np.zeros((logits.shape[0],) + prep.shape_before_crop, np.float32)
    probs[0] = 1.0
    e = np.exp(logits - logits.max(axis=0, keepdims=True))
    probs[(slice(None),) + prep.box] = e / e.sum(axis=0, keepdims=True)
    return probs.transpose((0,) + tuple(i + 1 for i in p.transpose_backward))


def predict_arrays(
    sessions,
    channels: np.ndarray,
    spacing_zyx,
    p: NnUNetPreprocessing,
    mirror: bool = True,
    progress: Callable[[], None] | None = None,
    timings: dict | None = None,
) -> np.ndarray:
    """Class probabilities ``(C, z, y, x)`` for ``(c, z, y, x)`` input arrays (steps 2-7);
    ``sessions``: one ONNX Runtime session per fold; ``timings`` (if given) gets the seconds of
    ``preprocess``, ``network`` and ``restore``."""
    t = [time.perf_counter()]
    prep = preprocess(channels, spacing_zyx, p)
    t.append(time.perf_counter())
    logits = sliding_window_logits(sessions, prep.data, p, mirror, progress)
    t.append(time.perf_counter())
    probs = restore(logits, prep, p)
    t.append(time.perf_counter())
    if timings is not None:
        for k, a, b in zip(("preprocess", "network", "restore"), t, t[1:]):
            timings[k] = timings.get(k, 0.0) + b - a
    return probs


# --- images: orientation and channels ------------------------------------------------------------


def orientation_code(image: sitk.Image) -> str:
    return sitk.DICOMOrientImageFilter_GetOrientationFromDirectionCosines(image.GetDirection())


def model_arrays(images: Sequence[sitk.Image], p: NnUNetPreprocessing) -> tuple[np.ndarray, tuple, sitk.Image]:
    """``(c, z, y, x)`` float32 arrays, spacing ``(dz, dy, dx)`` and the grid they are on (the
    first image, reoriented to the card's ``orientation`` when it has one). The images must
    share one grid (nnU-Net requires it)."""
    ref = images[0]
    for i, im in enumerate(images[1:], start=1):
        if im.GetSize() != ref.GetSize() or not np.allclose(im.GetSpacing(), ref.GetSpacing(), atol=1e-4):
            raise ValueError(
                f"channel {i} is not on channel 0's voxel grid (size {im.GetSize()} vs "
                f"{ref.GetSize()}); resample it first"
            )
    if p.orientation:
        images = [sitk.DICOMOrient(im, p.orientation.upper()) for im in images]
    arr = np.stack([sitk.GetArrayFromImage(im).astype(np.float32) for im in images])
    return arr, tuple(images[0].GetSpacing())[::-1], images[0]


def back_to(array: np.ndarray, grid: sitk.Image, original: sitk.Image) -> np.ndarray:
    """An array on ``grid`` (``original`` reoriented by :func:`model_arrays`) back on
    ``original``'s voxel axes (exact permutation/flip)."""
    if grid.GetSize() == original.GetSize() and np.allclose(grid.GetDirection(), original.GetDirection()):
        return array
    img = sitk.GetImageFromArray(array)
    img.CopyInformation(grid)
    back = sitk.DICOMOrient(img, orientation_code(original))
    if back.GetSize() != original.GetSize():
        raise ValueError("could not undo the reorientation exactly")
    return sitk.GetArrayFromImage(back)


def predict_images(
    sessions,
    images: Sequence[sitk.Image],
    p: NnUNetPreprocessing,
    mirror: bool = True,
    progress: Callable[[], None] | None = None,
    timings: dict | None = None,
) -> np.ndarray:
    """Class probabilities ``(C, z, y, x)`` on the first image's own voxel grid."""
    arr, spacing, grid = model_arrays(images, p)
    probs = predict_arrays(sessions, arr, spacing, p, mirror=mirror, progress=progress, timings=timings)
    return np.stack([back_to(np.ascontiguousarray(c), grid, images[0]) for c in probs])


def n_windows(shape_zyx, spacing_zyx, p: NnUNetPreprocessing) -> int:
    """Sliding-window positions for an image of this size (for progress reports; crop ignored)."""
    tf = p.transpose_forward
    shape = new_shape([shape_zyx[i] for i in tf], [spacing_zyx[i] for i in tf], p.target_spacing)
    n = 1
    for s, k in zip(shape, p.patch_size):
        n *= 1 if s <= k else int(math.ceil((s - k) / (k * p.step))) + 1
    return n
