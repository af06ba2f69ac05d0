#!/usr/bin/env bash
# Installs what `openrecon-stroke import-nnunet` and the nnU-Net proof test need into .venv
# (after scripts/bootstrap.sh): PyTorch 2.13.0 first, pinned, so that nothing pulls a newer
# (CUDA) build, then the `nnunet` extra (dynamic_network_architectures, onnx) and nnunetv2 itself,
# for the proof test only (the plugin never imports it). On the project's machines pip finds the
# CPU wheel (torch-2.13.0+cpu) locally; elsewhere set TORCH_INDEX_URL to a CPU wheel index. Fails
# if a CUDA build of PyTorch ended up installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=".venv/bin/python -m pip"
$PIP install --quiet "torch==2.13.0" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
$PIP install --quiet -e '.[nnunet]' "nnunetv2==2.8.1" "torch==2.13.0"
.venv/bin/python - <<'PY'
import torch, nnunetv2, dynamic_network_architectures  # noqa: F401
if torch.version.cuda:
    raise SystemExit(f"error: a CUDA build of PyTorch was installed ({torch.__version__}); "
                     "uninstall it and install the CPU wheel (torch==2.13.0+cpu) first")
print(f"nnunet extra ready: torch {torch.__version__} (CPU), nnunetv2 installed")
PY
