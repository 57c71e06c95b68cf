#!/usr/bin/env bash
# The small model on a CPU: the shipped ResNet-20 (models/resnet20/), the comparison of the
# same student distilled from the shipped int8 ResNet-18 against trained alone, and the family
# benchmark.
# Every run resumes where it stopped (edgel2 train --resume), so the script can be killed and
# started again, across days, and finishes what is left.
#
#   bash scripts/repro/small_model.sh              # everything below, in order
#   STEP=main bash scripts/repro/small_model.sh    # one step: main, compare, export or bench
#   STEP=cycle2 bash scripts/repro/small_model.sh  # a second cycle from the shipped weights
#   STEP=long bash scripts/repro/small_model.sh    # He et al.'s length: 160 epochs, about 12 h
#   STEP=export EXPORT_RUN=resnet20-long bash scripts/repro/small_model.sh
#   STEP=ship EXPORT_RUN=resnet20-long bash scripts/repro/small_model.sh  # into models/resnet20/
#
# Knobs: OUT (runs/small), EPOCHS (60) and MAIN_TEACHER (none) for the main run;
# COMPARE_EPOCHS (30), COMPARE_SUBSET (10000) and SEEDS ("0 1") for the comparison; DTYPE
# (bf16, mixed bfloat16, on a CPU with AVX512_BF16 or AMX, where it is about a quarter faster
# than fp32; fp32 elsewhere, where bf16 is emulated and about 3x slower; both measured).
# The recipe: batch 256 at peak learning rate 0.2 (twice the steps of the default batch 512,
# for a network this small); distilled runs use temperature 2, weight 0.9. The main run trains
# alone by default: on a 2-core CPU the teacher (the int8 ResNet-18 on every augmented batch)
# nearly doubles an epoch (about 175 s against 90 s, measured), so distillation buys no accuracy per
# hour unless it beats twice the epochs; MAIN_TEACHER=models/resnet18-int8.onnx distils.
# cycle2 (not part of "all"): CYCLE2_EPOCHS (20) more epochs from models/resnet20/, one cosine
# cycle at half the first run's peak (0.1), without --weights' fine-tuning augmentation (colour
# jitter, zoom crops); the classifier is kept too (CIFAR-10's classes are the weights'). On a 2-core CPU
# TensorFlow trains this network 1.8-3.3x faster than JAX (measured); a resume keeps the
# backend the run started on. EXPORT_RUN (resnet20) names the run exported.
# On a CPU with AVX2 only, TF_ENABLE_ONEDNN_OPTS=1 in the environment trains 1.6x faster but
# not reproducibly to the bit (docs/guides/train.md); cycle2 was trained so from epoch 3.
# long (not part of "all"): the main recipe for LONG_EPOCHS (160, about what He et al. train a
# ResNet-20 for to reach 91.25 %) with a cosine schedule and 3 % warm-up, on oneDNN's kernels
# unless TF_ENABLE_ONEDNN_OPTS says otherwise: about 273 s an epoch on a 2-core AVX2-only EPYC
# (measured), so about 12 hours, resumed across as many calls as it takes.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-runs/small}
TEACHER=${TEACHER:-models/resnet18-int8.onnx}
DTYPE=${DTYPE:-$(python -c 'from edgel2.backend import cpu_bfloat16
print("bf16" if cpu_bfloat16() else "fp32")')}
mkdir -p "$OUT"

# train NAME OPTIONS...: train into $OUT/NAME, or resume it, or skip it when it has finished.
train() {
  local name=$1; shift
  local dir=$OUT/$name
  if [ -f "$dir/model.keras" ] && [ -f "$dir/summary.json" ]; then
    echo "$name: finished ($(cat "$dir/summary.json"))"
    return
  fi
  local t0=$SECONDS
  if [ -f "$dir/config.json" ]; then  # started: resume (from scratch if killed before epoch 1)
    edgel2 train --resume "$dir" --quiet
  else
    edgel2 train --arch resnet20 --compute-dtype "$DTYPE" --name "$name" --out "$dir" --quiet "$@"
  fi
  echo "$name: $((SECONDS - t0)) s of training in this call" | tee -a "$OUT/wall.txt"
}

step=${STEP:-all}
if [ "$step" = all ] || [ "$step" = main ]; then
  distill=()
  if [ -n "${MAIN_TEACHER:-}" ]; then
    distill=(--teacher "$MAIN_TEACHER" --distill-temperature 2 --distill-weight 0.9)
  fi
  train resnet20 "${distill[@]}" --epochs "${EPOCHS:-60}" --batch-size 256 --lr 0.2 --seed 0
fi
if [ "$step" = cycle2 ]; then
  train resnet20-cycle2 --name resnet20 --weights models/resnet20/resnet20-int8.onnx \
    --epochs "${CYCLE2_EPOCHS:-20}" --batch-size 256 --lr 0.1 --schedule cosine --warmup 0.05 \
    --color-jitter 0 --crop-scale 1 --seed 0
fi
if [ "$step" = long ]; then
  TF_ENABLE_ONEDNN_OPTS=${TF_ENABLE_ONEDNN_OPTS:-1} train resnet20-long --name resnet20 \
    --epochs "${LONG_EPOCHS:-160}" --batch-size 256 --lr 0.2 --schedule cosine --warmup 0.03 --seed 0
fi
if [ "$step" = all ] || [ "$step" = compare ]; then
  for seed in ${SEEDS:-0 1}; do
    common=(--epochs "${COMPARE_EPOCHS:-30}" --subset "${COMPARE_SUBSET:-10000}"
            --batch-size 256 --lr 0.2 --seed "$seed")
    train "compare-kd-seed$seed" --teacher "$TEACHER" "${common[@]}"
    train "compare-alone-seed$seed" "${common[@]}"
  done
  python - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
rows = []
for run in sorted(Path(sys.argv[1]).glob("compare-*")):
    summary = run / "summary.json"
    if summary.is_file():
        rows.append((run.name, json.loads(summary.read_text())["model.keras"]["test_acc"]))
for name, top1 in rows:
    print(f"{name:<24} fp32 top-1 {100 * top1:.2f} %")
EOF
fi
if [ "$step" = all ] || [ "$step" = export ]; then
  edgel2 export "$OUT/${EXPORT_RUN:-resnet20}/model.keras" --format onnx,tflite --precision fp32,int8 \
    --check all --c-array --force
fi
if [ "$step" = ship ]; then  # not part of "all": replaces the shipped small model
  python scripts/tools/ship_model.py "$OUT/${EXPORT_RUN:-resnet20}/export/resnet20-int8.onnx" \
    "$OUT/${EXPORT_RUN:-resnet20}/export/resnet20-int8.tflite" --to models/resnet20
  python scripts/tools/make_test_vectors.py
fi
if [ "$step" = all ] || [ "$step" = bench ]; then
  edgel2 benchmark models/ "$OUT/${EXPORT_RUN:-resnet20}/export" --format onnx,tflite,openvino \
    --batch-sizes 1,64 --repeat 5 --check all --out "$OUT/family.json"
fi
