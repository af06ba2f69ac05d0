#!/usr/bin/env bash
# Train every shipped lesion model: T1-w only and FLAIR only (3 folds each, the two contrasts
# side by side with one thread each), then build the T1-w+FLAIR late-fusion folds from them,
# export ONNX and write the model cards. Resumable: rerun after a stop. The shipped models:
#   models/lesion/train_all.sh            # fold steps "1100 600 600" (about 1.2 h on 2 idle cores)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
STEPS=(${STEPS:-1100 600 600})
DATA=${DATA:-../shared/data}
chain() {  # contrast
  for k in 0 1 2; do
    $PY models/lesion/train.py --inputs "$1" --fold $k --data "$DATA" --out models/lesion/$1 \
        --steps "${STEPS[$k]}" --threads 1
  done
}
chain t1 > models/lesion/t1.log 2>&1 &
chain flair > models/lesion/flair.log 2>&1 &
wait
# late fusion: the single-contrast folds' branches, their heads' logits averaged (no training;
# a fusion layer trained with train.py --init-from over-segmented, see MODEL_CARD.md)
$PY models/lesion/average_fusion.py
for m in t1 flair fusion; do $PY models/lesion/make_card.py models/lesion/$m; done
