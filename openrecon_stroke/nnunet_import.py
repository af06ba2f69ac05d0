"""``openrecon-stroke import-nnunet``: an nnU-Net v2 trained-model folder -> ONNX folds + card.

Needs PyTorch and ``dynamic_network_architectures`` (the optional ``nnunet`` extra), here only:
the server and ``predict`` run the result on ONNX Runtime. nnunetv2 itself is not needed: the
network is rebuilt from ``plans.json`` (``PlainConvUNet`` or ``ResidualEncoderUNet``, which
covers the default plans and the ResEnc M/L/XL presets) and each fold's weights are loaded
strictly into it, so a trainer that built something else fails loudly here.

Read (nnU-Net's result layout, ``nnUNet_results/DatasetXXX_Name/Trainer__Plans__3d_fullres``):
``dataset.json`` (channel names, labels), ``plans.json`` (the configuration's preprocessing
and architecture) and ``fold_K/<checkpoint>`` (weights, trainer name, the mirroring axes the
trainer allows at inference). Written: ``foldK.onnx`` per fold (deep supervision off, one
``(1, channels, *patch)`` input ``image``, one output ``logits``) and ``card.json`` with the
``nnunet_v2`` preprocessing section (:class:`openrecon_stroke.nnunet.NnUNetPreprocessing`).
"""

from __future__ import annotations

import datetime
import importlib
import json
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .model_card import ModelCard, file_sha256
from .nnunet import NORMALISATIONS, SCHEME, NnUNetPreprocessing, Resampling

SUPPORTED_ARCHITECTURES = {
    "dynamic_network_architectures.architectures.unet.PlainConvUNet": "PlainConvUNet",
    "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet": "ResidualEncoderUNet",
}
#: nnU-Net image readers -> the orientation they put the voxel axes in ("" = as stored)
READERS = {"SimpleITKIO": "", "NibabelIO": "", "SimpleITKIOWithReorient": "RAS", "NibabelIOWithReorient": "RAS"}
RESAMPLING_FN = "resample_data_or_seg_to_shape"
OPSET = 17
DOCS = "docs/nnunet.md"


class NnUNetImportError(ValueError):
    """The folder is not an nnU-Net v2 result this importer can take (the message says why)."""


def contrast_of(channel_name: str) -> str | None:
    """``t1`` / ``flair`` for an nnU-Net channel name (``T1``, ``T1w``, ``MPRAGE``, ``FLAIR``,
    ``T2-FLAIR``, ...), None when it is neither."""
    n = re.sub(r"[^a-z0-9]", "", channel_name.lower())
    if "flair" in n:
        return "flair"
    if n.startswith("t1") or n in ("mprage", "spgr", "tfl", "bravo", "mp2rage"):
        return "t1"
    return None


def _json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise NnUNetImportError(
            f"{path.parent} is not an nnU-Net v2 result folder: {path.name} is missing "
            f"({what}). Give the folder that holds dataset.json, plans.json and fold_K/, e.g. "
            "nnUNet_results/Dataset001_Stroke/nnUNetTrainer__nnUNetResEncUNetMPlans__3d_fullres"
        ) from None
    except json.JSONDecodeError as e:
        raise NnUNetImportError(f"{path} is not valid JSON ({e})") from None


def _hint_for_parent(folder: Path) -> str:
    subs = sorted(p.name for p in folder.iterdir() if p.is_dir() and "__" in p.name) if folder.is_dir() else []
    return f" (it holds {', '.join(subs)}: give one of those)" if subs else ""


def resolve_configuration(plans: dict, name: str) -> dict:
    """The configuration with everything it ``inherits_from`` merged in (nnU-Net's rule)."""
    configs = plans.get("configurations", {})
    if name not in configs:
        raise NnUNetImportError(f"plans.json has no configuration {name!r} (it has: {', '.join(configs) or 'none'})")
    c = dict(configs[name])
    parent = c.pop("inherits_from", None)
    if parent:
        base = resolve_configuration(plans, parent)
        base.update(c)
        c = base
    return c


