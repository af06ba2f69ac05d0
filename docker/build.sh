#!/usr/bin/env bash
# Build the OpenRecon package of openrecon-stroke: wheelhouse -> manifest -> image -> saved
# image (.tar) + user guide (.pdf) -> zip. See --help.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BASE="python:3.11-slim"
OUT="$REPO/dist"
ENGINE=""
PUSH=""
PY_TARGET="3.11"
SAVE=1
DEBIAN_BASE=0
PYTHON="${PYTHON:-}"

usage() {
    cat <<EOF
Usage: docker/build.sh [options]

Builds the OpenRecon package of openrecon-stroke:
  1. a wheelhouse of the project and its runtime dependencies (no PyTorch), made here, so that
     the image build needs no package index (pip install --no-index inside the build);
  2. the manifest manifests/openrecon-stroke.json, regenerated from the code;
  3. the image openrecon_<vendor>_<name>:v<version> (docker if a daemon answers, else
     buildah bud --isolation chroot), with the manifest as its OpenRecon label;
  4. OUT/OpenRecon_<vendor>_<name>_V<version>.tar (docker-archive), the user guide .pdf of the
     same name, and the .zip holding both: the file to install on the scanner.

Options:
  --base IMAGE        builder base (default: $BASE): Debian-like with python3.11, or able
                      to apt-get python3 python3-venv binutils. The image itself starts from
                      scratch: the interpreter, the libraries it loads, the trimmed venv, models
  --debian-base       use a bare Debian bookworm made with debootstrap (docker/make_base.sh,
                      built on first use) as the base: for hosts without a reachable registry
  --out DIR           output folder (default: dist/); the wheelhouse is cached in DIR/wheelhouse
  --engine NAME       docker or buildah (default: docker when its daemon answers, else buildah)
  --python-version V  Python version of the image, for the wheelhouse (default: $PY_TARGET)
  --no-save           build and tag the image only (no .tar/.pdf/.zip)
  --push REGISTRY     also push the image to REGISTRY/<tag>
  -h, --help          this help

Environment: PYTHON (interpreter used to build the wheelhouse; default .venv/bin/python).
Models: every models/<name>/ folder is baked in at /opt/openrecon-stroke/models/<name>/
(ONNX files, *.json cards, *.md model cards and licences only: no training scripts/checkpoints).
EOF
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --base) BASE="$2"; shift 2 ;;
        --debian-base) DEBIAN_BASE=1; shift ;;
        --out) OUT="$2"; shift 2 ;;
        --engine) ENGINE="$2"; shift 2 ;;
        --python-version) PY_TARGET="$2"; shift 2 ;;
        --no-save) SAVE=0; shift ;;
        --push) PUSH="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
    esac
done

