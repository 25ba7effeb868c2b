#!/usr/bin/env bash
# The main job on built-in synthetic data: installs libtorch (first run only),
# builds libamlmil.so and the CLI, and runs the `quick` experiment — a synthetic
# MIL cohort and a disjoint pre-training cohort, a supervised and a SimCLR
# encoder pre-trained on the latter beside a random floor, the attention-MIL
# head cross-validated on each (5 folds, 1 seed), and report.html. Then it
# builds the C example against include/amlmil.h + libamlmil.so and classifies
# one held-out patient per subtype through the C ABI with the trained
# checkpoints of the fold that held that patient out, printing the true and
# predicted subtype, the probabilities and the top-ranked cells with their
# true cell type.
#
#   bash scripts/demo.sh            # output in ./demo-output (finished stages are reused)
#   AMLMIL_DEMO_DIR=/tmp/x bash scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

out="${AMLMIL_DEMO_DIR:-demo-output}"
exp="$out/experiment"
echo "== building libamlmil.so and amlmil (cargo build)"
cargo build --quiet
amlmil=target/debug/amlmil

echo "== the quick experiment -> $exp (about 8 minutes on 2 cores; reruns reuse finished stages)"
"$amlmil" experiment --preset quick --output "$exp"

echo "== C example against include/amlmil.h and libamlmil.so"
mkdir -p "$out"
cc -std=c11 -O2 -Wall -Wextra -pedantic -Werror -Iinclude examples/c/classify_bag.c \
  -o "$out/classify_bag" -Ltarget/debug -lamlmil -Wl,-rpath,"$PWD/target/debug"

encoder="$exp/encoders/supervised/encoder.safetensors"
cohort="$exp/cohort"
for label in PML_RARA NPM1 CBFB_MYH11 RUNX1_RUNX1T1 control; do
  patient=$(awk -F, -v l="$label" 'NR > 1 && $2 == l { print $1; exit }' "$cohort/metadata.csv")
  # The run (seed 0) whose test fold holds this patient: its head never saw the patient.
  predictions=$(grep -l "^$patient," "$exp"/cv/supervised/runs/seed0_fold*/predictions.csv | head -n 1)
  run=$(dirname "$predictions")
  echo
  echo "== held-out patient $patient (true subtype $label; test patient of $(basename "$run"))"
  "$out/classify_bag" "$encoder" "$run/mil.safetensors" "$cohort/data/$label/$patient" cpu 5 2>/dev/null |
    awk -F, -v p="$patient" -v cells="$cohort/cells.csv" '
      BEGIN { while ((getline line < cells) > 0) { split(line, f, ","); if (f[1] == p) type[f[2]] = f[3] } }
      /^  #[0-9]+ / { n = split($0, parts, "/"); split(parts[n], img, " "); print $0 "  (" type[img[1]] ")"; next }
      { print }'
done
echo
echo "Done. Report (Table 1, ROC, confusion, attention per cell type, UMAP, galleries): $exp/report.html"
