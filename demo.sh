#!/usr/bin/env bash
# End-to-end demo on a fresh machine: set up, make a synthetic stroke study, start the MRD
# server, replay the study to it exactly as a scanner would, and show where the results are.
#   ./demo.sh [OUTPUT_DIR]     (default: demo_out)      PORT=9002 by default
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/bootstrap.sh
OUT=${1:-demo_out}
PORT=${PORT:-9002}
PY=.venv/bin/python
mkdir -p "$OUT"
# The server keeps each study's preprocessed series for 2 h so that a later series of the same
# study is fused with it. The phantom has the same study UID on every run, so the demo uses a
# study cache of its own, emptied first: otherwise a run would fuse with the previous run's series.
CACHE="$OUT/study_cache"
rm -rf "$CACHE"
echo "== 1/3 making a synthetic T1-w + FLAIR stroke study in $OUT/study"
$PY -m simulator phantom --out "$OUT/study" --seed 0
echo "== 2/3 starting the MRD server on 127.0.0.1:$PORT (log: $OUT/server.log)"
$PY -m openrecon_stroke serve --host 127.0.0.1 --port "$PORT" --save-data "$OUT/received" \
    --cache-dir "$CACHE" >"$OUT/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
    if grep -q "listening" "$OUT/server.log" 2>/dev/null; then break; fi
    if ! kill -0 $SERVER 2>/dev/null; then echo "error: the server did not start; see $OUT/server.log" >&2; cat "$OUT/server.log" >&2; exit 1; fi
    sleep 0.1
done
echo "== 3/3 replaying each series as the scanner would"
for series in t1 flair; do
    $PY -m simulator replay "$OUT/study/$series.h5" --host 127.0.0.1 --port "$PORT" --out "$OUT/returned_$series.h5"
done
echo
echo "== the returned lesion masks against the phantom's truth"
for series in t1 flair; do
    echo "-- $series"
    $PY -m simulator score "$OUT/returned_$series.h5" --truth "$OUT/study/${series}_lesion_mask.nii.gz" || true
done
echo
echo "Done. Returned series (ISMRMRD): $OUT/returned_t1.h5, $OUT/returned_flair.h5"
echo "Previews (PNG montages):          $OUT/returned_*_series*.png"
echo "Truth masks of the phantom:       $OUT/study/*_mask.nii.gz"
echo "Server log:                       $OUT/server.log"
