#!/usr/bin/env bash
# What an ensemble of K attention-MIL heads costs beside the encoder: the same
# 500-cell bag (144 px TIFFs, ResNet18, the paper's four-convolution g)
# classified through the C ABI (benches/bag_bench.c) with a MIL checkpoint of
# K = 1, 5 and 15 heads (seeded random heads made into an ensemble by
# `amlmil ensemble`), at fp32 and, where the CPU has native bf16, at bf16.
# Prints one JSON line per measurement and the cost of the heads relative to
# one head.
#
#   bash benches/ensemble.sh [THREADS] [REPEATS]     # defaults: all cores, 5
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo build --quiet
threads="${1:-$(nproc)}"
repeats="${2:-5}"
w=target/bench-ensemble
mkdir -p "$w"
bin=target/debug/amlmil
"$bin" init-checkpoint encoder --arch resnet18 --seed 1 --out "$w/resnet18.safetensors" > /dev/null 2>&1
if [ ! -f "$w/cells.bin" ]; then
  "$bin" synth --out "$w/cohort" --patients-per-class 1 --cells 100..100 --size 144 --seed 7 > /dev/null
  "$AMLMIL_PYTHON" benches/prepare_cells.py "$w/cohort" "$w/cells.bin" 100
fi
cc -O2 -std=c11 -Iinclude benches/bag_bench.c -Ltarget/debug -lamlmil \
  -Wl,-rpath,"$PWD/target/debug" -o "$w/bag_bench"
# A cross-validation folder of 15 seeded heads, as `amlmil cv` leaves one.
for k in $(seq 0 14); do
  run="$w/cv/runs/seed0_fold$k"
  mkdir -p "$run"
  "$bin" init-checkpoint mil --seed "$((100 + k))" --out "$run/mil.safetensors" > /dev/null 2>&1
  printf '{"status": "complete", "run": {"seed": 0, "fold": %d, "macro_f1": 0.0}, "best_validation_loss": 0.0, "encoder_file_sha256": "bench"}\n' \
    "$k" > "$run/run.json"
done
cp "$w/cv/runs/seed0_fold0/mil.safetensors" "$w/mil-1.safetensors"
for k in 5 15; do
  rm -rf "$w/cv-$k" && mkdir -p "$w/cv-$k/runs"
  for i in $(seq 0 $((k - 1))); do cp -r "$w/cv/runs/seed0_fold$i" "$w/cv-$k/runs/"; done
  "$bin" ensemble --from "$w/cv-$k" --out "$w/mil-$k.safetensors" > /dev/null 2>&1
done
precisions="fp32"
"$bin" info | grep -q '"cpu_bf16": "' && precisions="fp32 bf16"
out="$w/results.jsonl"
: > "$out"
# One throw-away run first (the first process runs slow).
"$w/bag_bench" "$w/resnet18.safetensors" "$w/mil-1.safetensors" "$w/cells.bin" tiff 500 "$threads" 16 1 > /dev/null
for p in $precisions; do
  for k in 1 5 15; do
    "$w/bag_bench" "$w/resnet18.safetensors" "$w/mil-$k.safetensors" "$w/cells.bin" tiff 500 "$threads" 16 \
      "$repeats" 0 "$p" | sed "s/^{/{\"heads\": $k, /" | tee -a "$out"
  done
done
"$AMLMIL_PYTHON" - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
for p in sorted({r["precision"] for r in rows}):
    base = next(r for r in rows if r["precision"] == p and r["heads"] == 1)
    for r in (r for r in rows if r["precision"] == p):
        extra = (r["classify_s"] - base["classify_s"]) / base["classify_s"]
        print(f"{p} {r['heads']:>2} heads: classify {r['classify_s']:.3f} s (median of {r['repeats']}); "
              f"heads beyond the first add {100 * extra:.1f} % to one head's bag")
PY
