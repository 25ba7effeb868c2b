#!/usr/bin/env bash
# Encoder throughput of amlmil (tch/libtorch) and PyTorch eager on the same
# machine in one run, for ResNet18 at 144 px (DESIGN §7 compares ratios, not
# absolute numbers). Usage: bash benches/encoder_throughput.sh [iterations]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo build --quiet
it="${1:-5}"
for arch in resnet18; do
  target/debug/amlmil bench --arch "$arch" --size 144 --batch-size 32 --iterations "$it"
  "$AMLMIL_PYTHON" benches/pytorch_throughput.py --arch "$arch" --size 144 --batch-size 32 --iterations "$it"
done