def read_folds(results: Path, folds, checkpoint: str) -> list[tuple[str, Path]]:
    available = sorted(p.name[len("fold_") :] for p in results.glob("fold_*") if (p / checkpoint).is_file())
    if folds is None or len(folds) == 0:
        if not available:
            present = sorted(p.name for p in results.glob("fold_*"))
            raise NnUNetImportError(
                f"no fold in {results} has {checkpoint}"
                + (
                    f" (folders: {', '.join(present)}; pass --checkpoint "
                    "checkpoint_best.pth for an unfinished training?)"
                    if present
                    else " (no fold_K folders at all)"
                )
            )
        folds = available
    folds = [str(f) for f in folds]
    missing = [f for f in folds if f not in available]
    if missing:
        raise NnUNetImportError(
            f"{results}: fold(s) {', '.join(missing)} have no {checkpoint} "
            f"(folds with it: {', '.join(available) or 'none'})"
        )
    return [(f, results / f"fold_{f}" / checkpoint) for f in folds]


def _import_torch_name(dotted: str):
    if not dotted.startswith("torch.nn."):
        raise NnUNetImportError(
            f"plans.json names {dotted!r} as a network building block; only torch.nn classes "
            f"are rebuilt here (export by hand: {DOCS})"
        )
    module, _, name = dotted.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise NnUNetImportError(f"plans.json names {dotted!r}, which this PyTorch does not have") from None


def build_network(config: dict, n_in: int, n_out: int):
    """The configuration's network, deep supervision off (PyTorch, eval mode)."""
    arch = config["architecture"]
    cls_name = arch["network_class_name"]
    try:
        from dynamic_network_architectures.architectures import unet
    except ImportError:
        raise NnUNetImportError(
            "dynamic_network_architectures is not installed: pip install "
            "'openrecon-stroke[nnunet]' (after the CPU PyTorch wheel)"
        ) from None
    kwargs = dict(arch.get("arch_kwargs", {}))
    for k in arch.get("_kw_requires_import", ()):
        if kwargs.get(k) is not None:
            kwargs[k] = _import_torch_name(str(kwargs[k]))
    conv = kwargs.get("conv_op")
    if conv is None or conv.__name__ != "Conv3d":
        raise NnUNetImportError(f"the network uses {getattr(conv, '__name__', conv)}: only 3D networks are imported")
    cls = getattr(unet, SUPPORTED_ARCHITECTURES[cls_name])
    return cls(input_channels=n_in, num_classes=n_out, deep_supervision=False, **kwargs).eval()


