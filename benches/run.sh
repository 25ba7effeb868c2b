#!/usr/bin/env bash
# The inference benchmark: libamlmil beside the peers a user would pick instead
# (PyTorch eager, frozen TorchScript, ONNX Runtime) on the same weights, thread
# count and inputs, plus end-to-end bags through the C ABI and peak memory.
# Writes benches/results.json and prints the README's tables.
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
    for peer in eager channels_last torchscript onnxruntime; do
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
# A scanner still segmenting: cells arrive at 60 % of the encoder's rate.
rate=$(grep '"amlmil_fused"' "$out" | grep '"resnet18"' | grep '"batch":16' | sed 's/.*"cells_per_s":\([0-9.]*\).*/\1/')
bag stream-tiff 500 "$threads" 16 3 "$(awk -v r="$rate" 'BEGIN { print r * 0.6 }')"
if [ "${BENCH_BIG:-1}" = 1 ]; then
  # Peak memory: 20,000 cells against the 500-cell processes above.
  bag stream-pixels 20000 "$threads" 16 1
  bag pixels 20000 "$threads" 16 1
fi
"$AMLMIL_PYTHON" benches/report.py "$out" benches/results.json
