#!/usr/bin/env bash
# ViT-S/14 at 224 px (DinoBloom's encoder size) in libamlmil beside the peers a
# user would pick instead, on the same random weights: timm eager (fp32, bf16
# autocast, bf16 weights), TorchScript frozen (fp32, bf16) and ONNX Runtime
# (fp32, on `amlmil export --format onnx`). This VM moves ±10-20 % between
# identical runs, so every implementation is timed in each of ROUNDS rounds,
# interleaved, and the median is reported. Called by benches/run.sh; writes
# benches/vit-results.json and prints the table of docs/performance.md.
#
#   bash benches/vit.sh [THREADS] [SECONDS] [ROUNDS] [BATCH]   # defaults: all cores, 6 s, 3 rounds, 16
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo build --quiet
threads="${1:-$(nproc)}"
secs="${2:-6}"
rounds="${3:-3}"
batch="${4:-16}"
w=target/bench
mkdir -p "$w"
bin=target/debug/amlmil
enc="$w/vit_s14.safetensors"
"$bin" init-checkpoint encoder --arch vit_s14 --input-size 224 --seed 1 --out "$enc" 2> /dev/null
"$bin" export "$enc" --format onnx --out "$w/vit_s14.onnx" > /dev/null
out="$w/vit.jsonl"
: > "$out"
cpu_bf16=$("$bin" info | grep -q '"cpu_bf16": "' && echo 1 || echo 0)
for r in $(seq "$rounds"); do
  echo "== round $r of $rounds" >&2
  "$bin" bench --encoder "$enc" --batch-size "$batch" --threads "$threads" --seconds "$secs" | tee -a "$out" >&2
  if [ "$cpu_bf16" = 1 ]; then
    "$bin" bench --encoder "$enc" --batch-size "$batch" --threads "$threads" --seconds "$secs" \
      --precision bf16 | tee -a "$out" >&2
  fi
  for peer in eager eager_bf16_autocast eager_bf16 torchscript torchscript_bf16 onnxruntime; do
    "$AMLMIL_PYTHON" benches/vit_peers.py "$enc" "$w/vit_s14.onnx" --threads "$threads" --batch "$batch" \
      --seconds "$secs" --only "$peer" 2> /dev/null | tee -a "$out" >&2
  done
done
"$AMLMIL_PYTHON" - "$out" benches/vit-results.json <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = {}
for r in rows:
    by.setdefault(r["impl"], []).append(r)
gflop = next(r["gflop"] for r in rows if "gflop" in r)
table = []
for impl, rs in by.items():
    rates = sorted(r["cells_per_s"] for r in rs)
    table.append({"impl": impl, "precision": rs[0]["precision"], "arch": rs[0]["arch"], "size": rs[0]["size"],
                  "batch": rs[0]["batch"], "threads": rs[0]["threads"], "rounds": len(rates),
                  "cells_per_s": statistics.median(rates), "min": rates[0], "max": rates[-1],
                  "gflop_per_s": round(statistics.median(rates) * gflop, 1),
                  "peak_rss_mb": max(r["peak_rss_mb"] for r in rs)})
best = {}
for t in table:
    if not t["impl"].startswith("amlmil"):
        best[t["precision"]] = max(best.get(t["precision"], 0), t["cells_per_s"])
top = max(best.values())
json.dump({"gflop_per_cell": gflop, "rows": table}, open(sys.argv[2], "w"), indent=1)
print(f"| implementation | precision | cells/s (median of {table[0]['rounds']}; min–max) | × best peer (same precision) | × best peer (any) | GFLOP/s | peak RSS MB |")
print("|---|---|---|---|---|---|---|")
for t in sorted(table, key=lambda t: -t["cells_per_s"]):
    print(f"| {t['impl']} | {t['precision']} | {t['cells_per_s']:.1f} ({t['min']:.1f}–{t['max']:.1f}) | "
          f"{t['cells_per_s'] / best[t['precision']]:.2f} | {t['cells_per_s'] / top:.2f} | {t['gflop_per_s']:.0f} | {t['peak_rss_mb']:.0f} |")
PY