def _store_fp16(path: Path) -> None:
    """Rewrite an ONNX file with every large float32 weight stored as float16 and cast back to
    float32 inside the graph (half the file; arithmetic stays float32)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    keep, casts = [], []
    for init in graph.initializer:
        w = numpy_helper.to_array(init)
        if w.dtype == np.float32 and w.size >= 1024:
            keep.append(numpy_helper.from_array(w.astype(np.float16), init.name + "_fp16"))
            casts.append(helper.make_node("Cast", [init.name + "_fp16"], [init.name], to=onnx.TensorProto.FLOAT))
        else:
            keep.append(init)
    del graph.initializer[:]
    graph.initializer.extend(keep)
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def load_checkpoint(path: Path, trust: bool = False) -> dict:
    """A checkpoint read as data only (tensors, numbers, strings, numpy scalars and arrays in its
    training log), never as code; ``trust`` lets PyTorch unpickle anything (as nnU-Net itself
    does) for a file whose origin you know."""
    import numpy
    import torch
    from torch.serialization import safe_globals

    core = getattr(numpy, "_core", None) or numpy.core  # numpy 2 / 1
    allowed = [numpy.ndarray, numpy.dtype, core.multiarray.scalar, core.multiarray._reconstruct]
    dtypes = getattr(numpy, "dtypes", None)
    allowed += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")] if dtypes else []
    try:
        if trust:
            return torch.load(str(path), map_location="cpu", weights_only=False)
        with safe_globals(allowed):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged or foreign file, or objects beyond data
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        hint = (
            "; it holds objects beyond weights and numbers: if you trust this file, add --trust-checkpoint"
            if "weights_only" in str(e) or "Unsupported global" in str(e)
            else ""
        )
        raise NnUNetImportError(
            f"{path} could not be read as an nnU-Net checkpoint ({type(e).__name__}: {first}){hint}"
        ) from None


def export_fold(net, weights: dict, n_in: int, patch, out: Path, fp16: bool) -> float:
    """Load ``weights`` strictly, export to ``out``; returns max |ONNX Runtime - PyTorch| on a
    random input (the export check)."""
    import torch

    missing, unexpected = [], []
    try:
        res = net.load_state_dict(weights, strict=True)
        missing, unexpected = list(res.missing_keys), list(res.unexpected_keys)
    except RuntimeError as e:
        raise NnUNetImportError(
            f"{out.stem}: the checkpoint's weights do not fit the network plans.json describes "
            f"({str(e).splitlines()[0]}); a custom trainer? export by hand ({DOCS})"
        ) from None
    if missing or unexpected:
        raise NnUNetImportError(f"{out.stem}: weights missing {missing[:3]} / unexpected {unexpected[:3]}")
    net.eval()
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(1, n_in, *patch)).astype(np.float32))
    with warnings.catch_warnings():  # instance norm exports with per-input statistics, which is what nnU-Net uses
        warnings.filterwarnings("ignore", message=".*instance_norm.*")
        torch.onnx.export(
            net,
            x,
            str(out),
            input_names=["image"],
            output_names=["logits"],
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    if fp16:
        _store_fp16(out)
    with torch.no_grad():
        ref = net(x).numpy()
    from .runtime import ort_session

    got = ort_session(out).run(None, {"image": x.numpy()})[0]
    return float(np.abs(got - ref).max())


@dataclass
class NnUNetResult:
    """What a result folder says, checked (no PyTorch needed): everything but the weights."""

    folder: Path
    dataset: dict
    plans: dict
    configuration_name: str
    configuration: dict
    folds: list[tuple[str, Path]]
    checkpoint: str
    channel_names: list[str]
    contrasts: list[str]
    labels: list[str]  # names in label order 0..n-1
    lesion_label: str
    normalisation: list[str]
    use_mask_for_norm: list[bool]
    reader: str
    architecture: str


def read_result(
    results_dir: str | Path,
    folds=None,
    checkpoint: str = "checkpoint_final.pth",
    contrasts=None,
    lesion_label: str | None = None,
    configuration: str | None = None,
) -> NnUNetResult:
    """Check an nnU-Net v2 result folder and read what the card needs from its JSON files;
    every problem is an :class:`NnUNetImportError` naming what is missing or unsupported.
    ``configuration`` defaults to the folder name's last ``__`` part (``3d_fullres``)."""
    results = Path(results_dir)
    if not results.is_dir():
        raise NnUNetImportError(f"{results} is not a folder")
    if not (results / "plans.json").is_file() and not (results / "dataset.json").is_file():
        raise NnUNetImportError(
            f"{results} is not an nnU-Net v2 result folder: no dataset.json or plans.json" + _hint_for_parent(results)
        )
    dataset = _json(results / "dataset.json", "channel names and labels")
    plans = _json(results / "plans.json", "preprocessing and architecture")
    fold_files = read_folds(results, folds, checkpoint)
    config_name = configuration or (results.name.rsplit("__", 1)[-1] if results.name.count("__") >= 2 else "")
    if not config_name:
        raise NnUNetImportError(
            f"{results.name} is not named Trainer__Plans__configuration as nnU-Net names its "
            "result folders; give --configuration 3d_fullres"
        )
    if config_name.startswith("2d"):
        raise NnUNetImportError(f"configuration {config_name} is 2D: only 3D configurations (3d_fullres) are imported")
    config = resolve_configuration(plans, config_name)
    if config.get("previous_stage"):
        raise NnUNetImportError(
            f"configuration {config_name} is a cascade stage (it needs the segmentation of "
            f"{config['previous_stage']} as input): only single-stage 3D configurations are "
            "imported"
        )
    if len(config.get("patch_size", ())) != 3 or len(config.get("spacing", ())) != 3:
        raise NnUNetImportError(f"configuration {config_name} is not 3D (patch size {config.get('patch_size')})")

    labels = dataset.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise NnUNetImportError("dataset.json has no 'labels'")
    if any(isinstance(v, (list, tuple)) for v in labels.values()) or dataset.get("regions_class_order"):
        raise NnUNetImportError(
            "dataset.json defines regions (region-based training, sigmoid outputs): only "
            "label-based models are imported"
        )
    heads = {k: int(v) for k, v in labels.items() if k != "ignore"}
    order = sorted(heads, key=lambda k: heads[k])
    if [heads[k] for k in order] != list(range(len(order))) or len(order) < 2:
        raise NnUNetImportError(f"labels must be background 0 and consecutive classes (nnU-Net's rule), got {heads}")
    if lesion_label is None:
        if len(order) != 2:
            raise NnUNetImportError(
                f"the model has {len(order) - 1} foreground labels ({', '.join(order[1:])}): "
                "say which is the lesion with --lesion-label NAME"
            )
        lesion_label = order[1]
    if lesion_label not in order[1:]:
        raise NnUNetImportError(f"--lesion-label {lesion_label!r} is not a foreground label ({', '.join(order[1:])})")

    names = dataset.get("channel_names") or dataset.get("modality")
    if not isinstance(names, dict) or not names:
        raise NnUNetImportError("dataset.json has no 'channel_names'")
    channel_names = [str(names[k]) for k in sorted(names, key=int)]
    n_in = len(channel_names)
    if contrasts:
        contrasts = [str(c).lower() for c in contrasts]
        if len(contrasts) != n_in:
            raise NnUNetImportError(
                f"--contrasts gives {len(contrasts)} contrast(s); the model has {n_in} channel(s) "
                f"({', '.join(channel_names)})"
            )
    else:
        contrasts = [contrast_of(n) for n in channel_names]
        unknown = [f"{i} ({n})" for i, (n, c) in enumerate(zip(channel_names, contrasts)) if c is None]
        if unknown:
            raise NnUNetImportError(
                f"channel {', '.join(unknown)} is neither T1-w nor FLAIR by its name; say which "
                "contrast each channel is with --contrasts t1 flair ..."
            )
    if any(c not in ("t1", "flair") for c in contrasts) or len(set(contrasts)) != len(contrasts):
        raise NnUNetImportError(f"contrasts must be distinct among t1, flair; got {contrasts}")

    if config.get("preprocessor_name", "DefaultPreprocessor") != "DefaultPreprocessor":
        raise NnUNetImportError(f"unsupported preprocessor {config['preprocessor_name']} (DefaultPreprocessor only)")
    norms = [str(s) for s in config.get("normalization_schemes", [])]
    if len(norms) != n_in:
        raise NnUNetImportError(f"plans give {len(norms)} normalisation scheme(s) for {n_in} channel(s)")
    bad = [s for s in norms if s not in NORMALISATIONS]
    if bad:
        raise NnUNetImportError(f"unknown normalisation {', '.join(bad)} (supported: {', '.join(NORMALISATIONS)})")
    if "CTNormalization" in norms:
        props = plans.get("foreground_intensity_properties_per_channel", {})
        if any(str(c) not in props for c, s in enumerate(norms) if s == "CTNormalization"):
            raise NnUNetImportError("CTNormalization needs foreground_intensity_properties_per_channel in plans.json")
    for key in ("resampling_fn_data", "resampling_fn_probabilities"):
        if config.get(key) != RESAMPLING_FN:
            raise NnUNetImportError(f"unsupported {key} {config.get(key)!r} (only nnU-Net's default {RESAMPLING_FN})")
    reader = plans.get("image_reader_writer", "SimpleITKIO")
    if reader not in READERS:
        raise NnUNetImportError(
            f"unsupported image reader {reader} (3D medical image readers only: {', '.join(READERS)})"
        )
    if "transpose_forward" not in plans or "spacing" not in config:
        raise NnUNetImportError("plans.json lacks transpose_forward or the configuration's spacing")
    arch = config.get("architecture")
    if not isinstance(arch, dict) or "network_class_name" not in arch:
        raise NnUNetImportError(
            "plans.json has no 'architecture' entry (plans from nnU-Net before 2.4?): re-plan "
            f"with a current nnU-Net v2 or export by hand ({DOCS})"
        )
    if arch["network_class_name"] not in SUPPORTED_ARCHITECTURES:
        raise NnUNetImportError(
            f"unsupported architecture {arch['network_class_name']}: this importer rebuilds "
            f"{' and '.join(SUPPORTED_ARCHITECTURES.values())} (default and ResEnc M/L/XL "
            f"plans); export another network by hand ({DOCS})"
        )
    return NnUNetResult(
        folder=results,
        dataset=dataset,
        plans=plans,
        configuration_name=config_name,
        configuration=config,
        folds=fold_files,
        checkpoint=checkpoint,
        channel_names=channel_names,
        contrasts=contrasts,
        labels=order,
        lesion_label=lesion_label,
        normalisation=norms,
        use_mask_for_norm=[bool(b) for b in config.get("use_mask_for_norm", [False] * n_in)],
        reader=reader,
        architecture=SUPPORTED_ARCHITECTURES[arch["network_class_name"]],
    )


