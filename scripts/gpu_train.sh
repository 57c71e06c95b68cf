#!/usr/bin/env bash
# Full-width ResNet-18 on the lent GPU machine (JAX backend; it has no TensorFlow).
#
#   bash scripts/gpu_train.sh --prepare      # here, once: wheels into .whl/, the data pack into .data/
#   device run: command "bash scripts/gpu_train.sh", carry [".whl", ".data"], timeout_s 540
#   EPOCHS=1 WIDTH=4 SUBSET=512 bash scripts/gpu_train.sh    # a tiny try on the CPU here
#
# Leaves under $OUT (default ./gpu-out), within the device tool's 8 files of 16 MiB:
# summary.txt, results.tar.gz (train.log, metrics.csv, config.json, eval.json, curves.png)
# and model.keras split into parts under 16 MiB (`cat model.keras.part-* > model.keras`).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

if [ "${1:-}" = "--prepare" ]; then
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || printf '/.whl/\n/.data/\n/.site/\n' >> .git/info/exclude
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl keras==3.15.1 namex==0.1.0 optree==0.20.0
  mkdir -p .data && cp ../shared/data/cifar10-jpeg.npz ../shared/data/cifar10_jpeg.py .data/
  echo "prepared: $(ls .whl | tr '\n' ' ')"
  exit 0
fi

OUT=${OUT:-$ROOT/gpu-out}
mkdir -p "$OUT"
if ! python3 -c "import keras" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target .site .whl/*.whl
  export PYTHONPATH="$ROOT/.site"
fi
export PYTHONPATH="$ROOT:${PYTHONPATH:-}" KERAS_BACKEND=jax XLA_PYTHON_CLIENT_PREALLOCATE=false

if [ -z "${EDGEL2_DATA:-}" ]; then
  export EDGEL2_DATA=/tmp/edgel2-cifar10
  [ -d "$EDGEL2_DATA/test" ] || python3 .data/cifar10_jpeg.py unpack "$EDGEL2_DATA" > /dev/null
fi
run=/tmp/edgel2-gpu-run-$$
mkdir -p "$run"
python3 -m edgel2 train --backend jax --data "$EDGEL2_DATA" --out "$run" --quiet \
  --width "${WIDTH:-64}" --epochs "${EPOCHS:-30}" --batch-size "${BATCH:-512}" --lr "${LR:-0.4}" \
  --weight-l2 "${WEIGHT_L2:-2.5e-4}" --feature-l2 "${FEATURE_L2:-1e-4}" \
  --label-smoothing "${SMOOTHING:-0.1}" --seed "${SEED:-0}" ${SUBSET:+--subset $SUBSET} \
  ${EXTRA:-} 2>&1 | tee "$run.log"
python3 -m edgel2 eval "$run/model.keras" --data "$EDGEL2_DATA" --json --out "$run/eval" > "$run/eval.json"
mv "$run.log" "$run/train.log"
tar -czf "$OUT/results.tar.gz" -C "$run" train.log metrics.csv config.json eval.json curves.png
split -b 15M "$run/model.keras" "$OUT/model.keras.part-"
python3 - "$run/metrics.csv" "$run/eval.json" <<'PY' | tee "$OUT/summary.txt"
import csv, json, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
seconds = [float(r["seconds"]) for r in rows]
steady = statistics.median(seconds[1:]) if len(seconds) > 1 else seconds[0]
compile_s = seconds[0] - steady
acc = json.load(open(sys.argv[2]))["accuracy"]
print(f"epochs {len(rows)}; first epoch {seconds[0]:.1f} s (about {compile_s:.1f} s of it compile); "
      f"steady epoch {steady:.2f} s; training time without compile {sum(seconds) - compile_s:.1f} s; "
      f"CIFAR-10-JPEG test top-1 {100 * acc:.2f} %")
PY
rm -rf "$run"
