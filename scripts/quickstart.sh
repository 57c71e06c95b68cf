#!/usr/bin/env bash
# Install what the main job needs (scripts/setup.sh: edgel2[train] into .venv; the test tools
# come with scripts/test.sh), then the main job end to end on real CIFAR-10:
# a short CPU-sized training run (narrow ResNet-18, 10,000 images, a few minutes on 2 cores)
# an evaluation of it on the full test split, and every export. Override with e.g. EPOCHS=30 WIDTH=64.
set -euo pipefail
EDGEL2_EXTRAS=train source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
run="runs/train/quickstart"
[ -e "$run" ] && run="$run-$(date +%Y%m%d-%H%M%S)"  # never over an earlier run
edgel2 train --width "${WIDTH:-16}" --epochs "${EPOCHS:-4}" --subset "${SUBSET:-10000}" \
  --batch-size 128 --lr 0.2 --test-subset 2000 --name quickstart --out "$run"
edgel2 eval "$run/model.keras"
# A few-minute model is noisy: keep quantized files even if they lose > 2 points (the table says).
edgel2 export "$run/model.keras" --format all --precision all --allow-drop
if [ -d "${EDGEL2_DATA:-}/test" ]; then  # classify a few real test images with the int8 ONNX
  edgel2 infer "$EDGEL2_DATA"/test/*/000[0-1].* --model "$run/export/quickstart-int8.onnx" --top-k 2
fi
# to try it over HTTP (needs edgel2[serve]; Ctrl-C stops it):
#   edgel2 serve --model "$run/export/quickstart-int8.onnx"
echo "quickstart: done; curves in $run/curves.png, confusion matrix in $run/eval/confusion.png,"
echo "            exported files and export_report.json in $run/export/"
echo "put edgel2 on your PATH with: source .venv/bin/activate"
