#!/usr/bin/env bash
# Rebuild the shipped template-space models from nothing: the cases (every head through the
# pipeline's own preprocessing and MNI152 registration), the normative model, the three lesion
# voxel classifiers, and their evaluation (validation heads choose the threshold, test heads and
# leave-one-out real heads report). Resumable: a finished step is skipped on a rerun.
#
#   SynthSeg maps 01-12, the MNI head, the three real heads: training
#   SynthSeg maps 13-14: validation (threshold and hysteresis seed of the cards)
#   SynthSeg maps 15-20: test, never seen by any model
#
# Cases made before 2026-12-01 drew contrast, orientation and lesions from the seed alone (every
# head of a seed alike; `scheme` missing or 1 in their pickles): make them again in a new CACHE.
# Needs the `train` extra (lightgbm, onnxmltools) and ../shared/data (or OPENRECON_SHARED_DATA).
# About 1.5 h for the cases and 1 h for the models on 2 idle cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
CACHE=${CACHE:-$HOME/.cache/openrecon-stroke/lesion-cases}
WORK=${WORK:-$CACHE/build}
CACHE_REAL_EXTRA=${CACHE_REAL_EXTRA:-$CACHE-real-extra}
CACHE_VENTRICLES=${CACHE_VENTRICLES:-$CACHE-ventricles}
# the image features of every voxel classifier: "all" rebuilds the shipped cards (intensity relative
# to white matter); the next cards use the tissue-standardised scale (the brain's CSF, grey and white
# matter on fixed levels; models/lesion/MODEL_CARD.md, "contrasts no training case had"):
#   FEATURES=tint,tint_s2,tint_s5,z,z_s2,z_s4,texpect,tmirror,tmirror_s3,zmirror_s2,tlstd3
# and the FLAIR's own (FLAIR_FEATURES; the FLAIR lost 0.05-0.09 Dice standardised, so "all" there)
FEATURES=${FEATURES:-all}
FLAIR_FEATURES=${FLAIR_FEATURES:-$FEATURES}
VAL="synthseg_13 synthseg_14"
TEST="synthseg_15 synthseg_16 synthseg_17 synthseg_18 synthseg_19 synthseg_20"

# 1. cases
$PY models/lesion/cases.py --cache "$CACHE" --heads synthseg_01-14 --seeds 0-2 --healthy-seeds 100-102
$PY models/lesion/cases.py --cache "$CACHE" --heads mni --seeds 0-2 --healthy-seeds 100 --no-flair-alone
$PY models/lesion/cases.py --cache "$CACHE" --heads chris_t1 gd_t1 flair_real --seeds 0-3 --healthy-seeds 100
$PY models/lesion/cases.py --cache "$CACHE" --heads synthseg_15-20 --seeds 0-1 --healthy-seeds 100

# 1b. cases only the T1-w card's candidate filter learns from (kept apart: no voxel model sees them):
#     more lesions in the two real T1-w heads (gd_t1 seed 4 fails its template check and is left
#     out), and healthy heads with both lateral ventricles grown by 40 %
$PY models/lesion/cases.py --cache "$CACHE_REAL_EXTRA" --heads chris_t1 --seeds 4-9 --healthy-seeds ""
$PY models/lesion/cases.py --cache "$CACHE_REAL_EXTRA" --heads gd_t1 --seeds 5-9 --healthy-seeds ""
$PY models/lesion/cases.py --cache "$CACHE_VENTRICLES" --heads synthseg_01-12 --seeds "" --healthy-seeds 200 \
    --ventricle-growth 0.4

# 2. normative models (never the validation or test heads): healthy heads only, for the lesion
#    models' z-features; and with the lesion heads' tissue away from their lesions, for the anomaly map
[ -f "$WORK/normative/card.json" ] ||
    $PY models/normative/build.py --cache "$CACHE" --out "$WORK/normative" --exclude $VAL $TEST
[ -f "$WORK/normative_anomaly/card.json" ] ||
    $PY models/normative/build.py --cache "$CACHE" --out "$WORK/normative_anomaly" --with-lesion-cases --standardise t1 \
        --standardise-tissue flair --darker-only t1 --ventricles-apart --exclude $VAL $TEST

# 3. lesion voxel classifiers, one hard-negative round
[ -f "$WORK/models/fusion/card.json" ] ||
    $PY models/lesion/voxel_train.py --cache "$CACHE" --normative "$WORK/normative" --out "$WORK/models" \
        --exclude $VAL --hard-rounds 1 --features "$FEATURES" --flair-features "$FLAIR_FEATURES"

