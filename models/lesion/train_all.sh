#!/usr/bin/env bash
# Train every shipped lesion model: T1-w only and FLAIR only (3 folds each, the two contrasts
# side by side with one thread each), then build the T1-w+FLAIR late-fusion folds from them,
# export ONNX and write the model cards. Resumable: rerun after a stop (each phase resumes from
# the fold checkpoints; a finished phase is a no-op).
#   phase 1: fold steps "1100 600 600", a third of the patches centred on a lesion
#   phase 2: continued to "1900 1400 1400" with a fifth on lesions (fewer false positives)
#   phase 3: continued to "2400 1900 1900", half of the patches cut with HD-BET's brain mask
#            instead of the exact one (the mask the pipeline really uses; needs the cases'
#            HD-BET masks, computed once into the cache, about 35 s per case)
# About 1.2 h + 0.6 h + 0.5 h on 2 idle cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
DATA=${DATA:-../shared/data}
OUT=${OUT:-models/lesion}
chain() {  # contrast, "steps per fold", lesion fraction, HD-BET mask fraction
  local steps=($2)
  for k in 0 1 2; do
    $PY models/lesion/train.py --inputs "$1" --fold $k --data "$DATA" --out "$OUT/$1" \
        --steps "${steps[$k]}" --threads 1 --lesion-fraction "$3" --bet-fraction "$4"
  done
}
phase() {  # "steps per fold", lesion fraction, HD-BET mask fraction
  chain t1 "$1" "$2" "$3" >> "$OUT/t1.log" 2>&1 &
  chain flair "$1" "$2" "$3" >> "$OUT/flair.log" 2>&1 &
  wait
}
phase "1100 600 600" 0.33 0
phase "1900 1400 1400" 0.2 0
phase "2400 1900 1900" 0.2 0.5
# late fusion: the single-contrast folds' branches, their heads' logits averaged (no training;
# a fusion layer trained with train.py --init-from over-segmented, see MODEL_CARD.md)
$PY models/lesion/average_fusion.py --t1 "$OUT/t1" --flair "$OUT/flair" --out "$OUT/fusion"
for m in t1 flair fusion; do $PY models/lesion/make_card.py "$OUT/$m"; done
