"""A tiny native-space segmentation model (ONNX, ``kind: segmentation``) for the tests of the
site-model path (an imported nnU-Net model is one of these): a 1x1x1 convolution whose lesion
logit rises with the normalised intensity. Written with the ``onnx`` helpers, so the tests need
no trained network; the tests that use it skip when ``onnx`` is not installed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from openrecon_stroke.model_card import file_sha256


def write_native_model(folder: Path, inputs=("t1",), name: str = "site-tiny") -> Path:
    onnx = pytest.importorskip("onnx", reason="onnx (test dependency) is not installed")
    from onnx import TensorProto, helper, numpy_helper

    c = len(inputs)
    w = np.zeros((2, c, 1, 1, 1), np.float32)
    w[1, :, 0, 0, 0] = 2.0  # lesion logit = 2 * sum of the z-scored channels
    b = np.array([0.0, -1.0], np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w", "b"], ["logits"])],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", c, "z", "y", "x"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 2, "z", "y", "x"])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / "model.onnx"))
    card = {
        "kind": "segmentation",
        "name": name,
        "version": "0.0.1",
        "description": "test model: lesion logit from intensity alone",
        "inputs": list(inputs),
        "spacing_mm": [1.5, 1.5, 1.5],
        "orientation": "RAS",
        "normalisation": "zscore_brain",
        "margin_mm": 8.0,
        "patch_size": [48, 48, 48],
        "size_divisor": 8,
        "max_window_voxels": 3000000,
        "overlap": 0.25,
        "mirror_axes": [],
        "output": {"activation": "softmax", "channel": 1, "classes": ["background", "lesion"]},
        "threshold": 0.5,
        "min_lesion_mm3": 10.0,
        "files": [{"file": "model.onnx", "sha256": file_sha256(folder / "model.onnx")}],
    }
    (folder / "card.json").write_text(json.dumps(card, indent=1))
    return folder
