#!/usr/bin/env bash
# Build the OpenRecon package of openrecon-stroke: wheelhouse -> manifest -> image -> saved
# image (.tar) + user guide (.pdf) -> zip, and optionally push the image to a registry. See --help.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BASE="python:3.11-slim"
OUT="$REPO/dist"
ENGINE=""
PUSH=""
PUSH_ONLY=0
WHEELHOUSE_ONLY=0
AUTHFILE=""
CERT_DIR=""
TLS_VERIFY="true"
PY_TARGET="3.11"
SAVE=1
DEBIAN_BASE=0
PYTHON="${PYTHON:-}"

usage() {
    cat <<EOF
Usage: docker/build.sh [options]

Builds the OpenRecon package of openrecon-stroke:
  1. a wheelhouse of the project and its runtime dependencies (no PyTorch, no batch extra),
     made here, so that the image build needs no package index (pip install --no-index);
  2. the manifest manifests/openrecon-stroke.json, regenerated from the code;
  3. the image openrecon_<vendor>_<name>:v<version> (docker if a daemon answers, else
     buildah bud --isolation chroot), with the manifest as its OpenRecon label, the models
     and the MNI152 template files; its size by part is printed and written to OUT/image_sizes.json;
  4. OUT/OpenRecon_<vendor>_<name>_V<version>.tar (docker-archive), the user guide .pdf of the
     same name, and the .zip holding both: the file to install on the scanner;
  5. with --push, the image pushed to a registry; the pushed reference with its digest is
     printed and written to OUT/pushed.txt.

Options:
  --base IMAGE        builder base (default: $BASE): Debian-like with python3.11, or able
                      to apt-get python3 python3-venv binutils. The image itself starts from
                      scratch: the interpreter, the libraries it loads, the trimmed venv, models
  --debian-base       use a bare Debian bookworm made with debootstrap (docker/make_base.sh,
                      built on first use) as the base: for hosts without a reachable registry
  --out DIR           output folder (default: dist/); the wheelhouse is made in DIR/wheelhouse
  --engine NAME       docker or buildah (default: docker when its daemon answers, else buildah)
  --python-version V  Python version of the image, for the wheelhouse (default: $PY_TARGET)
  --no-save           build and tag the image only (no .tar/.pdf/.zip)
  --wheelhouse-only   make the wheelhouse (step 1) and stop: needs no container engine
  --push REGISTRY     also push the image to REGISTRY/<tag>; REGISTRY is host[:port][/path],
                      e.g. registry.example.org:5000/mr
  --push-only         push the image built before to --push REGISTRY (steps 1-4 skipped)
  --authfile FILE     registry credentials (buildah): the file 'buildah login' / 'podman login'
                      write (default: their own, \${XDG_RUNTIME_DIR}/containers/auth.json)
  --cert-dir DIR      folder with the CA certificate (*.crt) of a registry whose TLS certificate
                      is signed by the site's own CA (buildah). With docker, put it in
                      /etc/docker/certs.d/HOST:PORT/ca.crt instead
  --tls-verify BOOL   false: plain HTTP or unverified TLS (a throw-away local test registry only)
  -h, --help          this help

Environment: PYTHON (interpreter used to build the wheelhouse; default .venv/bin/python).
Models: every models/<name>/ folder is baked in at /opt/openrecon-stroke/models/<name>/
(ONNX files, *.json cards, *.md model cards and licences only: no training scripts/checkpoints).
Template: the MNI152 files of openrecon_stroke.templates, from the nilearn package installed
here (the simulator/dev extras) or \$OPENRECON_TEMPLATES_DIR, at /opt/openrecon-stroke/templates.
EOF
}

need_arg() { [[ $# -ge 2 && -n "$2" ]] || { echo "error: $1 needs a value (see --help)" >&2; exit 2; }; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --base) need_arg "$@"; BASE="$2"; shift 2 ;;
        --debian-base) DEBIAN_BASE=1; shift ;;
        --out) need_arg "$@"; OUT="$2"; shift 2 ;;
        --engine) need_arg "$@"; ENGINE="$2"; shift 2 ;;
        --python-version) need_arg "$@"; PY_TARGET="$2"; shift 2 ;;
        --no-save) SAVE=0; shift ;;
        --wheelhouse-only) WHEELHOUSE_ONLY=1; shift ;;
        --push) need_arg "$@"; PUSH="$2"; shift 2 ;;
        --push-only) PUSH_ONLY=1; shift ;;
        --authfile) need_arg "$@"; AUTHFILE="$2"; shift 2 ;;
        --cert-dir) need_arg "$@"; CERT_DIR="$2"; shift 2 ;;
        --tls-verify) need_arg "$@"; TLS_VERIFY="$2"; shift 2 ;;
        --tls-verify=*) TLS_VERIFY="${1#*=}"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$TLS_VERIFY" in true|false) ;; *) echo "error: --tls-verify must be true or false" >&2; exit 2 ;; esac