def preprocessing_section(
    r: NnUNetResult, mirror_axes, orientation: str, skull_stripped: bool, source: dict
) -> NnUNetPreprocessing:
    """The card's ``nnunet_v2`` section for a checked result."""
    config, plans = r.configuration, r.plans
    props = plans.get("foreground_intensity_properties_per_channel", {})
    return NnUNetPreprocessing(
        transpose_forward=tuple(int(i) for i in plans["transpose_forward"]),
        target_spacing=tuple(float(v) for v in config["spacing"]),
        normalisation=tuple(r.normalisation),
        use_mask_for_norm=tuple(r.use_mask_for_norm),
        data_resampling=Resampling.from_dict(config.get("resampling_fn_data_kwargs", {"order": 3, "order_z": 0})),
        probability_resampling=Resampling.from_dict(
            config.get("resampling_fn_probabilities_kwargs", {"order": 1, "order_z": 0})
        ),
        patch_size=tuple(int(v) for v in config["patch_size"]),
        labels=tuple(r.labels),
        mirror_axes=tuple(int(a) for a in mirror_axes or ()),
        intensity_properties=(
            tuple(dict(props.get(str(c), {})) for c in range(len(r.normalisation)))
            if "CTNormalization" in r.normalisation
            else ()
        ),
        orientation=orientation,
        skull_stripped=skull_stripped,
        source=source,
    )


