#!/usr/bin/env bash
# Does the L2 penalty on the pooled features (lambda * mean ||u||^2) help or hurt telling known
# images from unknown ones, and does training that targets unknown images (outlier exposure on
# synthetic outliers, logit norm) help? Trains the same small ResNet-18 at feature L2 0, 1e-4
# and 1e-2, plain, with --outliers and with --logit-norm, for two seeds, then measures every
# candidate unknown score on each (scripts/repro/unknown_scores.py against the probe of
# scripts/tools/make_ood_probe.py). Results: docs/measurements/unknown.md.
#
#   python scripts/tools/make_ood_probe.py .data/ood
#   PROBE=.data/ood bash scripts/repro/unknown_l2.sh      # about 3 hours on 2 CPU cores
#
# Knobs: WIDTH (16), EPOCHS (10), SUBSET (10000 training images), SEEDS ("0 1"),
# LAMBDAS ("0 1e-4 1e-2"), TRAININGS ("plain outliers logit-norm"), OUTLIERS (0.25),
# LOGIT_NORM (0.04), OUT (runs/unknown-l2). A finished run is not trained or measured again;
# the tables at the end are scripts/repro/unknown_l2_table.py OUT.
set -euo pipefail
cd "$(dirname "$0")/../.."
PROBE=${PROBE:?PROBE must name the probe folder (scripts/tools/make_ood_probe.py writes it)}
WIDTH=${WIDTH:-16} EPOCHS=${EPOCHS:-10} SUBSET=${SUBSET:-10000}
SEEDS=${SEEDS:-"0 1"} LAMBDAS=${LAMBDAS:-"0 1e-4 1e-2"} OUT=${OUT:-runs/unknown-l2}
TRAININGS=${TRAININGS:-"plain outliers logit-norm"} OUTLIERS=${OUTLIERS:-0.25}
LOGIT_NORM=${LOGIT_NORM:-0.04}
mkdir -p "$OUT"
for lambda in $LAMBDAS; do
  for training in $TRAININGS; do
    case $training in
      plain) extra=() tag="" ;;
      outliers) extra=(--outliers "$OUTLIERS") tag="-oe$OUTLIERS" ;;
      logit-norm) extra=(--logit-norm "$LOGIT_NORM") tag="-ln$LOGIT_NORM" ;;
      *) echo "unknown training '$training' (plain, outliers or logit-norm)" >&2; exit 2 ;;
    esac
    for seed in $SEEDS; do
      run="$OUT/w$WIDTH-l2$lambda$tag-s$seed"
      [ -f "$run/model.keras" ] || edgel2 train --width "$WIDTH" --epochs "$EPOCHS" \
        --subset "$SUBSET" --batch-size 256 --lr 0.3 --feature-l2 "$lambda" --seed "$seed" \
        "${extra[@]}" --quiet --out "$run"
      if [ ! -s "$run/unknown_scores.md" ]; then
        python scripts/repro/unknown_scores.py --model "$run/model.keras" --ood "$PROBE" \
          --fit-images 5000 --test-images 2500 > "$run/unknown_scores.md.partial"
        mv "$run/unknown_scores.md.partial" "$run/unknown_scores.md"
      fi
      head -1 "$run/unknown_scores.md"   # its top-1, then the table
    done
  done
done
python scripts/repro/unknown_l2_table.py "$OUT"   # the tables of the measurements page
