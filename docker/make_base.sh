#!/usr/bin/env bash
# Build a minimal Debian bookworm base image from scratch with debootstrap and import it into
# the local container storage (shared by buildah and podman), for hosts where no registry is
# reachable. The result is a plain Debian without Python: docker/Dockerfile installs python3
# with apt when the base lacks it.
set -euo pipefail

TAG="localhost/debian-base:bookworm"
SUITE="bookworm"
MIRROR="http://deb.debian.org/debian"
FORCE=0

usage() {
    cat <<EOF
Usage: docker/make_base.sh [--tag IMAGE] [--mirror URL] [--force]

Creates a Debian ${SUITE} (debootstrap --variant=minbase, linux/amd64) base image and imports
it as IMAGE (default ${TAG}). Needs root, debootstrap and podman (or buildah).
Does nothing when IMAGE already exists, unless --force.
EOF
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --tag) TAG="$2"; shift 2 ;;
        --mirror) MIRROR="$2"; shift 2 ;;
        --force) FORCE=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
done

have_image() {
    if command -v podman >/dev/null 2>&1; then
        podman image exists "$1"
    else
        buildah inspect --type image "$1" >/dev/null 2>&1
    fi
}

if [[ $FORCE -eq 0 ]] && have_image "$TAG"; then
    echo "base image $TAG already exists (use --force to rebuild)"
    exit 0
fi

for tool in debootstrap; do
    command -v "$tool" >/dev/null 2>&1 || { echo "error: $tool is not installed (apt-get install debootstrap podman buildah)" >&2; exit 1; }
done

ROOT="$(mktemp -d "${TMPDIR:-/var/tmp}/openrecon-base.XXXXXX")"
trap 'rm -rf "$ROOT"' EXIT

echo "debootstrap --variant=minbase $SUITE into $ROOT ..."
debootstrap --variant=minbase --arch=amd64 "$SUITE" "$ROOT" "$MIRROR" >"$ROOT.log" 2>&1 || {
    tail -20 "$ROOT.log" >&2; rm -f "$ROOT.log"; exit 1; }
rm -f "$ROOT.log"
# keep the image small: no apt lists or caches
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin "$ROOT"/var/cache/apt/archives/*.deb

if command -v podman >/dev/null 2>&1; then
    tar -C "$ROOT" -c . | podman import --quiet - "$TAG" >/dev/null
else
    ctr="$(buildah from scratch)"
    mnt="$(buildah mount "$ctr")"
    tar -C "$ROOT" -c . | tar -C "$mnt" -x
    buildah umount "$ctr" >/dev/null
    buildah commit --quiet "$ctr" "$TAG" >/dev/null
    buildah rm "$ctr" >/dev/null
fi
echo "imported $TAG"
