#!/usr/bin/env bash
# Full-width ResNet-18 on the lent GPU machine (JAX backend; it has no TensorFlow), then the
# L2 ablation at full width with whatever time is left.
#
#   bash scripts/gpu_train.sh --prepare      # here, once: wheels into .whl/, the data pack into .data/
#   device run: command "bash scripts/gpu_train.sh",
#               carry [".whl", ".data/cifar10-jpeg.npz", ".data/cifar10_jpeg.py"], timeout_s 580
#   EPOCHS=1 WIDTH=4 SUBSET=512 ABLATION_EPOCHS=1 bash scripts/gpu_train.sh   # a tiny CPU try
#
# Knobs (environment): EPOCHS BATCH LR WEIGHT_L2 FEATURE_L2 SMOOTHING CUTOUT EMA SEED WIDTH
# SUBSET EXTRA for the main run; ABLATION_EPOCHS (0 skips it), ABLATION_SEEDS; BUDGET_S, the seconds after
# which the ablation starts no new row (keep it under the device call's timeout).
#
# Leaves under $OUT (default ./gpu-out), within the device tool's 8 files of 16 MiB:
# summary.txt, device.txt, results.tar.gz (train.log, metrics.csv, config.json, eval.json,
# curves.png), model.keras split into parts under 16 MiB, ablation.log (a line per finished row,
# written as it goes) and ablation.json. Back here, rebuild the run directory with
#   mkdir run && cat model.keras.part-* > run/model.keras && tar -xzf results.tar.gz -C run
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
START=$SECONDS

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
if ! KERAS_BACKEND=jax python3 -c "import keras" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target .site .whl/*.whl
  export PYTHONPATH="$ROOT/.site"
fi
# Autotuning results shared between the processes below: later compiles of the same
# convolutions skip the search.
mkdir -p /tmp/edgel2-xla-autotune
export PYTHONPATH="$ROOT:${PYTHONPATH:-}" KERAS_BACKEND=jax XLA_PYTHON_CLIENT_PREALLOCATE=false \
  XLA_FLAGS="--xla_gpu_per_fusion_autotune_cache_dir=/tmp/edgel2-xla-autotune ${XLA_FLAGS:-}" \
  PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  python3 -c "import jax, keras; print('jax', jax.__version__, 'keras', keras.__version__, jax.devices())"
} > "$OUT/device.txt" 2>&1

if [ -z "${EDGEL2_DATA:-}" ]; then
  export EDGEL2_DATA=/tmp/edgel2-cifar10
  [ -d "$EDGEL2_DATA/test" ] || python3 .data/cifar10_jpeg.py unpack "$EDGEL2_DATA" > /dev/null
fi
echo "setup took $((SECONDS - START)) s" >> "$OUT/device.txt"

# Defaults: the best recipe measured so far (README, "Training on a GPU", run 9: 92.56 %).
EPOCHS=${EPOCHS:-80} WIDTH=${WIDTH:-64} BATCH=${BATCH:-512} LR=${LR:-0.4}
run=/tmp/edgel2-gpu-run-$$
mkdir -p "$run"
t0=$SECONDS
python3 -m edgel2 train --backend jax --data "$EDGEL2_DATA" --out "$run" --quiet \
  --width "$WIDTH" --epochs "$EPOCHS" --batch-size "$BATCH" --lr "$LR" \
  --weight-l2 "${WEIGHT_L2:-2.5e-4}" --feature-l2 "${FEATURE_L2:-1e-4}" \
  --label-smoothing "${SMOOTHING:-0.2}" --cutout "${CUTOUT:-16}" --ema "${EMA:-0.99}" \
  --seed "${SEED:-0}" ${SUBSET:+--subset $SUBSET} \
  --checkpoint-every "$EPOCHS" ${EXTRA:-} 2>&1 | tee "$run.log"
wall=$((SECONDS - t0))
python3 -m edgel2 eval "$run/model.keras" --data "$EDGEL2_DATA" --json --out "$run/eval" > "$run/eval.json"
mv "$run.log" "$run/train.log"
tar -czf "$OUT/results.tar.gz" -C "$run" train.log metrics.csv config.json eval.json curves.png
split -b 15M "$run/model.keras" "$OUT/model.keras.part-"
python3 - "$run/metrics.csv" "$run/eval.json" "$wall" <<'PY' | tee "$OUT/summary.txt"
import csv, json, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
seconds = [float(r["seconds"]) for r in rows]
steady = statistics.median(seconds[1:]) if len(seconds) > 1 else seconds[0]
compile_s = seconds[0] - steady
acc = json.load(open(sys.argv[2]))["accuracy"]
print(f"epochs {len(rows)}; first epoch {seconds[0]:.1f} s (about {compile_s:.1f} s of it compile); "
      f"steady epoch {steady:.2f} s (train + test pass); training time without compile "
      f"{sum(seconds) - compile_s:.1f} s; whole `edgel2 train` process {sys.argv[3]} s; "
      f"CIFAR-10-JPEG test top-1 {100 * acc:.2f} %")
PY
rm -rf "$run"

ABLATION_EPOCHS=${ABLATION_EPOCHS:-15}
if [ "$ABLATION_EPOCHS" -gt 0 ]; then
  # Start no row that could not finish before BUDGET_S (a row: compile + epochs + measuring).
  row_s=${ROW_S:-75}
  stop=$(( ${BUDGET_S:-540} - (SECONDS - START) - row_s ))
  if [ "$stop" -lt 0 ]; then
    echo "no time left for the ablation" | tee "$OUT/ablation.log"
  else
    abl=/tmp/edgel2-ablation-$$
    python3 scripts/ablation.py --data "$EDGEL2_DATA" --width "$WIDTH" --subset "${SUBSET:-50000}" \
      --epochs "$ABLATION_EPOCHS" --batch-size "$BATCH" --lr "$LR" --seeds "${ABLATION_SEEDS:-0}" \
      --eval-subset 2000 --out "$abl" --stop-after "$stop" 2>&1 | tee "$OUT/ablation.log"
    cp "$abl/ablation.json" "$OUT/" 2>/dev/null || true
    rm -rf "$abl"
  fi
fi
echo "gpu_train.sh done in $((SECONDS - START)) s" | tee -a "$OUT/summary.txt"