# 3b. out-of-fold models for the T1-w and fusion cards' candidate filters (models/lesion/candidate_train.py):
#     the training heads in three folds, each fold's normative and voxel models built without its heads
#     (a FLAIR filter was measured and not shipped: models/lesion/MODEL_CARD.md)
declare -A FOLD
FOLD[a]="synthseg_01 synthseg_02 synthseg_03 synthseg_04 chris_t1"
FOLD[b]="synthseg_05 synthseg_06 synthseg_07 synthseg_08 gd_t1 mni"
FOLD[c]="synthseg_09 synthseg_10 synthseg_11 synthseg_12 flair_real"
for f in a b c; do
    [ -f "$WORK/folds/$f/normative/card.json" ] ||
        $PY models/normative/build.py --cache "$CACHE" --out "$WORK/folds/$f/normative" --exclude $VAL $TEST ${FOLD[$f]}
    for inp in t1 fusion; do
        [ -f "$WORK/folds/$f/$inp/card.json" ] ||
            $PY models/lesion/voxel_train.py --cache "$CACHE" --normative "$WORK/folds/$f/normative" \
                --out "$WORK/folds/$f" --exclude $VAL ${FOLD[$f]} --inputs $inp --hard-rounds 1 --features "$FEATURES" --flair-features "$FLAIR_FEATURES"
    done
done

# 4. evaluation: validation (choose), test (report), anomaly map and ventricles
GRID="--thresholds 0.3,0.4,0.5,0.6,0.7 --seeds 0,0.8,0.9,0.95"
$PY models/lesion/evaluate_voxel.py "$WORK/models" --cache "$CACHE" --heads $VAL $GRID --json "$WORK/eval_val.json"
$PY models/lesion/evaluate_voxel.py "$WORK/models" --cache "$CACHE" $GRID --json "$WORK/eval_test.json"
$PY models/normative/evaluate.py "$WORK/normative_anomaly" --cache "$CACHE" \
    --ventricle-heads synthseg_15 synthseg_16 synthseg_19 synthseg_20 --json "$WORK/eval_normative.json"

# 5. leave one real head out: its normative model and its lesion model without it
for h in chris_t1 gd_t1 flair_real; do
    inp=t1; [ "$h" = flair_real ] && inp=flair
    [ -f "$WORK/loo/$h/normative/card.json" ] ||
        $PY models/normative/build.py --cache "$CACHE" --out "$WORK/loo/$h/normative" --exclude $VAL $TEST "$h"
    [ -f "$WORK/loo/$h/$inp/card.json" ] ||
        $PY models/lesion/voxel_train.py --cache "$CACHE" --normative "$WORK/loo/$h/normative" \
            --out "$WORK/loo/$h" --exclude $VAL "$h" --inputs $inp --hard-rounds 1 --features "$FEATURES" --flair-features "$FLAIR_FEATURES"
done
$PY models/lesion/evaluate_voxel.py "$WORK/loo" --loo --cache "$CACHE" --heads chris_t1 gd_t1 flair_real $GRID \
    --json "$WORK/eval_loo.json"
for h in chris_t1 gd_t1 flair_real; do  # the anomaly map on each real head, statistics built without it
    [ -f "$WORK/loo/$h/normative_anomaly/card.json" ] ||
        $PY models/normative/build.py --cache "$CACHE" --out "$WORK/loo/$h/normative_anomaly" --with-lesion-cases \
            --standardise t1 --standardise-tissue flair --darker-only t1 --ventricles-apart \
            --exclude $VAL $TEST "$h"
    $PY models/normative/evaluate.py "$WORK/loo/$h/normative_anomaly" --cache "$CACHE" --heads "$h" \
        --json "$WORK/eval_normative_$h.json"
done

echo "Built in $WORK. Copy the models into the repository with the cards' threshold and seed chosen on"
echo "the validation heads (eval_val.json): models/lesion/ship.py $WORK"
echo "then cut and calibrate each card's cascade on the training heads, checked on the test heads:"
echo "  for m in t1 flair fusion; do $PY models/lesion/cascade.py models/lesion/\$m --cache $CACHE \\"
echo "    --heads chris_t1 flair_real gd_t1 mni synthseg_01-12 --per-head 2 --check $TEST \\"
echo "    --trees 140 --safe 0.2 --margin 0.5 --skip-fraction 0.0001 --write; done"
echo "then train the T1-w and fusion cards' candidate filters on the out-of-fold candidates:"
echo "  $PY models/lesion/candidate_train.py models/lesion/t1 --cache $CACHE $CACHE_REAL_EXTRA $CACHE_VENTRICLES \\"
echo "    --margin 0.25 --fold $WORK/folds/a/t1 ${FOLD[a]} --fold $WORK/folds/b/t1 ${FOLD[b]} \\"
echo "    --fold $WORK/folds/c/t1 ${FOLD[c]} --write"
echo "  $PY models/lesion/candidate_train.py models/lesion/fusion --cache $CACHE --margin 0.25 \\"
echo "    --fold $WORK/folds/a/fusion ${FOLD[a]} --fold $WORK/folds/b/fusion ${FOLD[b]} \\"
echo "    --fold $WORK/folds/c/fusion ${FOLD[c]} --write"
