#!/usr/bin/env bash
# The inference benchmark: libamlmil beside the peers a user would pick instead
# (PyTorch eager, frozen TorchScript, ONNX Runtime) on the same weights, thread
# count and inputs, at fp32 and at bf16 (int8 for ONNX Runtime), the machine's
# compute ceilings, end-to-end bags through the C ABI and peak memory, and the
# diagnosis guard of bf16 on a trained encoder + head; then ViT-S/14 (benches/vit.sh).
# Writes benches/results.json and prints the tables of docs/performance.md.
#
#   bash benches/run.sh [THREADS] [SECONDS]     # defaults: all cores, 8 s per measurement
#   BENCH_BIG=0 bash benches/run.sh             # skip the 20,000-cell bags (~4 min)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo build --quiet
threads="${1:-$(nproc)}"
secs="${2:-8}"
w=target/bench
mkdir -p "$w"
out="$w/results.jsonl"
: > "$out"
bin=target/debug/amlmil
for arch in resnet18 resnet34; do
  "$bin" init-checkpoint encoder --arch "$arch" --seed 1 --out "$w/$arch.safetensors" > /dev/null
  "$bin" export "$w/$arch.safetensors" --format onnx --out "$w/$arch.onnx" > /dev/null
done
"$bin" init-checkpoint mil --seed 2 --out "$w/mil.safetensors" > /dev/null
if [ ! -f "$w/cells.bin" ]; then
  "$bin" synth --out "$w/cohort" --patients-per-class 1 --cells 100..100 --size 144 --seed 7 > /dev/null
  "$AMLMIL_PYTHON" benches/prepare_cells.py "$w/cohort" "$w/cells.bin" 500
fi
cc -O2 -std=c11 -Iinclude benches/bag_bench.c -Ltarget/debug -lamlmil \
  -Wl,-rpath,"$PWD/target/debug" -o "$w/bag_bench"

echo "== encoders ($threads threads, ${secs} s each)" >&2
for arch in resnet18 resnet34; do
  for batch in 16 32; do
    # One process per measurement, so peak memory is each one's own.
    "$bin" bench --arch "$arch" --batch-size "$batch" --threads "$threads" --seconds "$secs" \
      $([ "$arch$batch" = resnet1816 ] && echo --gemm) | tee -a "$out" >&2
    "$bin" bench --arch "$arch" --batch-size "$batch" --threads "$threads" --seconds "$secs" \
      --precision bf16 | tee -a "$out" >&2
    for peer in eager channels_last torchscript onnxruntime \
      eager_bf16_autocast eager_bf16 torchscript_bf16 onnxruntime_int8; do
      "$AMLMIL_PYTHON" benches/peers.py "$w/$arch.safetensors" "$w/$arch.onnx" --threads "$threads" \
        --batch "$batch" --seconds "$secs" --only "$peer" 2>/dev/null | tee -a "$out" >&2
    done
  done
done

echo "== bags through the C ABI (resnet18, batch 16)" >&2
bag() { "$w/bag_bench" "$w/resnet18.safetensors" "$w/mil.safetensors" "$w/cells.bin" "$@" | tee -a "$out" >&2; }
# A throw-away run first (the first process after the peers runs slow), then
# each 500-cell bag 5 times on one session (median and minimum reported).
"$w/bag_bench" "$w/resnet18.safetensors" "$w/mil.safetensors" "$w/cells.bin" tiff 500 "$threads" 16 1 > /dev/null
bag tiff 500 "$threads" 16 5
bag pixels 500 "$threads" 16 5
bag stream-tiff 500 "$threads" 16 5
bag stream-pixels 500 "$threads" 16 5
bag tiff 500 "$threads" 16 5 0 bf16
bag stream-tiff 500 "$threads" 16 5 0 bf16
# A scanner still segmenting: cells arrive at 60 % of the encoder's rate.
rate=$(grep '"amlmil_fused"' "$out" | grep '"resnet18"' | grep '"batch":16' | sed 's/.*"cells_per_s":\([0-9.]*\).*/\1/')
bag stream-tiff 500 "$threads" 16 3 "$(awk -v r="$rate" 'BEGIN { print r * 0.6 }')"
if [ "${BENCH_BIG:-1}" = 1 ]; then
  # Peak memory: 20,000 cells against the 500-cell processes above.
  bag stream-pixels 20000 "$threads" 16 1
  bag pixels 20000 "$threads" 16 1
fi

echo "== the diagnosis guard: bf16 against fp32 on a trained encoder + head, the 500 cells above" >&2
g="$w/guard"
if [ ! -f "$g/mil/runs/seed0_fold0/mil.safetensors" ]; then
  # Trained on another synthetic cohort (25 patients), as tests/precision.rs does.
  rm -rf "$g" && mkdir -p "$g"
  "$bin" synth --out "$g/cohort" --patients-per-class 5 --cells 12..12 --size 144 --seed 5 > /dev/null
  "$bin" pretrain --method supervised --preset cpu-small --dataset "$g/cohort" --output "$g/encoder" \
    --epochs 2 --set '{"batch_size": 16, "device": "cpu", "image_size": 144, "supervised": {"crop": {"size": 128}}}' \
    > /dev/null 2>&1
  cat > "$g/mil.json" <<EOF
{"dataset": "$g/cohort", "encoder": "$g/encoder/encoder.safetensors", "output": "$g/mil", "device": "cpu",
 "training": {"accumulate": 1, "epochs": 30, "patience": 30, "standardize_features": true}}
EOF
  "$bin" train-mil --config "$g/mil.json" > /dev/null 2>&1
fi
"$bin" check-precision --encoder "$g/encoder/encoder.safetensors" --mil "$g/mil/runs/seed0_fold0/mil.safetensors" \
  --device cpu --precision bf16 --batch-size 16 "$w"/cohort/data/*/* > "$w/guard.json" || true
# The same guard for the int8 peer (ONNX Runtime, static quantisation calibrated on the training cohort).
AMLMIL_LIBRARY="$PWD/target/debug/libamlmil.so" AMLMIL_CLI="$PWD/$bin" "$AMLMIL_PYTHON" benches/int8_guard.py \
  "$g/encoder/encoder.safetensors" "$g/mil/runs/seed0_fold0/mil.safetensors" "$g/cohort" "$w"/cohort/data/*/* \
  2>/dev/null | tee -a "$out" >&2

"$AMLMIL_PYTHON" benches/report.py "$out" benches/results.json "$w/guard.json"

echo "== ViT-S/14 at 224 px beside timm, TorchScript and ONNX Runtime (benches/vit.sh)" >&2
bash benches/vit.sh "$threads" "$secs" 3 16