if [[ $PUSH_ONLY -eq 1 && -z "$PUSH" ]]; then
    echo "error: --push-only needs --push REGISTRY" >&2; exit 2
fi
if [[ $PUSH_ONLY -eq 1 && $WHEELHOUSE_ONLY -eq 1 ]]; then
    echo "error: --push-only and --wheelhouse-only exclude each other" >&2; exit 2
fi
if [[ -n "$AUTHFILE" && ! -f "$AUTHFILE" ]]; then
    echo "error: --authfile $AUTHFILE does not exist (make it with: buildah login --authfile $AUTHFILE REGISTRY)" >&2; exit 2
fi
if [[ -n "$CERT_DIR" ]] && ! ls "$CERT_DIR"/*.crt >/dev/null 2>&1; then
    echo "error: --cert-dir $CERT_DIR holds no *.crt file (the registry's CA certificate, PEM)" >&2; exit 2
fi

cd "$REPO"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
if [[ -z "$PYTHON" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
log() { printf '[build %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
T0=$(date +%s)
SRC="$(mktemp -d)"
CTX="$(mktemp -d)"
trap 'rm -rf "$SRC" "$CTX"' EXIT

# ---- engine ------------------------------------------------------------------------------
if [[ $WHEELHOUSE_ONLY -eq 0 ]]; then
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
    if [[ $ENGINE == docker && ( -n "$AUTHFILE" || -n "$CERT_DIR" ) ]]; then
        echo "error: --authfile/--cert-dir are for buildah; with docker use 'docker login REGISTRY' and" \
             "/etc/docker/certs.d/HOST:PORT/ca.crt" >&2
        exit 2
    fi
    [[ $DEBIAN_BASE -eq 1 ]] && BASE="localhost/debian-base:bookworm"
fi

# ---- names from the code -----------------------------------------------------------------
read -r VERSION TAG BASENAME < <("$PYTHON" -c '
from openrecon_stroke import __version__
from openrecon_stroke.manifest import image_tag, package_basename
print(__version__, image_tag(), package_basename())')
[[ -n "${TAG:-}" ]] || { echo "error: $PYTHON cannot import openrecon_stroke: run ./test.sh or scripts/bootstrap.sh first" >&2; exit 1; }

# ---- 5. push (also alone, with --push-only) ----------------------------------------------
push_image() {
    local dest="${PUSH%/}/$TAG" digest ref
    log "pushing $TAG to $dest"
    if [[ $ENGINE == docker ]]; then
        docker tag "$TAG" "$dest"
        docker push "$dest"
        ref="$(docker image inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' "$dest" \
               | grep -F "${dest%:*}@" | head -1)"
    else
        local opts=(--tls-verify="$TLS_VERIFY" --digestfile "$OUT/.push.digest")
        [[ -n "$AUTHFILE" ]] && opts+=(--authfile "$AUTHFILE")
        [[ -n "$CERT_DIR" ]] && opts+=(--cert-dir "$CERT_DIR")
        if ! buildah push --quiet "${opts[@]}" "$TAG" "docker://$dest"; then
            echo "error: the push to $dest failed. An 'unauthorized' answer needs credentials" \
                 "(buildah login ${PUSH%%/*}, or --authfile FILE); 'x509: certificate signed by unknown" \
                 "authority' needs the registry's CA certificate (--cert-dir DIR with ca.crt)." >&2
            exit 1
        fi
        digest="$(cat "$OUT/.push.digest")"
        rm -f "$OUT/.push.digest"
        ref="${dest%:*}@$digest"
    fi
    echo "$ref" > "$OUT/pushed.txt"
    log "pushed $dest as $ref (written to $OUT/pushed.txt); deploy by digest: pull $ref"
}
if [[ $PUSH_ONLY -eq 1 ]]; then
    if [[ $ENGINE == buildah ]] && ! buildah inspect --type image "$TAG" >/dev/null 2>&1; then
        echo "error: no image $TAG here to push: build it first (docker/build.sh without --push-only)" >&2
        exit 1
    fi
    push_image
    log "done in $(( $(date +%s) - T0 )) s"
    exit 0
fi
log "openrecon-stroke $VERSION -> image $TAG, package $BASENAME.zip (engine ${ENGINE:-none}, base $BASE)"

# ---- 1. wheelhouse -----------------------------------------------------------------------
# Exactly this build's wheels: emptied first (pip's own cache keeps repeated builds quick).
WHEELS="$OUT/wheelhouse"
mkdir -p "$WHEELS"
rm -f "$WHEELS"/*.whl
# the project wheel from a clean copy (no stale build/ folder, no models, no venv), built in an
# isolated environment that pip fills with the build backend pyproject.toml names: the
# interpreter's own setuptools (65.5 on a fresh Python 3.11 venv: no bdist_wheel) is not used
cp -r pyproject.toml README.md openrecon_stroke simulator "$SRC"/
find "$SRC" -name __pycache__ -prune -exec rm -rf {} +
rm -rf "$SRC"/*.egg-info
log "wheelhouse: project wheel"
if ! "$PYTHON" -m pip wheel --no-deps --disable-pip-version-check --wheel-dir "$WHEELS" "$SRC" \
        >"$SRC/.wheel.log" 2>&1; then
    tail -30 "$SRC/.wheel.log" >&2
    echo "error: the project wheel did not build (above). pip fetches the build backend" \
         "(setuptools, see pyproject.toml [build-system]) from the package index, or from" \
         "PIP_FIND_LINKS on an offline host." >&2
    exit 1
fi
WHEEL="$(ls "$WHEELS"/openrecon_stroke-"$VERSION"-py3-none-any.whl)"
PLATFORMS=()
for v in 36 35 34 33 32 31 30 29 28 27 26 25 24 17; do PLATFORMS+=(--platform "manylinux_2_${v}_x86_64"); done
PLATFORMS+=(--platform manylinux2014_x86_64 --platform linux_x86_64)
ABI="cp${PY_TARGET/./}"
log "wheelhouse: runtime dependencies for CPython $PY_TARGET linux/amd64"
"$PYTHON" -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
    --python-version "$PY_TARGET" --implementation cp --abi "$ABI" --abi abi3 --abi none "${PLATFORMS[@]}" \
    --dest "$WHEELS" "$WHEEL" 2> >(grep -v "is ignored" >&2)
# not for the scanner: PyTorch/CUDA (training extra), Dask/pybids (batch extra), nilearn (the
# template ships as files), Gadgetron's package and its FFT (gadgetron extra), browser tooling.
# A runtime dependency that pulls one in fails here.
FORBIDDEN='^(torch|nvidia|triton|dask|distributed|pybids|nilearn|nibabel|pandas|scikit_learn|matplotlib|gadgetron|pyfftw|multimethod|playwright|selenium|pyppeteer)-'
if ls "$WHEELS" | grep -Eiq "$FORBIDDEN"; then
    echo "error: wheels that must not be in the scanner image: $(ls "$WHEELS" | grep -Ei "$FORBIDDEN" | tr '\n' ' ')" \
         "- keep them in an extra (train, batch, simulator, gadgetron), not in [project] dependencies" >&2
    exit 1
fi
log "wheelhouse: $WHEELS ($(ls "$WHEELS" | wc -l) wheels, $(du -sh "$WHEELS" | cut -f1))"
if [[ $WHEELHOUSE_ONLY -eq 1 ]]; then
    log "done (--wheelhouse-only) in $(( $(date +%s) - T0 )) s"
    exit 0
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
# build context: Dockerfile, slim.py, wheelhouse, models, templates (allow-list: nothing else)
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
if ! "$PYTHON" -m openrecon_stroke.templates export "$CTX/templates" >/dev/null; then
    echo "error: the MNI152 template files were not found (above): install nilearn here" \
         "(scripts/bootstrap.sh does) or set OPENRECON_TEMPLATES_DIR" >&2
    exit 1
fi
log "template baked in: $(ls "$CTX/templates" | tr '\n' ' ')($(du -sh "$CTX/templates" | cut -f1))"

[[ $DEBIAN_BASE -eq 1 ]] && "$REPO/docker/make_base.sh" --tag "$BASE"
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

# size by part, measured inside the image (docker/image_sizes.py)
SIZES_SCRIPT="$(cat docker/image_sizes.py)"
if [[ $ENGINE == docker ]]; then
    IMAGE_BYTES="$(docker image inspect --format '{{.Size}}' "$TAG")"
    docker run --rm --network none --entrypoint /opt/venv/bin/python "$TAG" -c "$SIZES_SCRIPT" > "$OUT/image_sizes.json"
else
    IMAGE_BYTES="$(podman image inspect --format '{{.Size}}' "$TAG" 2>/dev/null || echo 0)"
    CTR="$(buildah from --quiet "$TAG")"
    buildah run --isolation chroot "$CTR" -- /opt/venv/bin/python -c "$SIZES_SCRIPT" > "$OUT/image_sizes.json" \
        || { buildah rm "$CTR" >/dev/null; exit 1; }
    buildah rm "$CTR" >/dev/null
fi
"$PYTHON" - "$OUT/image_sizes.json" "$IMAGE_BYTES" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
s["image_bytes"] = int(sys.argv[2] or 0) or None
json.dump(s, open(sys.argv[1], "w"), indent=1)
mb = lambda b: f"{b / 1e6:.1f} MB"
size = f"image {mb(s['image_bytes'])}" if s["image_bytes"] else "image size unknown"
print(f"[build] {size}; files {mb(s['total'])}: " + ", ".join(f"{k} {mb(v)}" for k, v in s["parts"].items()))
print("[build]   libraries: " + ", ".join(f"{k} {mb(v)}" for k, v in list(s["libraries"].items())[:8]))
print("[build]   models: " + ", ".join(f"{k} {mb(v)}" for k, v in s["models"].items()))
EOF

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
    push_image
fi
log "done in $(( $(date +%s) - T0 )) s"