def import_nnunet(
    results_dir: str | Path,
    out_dir: str | Path,
    folds=None,
    checkpoint: str = "checkpoint_final.pth",
    contrasts=None,
    orientation: str | None = None,
    skull_stripped: bool | None = None,
    name: str | None = None,
    version: str | None = None,
    lesion_label: str | None = None,
    fp16: bool = False,
    configuration: str | None = None,
    trust: bool = False,
    say: Callable[[str], None] = print,
) -> Path:
    """Import one nnU-Net v2 result folder; returns the written ``card.json``. Says what it read
    and wrote through ``say``."""
    r = read_result(results_dir, folds, checkpoint, contrasts, lesion_label, configuration)
    try:
        import torch
    except ImportError:
        raise NnUNetImportError(
            "import-nnunet needs PyTorch: pip install torch==2.13.0 (the CPU wheel), then "
            "pip install 'openrecon-stroke[nnunet]'"
        ) from None
    say(
        f"read {r.folder}: dataset {r.plans.get('dataset_name', '?')}, plans {r.plans.get('plans_name', '?')}, "
        f"configuration {r.configuration_name}, folds {', '.join(f for f, _ in r.folds)} ({checkpoint})"
    )
    ckpts = []
    for _, path in r.folds:
        ckpts.append(load_checkpoint(path, trust))
        if not isinstance(ckpts[-1], dict) or "network_weights" not in ckpts[-1]:
            raise NnUNetImportError(f"{path} is not an nnU-Net v2 checkpoint (no 'network_weights')")
        used = (ckpts[-1].get("init_args") or {}).get("configuration")
        if used and used != r.configuration_name:
            raise NnUNetImportError(f"{path} was trained with configuration {used}, not {r.configuration_name}")
    first = ckpts[0]
    trainer = str(first.get("trainer_name", "?"))
    n_in = len(r.channel_names)
    orientation = READERS[r.reader] if orientation is None else orientation
    orientation = "" if orientation.lower() in ("", "stored", "native") else orientation.upper()
    if skull_stripped is None:
        skull_stripped = all(r.use_mask_for_norm)
        say(
            f"skull-stripped input assumed {'yes' if skull_stripped else 'no'} (nnU-Net normalised "
            f"{'inside' if skull_stripped else 'over'} the non-zero region); override with --skull-stripped yes|no"
        )
    source = {
        "dataset": r.plans.get("dataset_name", ""),
        "trainer": trainer,
        "plans": r.plans.get("plans_name", ""),
        "configuration": r.configuration_name,
        "checkpoint": checkpoint,
        "folds": [f for f, _ in r.folds],
        "epochs": [int(c.get("current_epoch", 0) or 0) for c in ckpts],
        "architecture": r.architecture,
        "image_reader": r.reader,
        "channel_names": r.channel_names,
        "checkpoint_sha256": [file_sha256(p) for _, p in r.folds],
    }
    pre = preprocessing_section(
        r, first.get("inference_allowed_mirroring_axes"), orientation, bool(skull_stripped), source
    )
    spacing_zyx = [0.0, 0.0, 0.0]
    for i, a in enumerate(pre.transpose_forward):
        spacing_zyx[a] = pre.target_spacing[i]
    say(
        f"{r.architecture}, patch {list(pre.patch_size)}, target spacing {[round(v, 4) for v in pre.target_spacing]} "
        f"mm (transpose {list(pre.transpose_forward)}), normalisation {', '.join(r.normalisation)} (in the non-zero "
        f"mask: {r.use_mask_for_norm}), mirroring axes {list(pre.mirror_axes) or 'none'}, channels "
        f"{', '.join(f'{n} -> {c}' for n, c in zip(r.channel_names, r.contrasts))}, labels {', '.join(r.labels)}, "
        f"voxel axes {orientation or 'as stored'}"
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for (f, _), ck in zip(r.folds, ckpts):
        net = build_network(r.configuration, n_in, len(r.labels))
        onnx_file = out / f"fold{f}.onnx"
        t0 = time.perf_counter()
        diff = export_fold(net, ck["network_weights"], n_in, pre.patch_size, onnx_file, fp16)
        files.append({"file": onnx_file.name, "sha256": file_sha256(onnx_file), "fold": f, "export_max_abs_diff": diff})
        say(
            f"wrote {onnx_file} ({onnx_file.stat().st_size / 2**20:.1f} MiB, {time.perf_counter() - t0:.1f} s; "
            f"ONNX Runtime vs PyTorch max |logit difference| {diff:.2e})"
        )

    newest = max(p.stat().st_mtime for _, p in r.folds)
    lesion_value = r.labels.index(r.lesion_label)
    card = {
        "kind": "segmentation",
        "name": name or r.plans.get("dataset_name", r.folder.parent.name),
        "version": version or f"{checkpoint.removesuffix('.pth')} of {datetime.date.fromtimestamp(newest)}",
        "description": f"nnU-Net v2 {r.configuration_name} ({trainer}, {r.plans.get('plans_name', '')}), imported "
        f"unchanged from {r.folder.name}",
        "inputs": r.contrasts,
        "spacing_mm": spacing_zyx[::-1],
        "normalisation": SCHEME,
        "patch_size": list(pre.patch_size),
        "overlap": 1.0 - pre.step,
        "mirror_axes": list(pre.mirror_axes),
        "output": {"activation": "softmax", "channel": lesion_value, "classes": list(r.labels)},
        "threshold": 0.5,
        "threshold_note": "nnU-Net's own decision is the arg-max of the class probabilities (0.5 for one lesion class)",
        "min_lesion_mm3": 10.0,
        "files": files,
        "export": {
            "opset": OPSET,
            "torch": torch.__version__,
            "weights": "fp16" if fp16 else "fp32",
            "command": "openrecon-stroke import-nnunet",
        },
        "preprocessing": pre.as_dict(),
    }
    card_file = out / "card.json"
    card_file.write_text(json.dumps(card, indent=1))
    ModelCard.load(card_file)  # what we wrote must load
    say(
        f"wrote {card_file}: {card['name']} {card['version']}, inputs {'+'.join(r.contrasts)}, lesion = label "
        f"{r.lesion_label} ({lesion_value}), skull-stripped input {'yes' if skull_stripped else 'no'}"
    )
    return card_file
