#!/usr/bin/env bash
# Data-parallel pre-training throughput: the same SimCLR cpu-small run (64 px
# cells, global batch 32) in one process with every core, and under
# `torchrun --standalone --nproc-per-node 2` with one thread per rank, in
# ROUNDS interleaved rounds; prints the median images/s of the last epoch of
# each and their ratio (docs/distributed.md#throughput).
#
#   bash benches/distributed.sh [ROUNDS] [STEPS]   # defaults: 3 rounds, 12 steps
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo build --quiet
rounds="${1:-3}"
steps="${2:-12}"
w=target/bench/distributed
rm -rf "$w"
mkdir -p "$w"
bin=$PWD/target/debug/amlmil
"$bin" synth --out "$w/cohort" --patients-per-class 4 --cells 20..24 --size 64 --seed 5 > /dev/null
set_json="{\"batch_size\": 32, \"steps_per_epoch\": $steps, \"device\": \"cpu\", \"decode_threads\": 1, \"keep_every\": 0}"
args=(pretrain --method simclr --preset cpu-small --epochs 2 --dataset "$w/cohort" --set "$set_json")
rate() { grep -o 'epoch 2/2: loss [0-9.]*, [0-9.]* images/s' "$1" | grep -o '[0-9.]* images/s' | cut -d' ' -f1; }
: > "$w/one.txt"
: > "$w/two.txt"
for r in $(seq "$rounds"); do
  echo "== round $r of $rounds" >&2
  "$bin" "${args[@]}" --output "$w/one-$r" > "$w/one-$r.log" 2>&1
  rate "$w/one-$r.log" >> "$w/one.txt"
  OMP_NUM_THREADS=1 "$AMLMIL_PYTHON" -m torch.distributed.run --standalone --nproc-per-node 2 \
    --no-python "$bin" "${args[@]}" --output "$w/two-$r" > "$w/two-$r.log" 2>&1
  rate "$w/two-$r.log" >> "$w/two.txt"
done
"$AMLMIL_PYTHON" - "$w" <<'EOF'
import json, statistics, sys, os
w = sys.argv[1]
one = [float(x) for x in open(os.path.join(w, "one.txt")).read().split()]
two = [float(x) for x in open(os.path.join(w, "two.txt")).read().split()]
m1, m2 = statistics.median(one), statistics.median(two)
print(json.dumps({"one_process_images_per_s": m1, "two_ranks_images_per_s": m2,
                  "ratio": round(m2 / m1, 2), "rounds": len(one), "cores": os.cpu_count()}))
EOF
