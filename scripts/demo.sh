#!/usr/bin/env bash
# The main job on built-in synthetic data: installs libtorch (first run only),
# builds libamlmil.so and the CLI, and runs the `quick` experiment — a synthetic
# MIL cohort and a disjoint pre-training cohort, a supervised and a SimCLR
# encoder pre-trained on the latter beside a random floor, the attention-MIL
# head cross-validated on each (5 folds, 1 seed), report.html, and per encoder
# the deployable model (deploy/<encoder>/: the encoder and the ensemble of its
# five fold heads). Then it generates a new cohort (30 patients of another seed:
# never seen by pre-training or any fold), scores each deployed model on it
# beside its cross-validated macro F1, builds the C example against
# include/amlmil.h + libamlmil.so and classifies one new patient per subtype
# through the C ABI with the supervised ensemble, printing the true and
# predicted subtype, the probabilities and the top-ranked cells with their true
# cell type.
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

new="$out/new-cohort"
if [ ! -f "$new/metadata.csv" ]; then
  # The quick preset's cohort design (30-60 cells at 64 px), another seed.
  "$amlmil" synth --out "$new" --patients-per-class 6 --cells 30..60 --size 64 --annotated 0.1 --seed 4242 >/dev/null
fi
for enc in supervised simclr random; do
  echo
  echo "== deployed $enc model (encoder + ensemble of its 5 fold heads) on the new cohort"
  "$amlmil" evaluate --encoder "$exp/deploy/$enc/encoder.safetensors" --mil "$exp/deploy/$enc/mil.safetensors" \
    --dataset "$new" --device cpu --out "$out/new-cohort-$enc.json" 2>&1 |
    if [ "$enc" = supervised ]; then cat; else tail -n 1; fi
done

encoder="$exp/deploy/supervised/encoder.safetensors"
mil="$exp/deploy/supervised/mil.safetensors"
for label in PML_RARA NPM1 CBFB_MYH11 RUNX1_RUNX1T1 control; do
  patient=$(awk -F, -v l="$label" 'NR > 1 && $2 == l { print $1; exit }' "$new/metadata.csv")
  echo
  echo "== new patient $patient (true subtype $label) through the C ABI, supervised ensemble"
  "$out/classify_bag" "$encoder" "$mil" "$new/data/$label/$patient" cpu 5 2>/dev/null |
    awk -F, -v p="$patient" -v cells="$new/cells.csv" '
      BEGIN { while ((getline line < cells) > 0) { split(line, f, ","); if (f[1] == p) type[f[2]] = f[3] } }
      /^  #[0-9]+ / { n = split($0, parts, "/"); split(parts[n], img, " "); print $0 "  (" type[img[1]] ")"; next }
      { print }'
done
echo
echo "Done. Report (Table 1, ROC, confusion, attention per cell type, UMAP, galleries): $exp/report.html"
