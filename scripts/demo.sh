#!/usr/bin/env bash
# The main job on built-in synthetic data: installs libtorch (first run only),
# builds libamlmil.so and the CLI, generates a small synthetic cohort, writes
# seeded encoder and attention-MIL checkpoints, builds the C example against
# include/amlmil.h + libamlmil.so, and classifies every patient's bag through
# the C ABI, printing the subtype, probabilities and top-ranked cells.
#
#   bash scripts/demo.sh            # output in ./demo-output (regenerated each run)
#   AMLMIL_DEMO_DIR=/tmp/x bash scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

out="${AMLMIL_DEMO_DIR:-demo-output}"
echo "== building libamlmil.so and amlmil (cargo build)"
cargo build --quiet
amlmil=target/debug/amlmil
"$amlmil" info

echo "== synthetic cohort: 2 patients per class, 40-60 cells each, 144 px -> $out/cohort"
rm -rf "$out"
mkdir -p "$out"
"$amlmil" synth --out "$out/cohort" --patients-per-class 2 --cells 40..60 --size 144 --seed 7
"$amlmil" dataset check "$out/cohort"

echo "== checkpoints (seeded random weights: the training entry points replace these)"
"$amlmil" init-checkpoint encoder --arch resnet18 --input-size 144 --seed 1 --out "$out/encoder.safetensors"
"$amlmil" init-checkpoint mil --input-size 144 --seed 2 --out "$out/mil.safetensors"

echo "== C example against include/amlmil.h and libamlmil.so"
cc -std=c11 -O2 -Wall -Wextra -pedantic -Werror -Iinclude examples/c/classify_bag.c \
  -o "$out/classify_bag" -Ltarget/debug -lamlmil -Wl,-rpath,"$PWD/target/debug"

tail -n +2 "$out/cohort/metadata.csv" | while IFS=, read -r patient label _rest; do
  echo
  echo "== patient $patient (true label $label)"
  "$out/classify_bag" "$out/encoder.safetensors" "$out/mil.safetensors" \
    "$out/cohort/data/$label/$patient" cpu 3 2>/dev/null
done
echo
echo "Done. With random weights the predictions are arbitrary; the pipeline is what this shows."