cd "$REPO"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
if [[ -z "$PYTHON" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
log() { printf '[build %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
T0=$(date +%s)

# ---- engine ------------------------------------------------------------------------------
if [[ -z "$ENGINE" ]]; then
    if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
        ENGINE=docker
    elif command -v buildah >/dev/null 2>&1; then
        ENGINE=buildah
    else
        echo "error: neither a running docker daemon nor buildah found (apt-get install buildah)" >&2
        exit 1
    fi
fi
case "$ENGINE" in docker|buildah) ;; *) echo "error: --engine must be docker or buildah" >&2; exit 2 ;; esac
if [[ $DEBIAN_BASE -eq 1 ]]; then
    BASE="localhost/debian-base:bookworm"
    "$REPO/docker/make_base.sh" --tag "$BASE"
fi

# ---- names from the code -----------------------------------------------------------------
read -r VERSION TAG BASENAME < <("$PYTHON" -c '
from openrecon_stroke import __version__
from openrecon_stroke.manifest import image_tag, package_basename
print(__version__, image_tag(), package_basename())')
log "openrecon-stroke $VERSION -> image $TAG, package $BASENAME.zip (engine $ENGINE, base $BASE)"

# ---- 1. wheelhouse -----------------------------------------------------------------------
WHEELS="$OUT/wheelhouse"
mkdir -p "$WHEELS"
rm -f "$WHEELS"/openrecon_stroke-*.whl
SRC="$(mktemp -d)"
CTX="$(mktemp -d)"
trap 'rm -rf "$SRC" "$CTX"' EXIT
# build the project wheel from a clean copy (no stale build/ folder, no models, no venv)
cp -r pyproject.toml README.md openrecon_stroke simulator "$SRC"/
find "$SRC" -name __pycache__ -prune -exec rm -rf {} +
rm -rf "$SRC"/*.egg-info
log "wheelhouse: project wheel"
"$PYTHON" -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir "$WHEELS" "$SRC" >/dev/null
PLATFORMS=()
for v in 36 35 34 33 32 31 30 29 28 27 26 25 24 17; do PLATFORMS+=(--platform "manylinux_2_${v}_x86_64"); done
PLATFORMS+=(--platform manylinux2014_x86_64 --platform linux_x86_64)
ABI="cp${PY_TARGET/./}"
log "wheelhouse: runtime dependencies for CPython $PY_TARGET linux/amd64"
"$PYTHON" -m pip download --quiet --only-binary=:all: --python-version "$PY_TARGET" --implementation cp \
    --abi "$ABI" --abi abi3 --abi none "${PLATFORMS[@]}" --dest "$WHEELS" \
    "$WHEELS"/openrecon_stroke-"$VERSION"-py3-none-any.whl 2> >(grep -v "is ignored" >&2)
if ls "$WHEELS" | grep -Eiq '^(torch|nvidia)'; then
    echo "error: PyTorch/CUDA wheels in the wheelhouse ($WHEELS): they must not be runtime dependencies" >&2
    exit 1
fi

# ---- 2. manifest -------------------------------------------------------------------------
"$PYTHON" -m openrecon_stroke manifest --out manifests/openrecon-stroke.json >/dev/null
if "$PYTHON" -c 'import jsonschema' 2>/dev/null; then
    "$PYTHON" -c '
import json, jsonschema
schema = json.load(open("manifests/schema/openrecon-1.1.0.schema.json"))
jsonschema.Draft7Validator(schema).validate(json.load(open("manifests/openrecon-stroke.json")))
' || { echo "error: manifests/openrecon-stroke.json does not validate against the schema" >&2; exit 1; }
else
    log "jsonschema is not installed: manifest not validated (pip install jsonschema)"
fi
MANIFEST_B64="$(base64 -w0 manifests/openrecon-stroke.json)"
log "manifest: manifests/openrecon-stroke.json ($(wc -c < manifests/openrecon-stroke.json) bytes)"

# ---- 3. image ----------------------------------------------------------------------------
# build context: Dockerfile, slim.py, wheelhouse, models (allow-list: nothing else of the repo)
cp docker/Dockerfile docker/slim.py "$CTX"/
mkdir -p "$CTX/wheelhouse" "$CTX/models"
cp -l "$WHEELS"/*.whl "$CTX/wheelhouse/" 2>/dev/null || cp "$WHEELS"/*.whl "$CTX/wheelhouse/"
(cd models && find . -type f \( -name '*.onnx' -o -name '*.onnx.data' -o -name '*.ort' -o -name '*.json' \
        -o -name '*.md' -o -iname 'LICEN[CS]E*' -o -iname 'NOTICE*' \) \
        -not -path '*/__pycache__/*' -not -path '*/runs/*' -not -path '*/checkpoints/*' \
        -not -path '*/ckpt/*' -not -path '*/data/*' -print0 \
    | while IFS= read -r -d '' f; do
        mkdir -p "$CTX/models/$(dirname "$f")"
        cp -l "$f" "$CTX/models/$f" 2>/dev/null || cp "$f" "$CTX/models/$f"
    done)
log "models baked in: $(cd "$CTX/models" && find . -name card.json -printf '%h ' | sed 's#\./##g')($(du -sh "$CTX/models" | cut -f1))"

BUILD_ARGS=(--build-arg "BASE=$BASE" --build-arg "OPENRECON_MANIFEST=$MANIFEST_B64" --build-arg "VERSION=$VERSION")
TB=$(date +%s)
OLD_ID=""
[[ $ENGINE == buildah ]] && OLD_ID="$(buildah images --quiet --noheading "$TAG" 2>/dev/null | head -1 || true)"
if [[ $ENGINE == docker ]]; then
    docker build --platform linux/amd64 "${BUILD_ARGS[@]}" -t "$TAG" "$CTX"
else
    buildah bud --isolation chroot --format docker --layers=false --platform linux/amd64 \
        "${BUILD_ARGS[@]}" -t "$TAG" "$CTX"
fi
log "image $TAG built in $(( $(date +%s) - TB )) s"
if [[ -n "$OLD_ID" && "$OLD_ID" != "$(buildah images --quiet --noheading "$TAG" | head -1)" ]]; then
    buildah rmi "$OLD_ID" >/dev/null 2>&1 || true  # the previous build of this tag, now untagged
fi

# ---- 4. package --------------------------------------------------------------------------
if [[ $SAVE -eq 1 ]]; then
    TAR="$OUT/$BASENAME.tar"
    rm -f "$TAR"
    if [[ $ENGINE == docker ]]; then
        docker save -o "$TAR" "$TAG"
    else
        buildah push --quiet "$TAG" "docker-archive:$TAR:$TAG"
    fi
    "$PYTHON" docker/user_guide.py --out "$OUT/$BASENAME.pdf" >/dev/null
    rm -f "$OUT/$BASENAME.zip"
    "$PYTHON" - "$OUT" "$BASENAME" <<'EOF'
import sys, zipfile
from pathlib import Path
out, base = Path(sys.argv[1]), sys.argv[2]
with zipfile.ZipFile(out / f"{base}.zip", "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6,
                     allowZip64=True) as z:
    for ext in ("tar", "pdf"):
        z.write(out / f"{base}.{ext}", arcname=f"{base}.{ext}")
EOF
    log "package: $OUT/$BASENAME.zip ($(du -h "$OUT/$BASENAME.zip" | cut -f1); image tar $(du -h "$TAR" | cut -f1))"
fi

if [[ -n "$PUSH" ]]; then
    DEST="${PUSH%/}/$TAG"
    if [[ $ENGINE == docker ]]; then
        docker tag "$TAG" "$DEST" && docker push "$DEST"
    else
        buildah push "$TAG" "docker://$DEST"
    fi
    log "pushed $DEST"
fi
log "done in $(( $(date +%s) - T0 )) s"
