#!/usr/bin/env bash
# Train every shipped lesion model: T1-w only and FLAIR only (3 folds each, the two contrasts
# side by side with one thread each), then T1-w+FLAIR late fusion (3 folds, branches initialised
# from the single-contrast folds of the same split, then trained together), export ONNX and
# write the model cards. Resumable: rerun after a stop. The shipped models used the defaults:
#   models/lesion/train_all.sh            # fold steps "1100 600 600", fusion 150 (about 1.5 h on 2 idle cores)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
STEPS=(${STEPS:-1100 600 600})
FUSION_STEPS=${FUSION_STEPS:-150}
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
for k in 0 1 2; do
  $PY models/lesion/train.py --inputs t1,flair --fold $k --data "$DATA" --out models/lesion/fusion \
      --steps "$FUSION_STEPS" --lr 5e-4 --init-from models/lesion/t1,models/lesion/flair --threads 2
done > models/lesion/fusion.log 2>&1
for m in t1 flair fusion; do $PY models/lesion/make_card.py models/lesion/$m; done
