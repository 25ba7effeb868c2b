#!/usr/bin/env bash
# The GPU check: one call that measures what a GPU machine does with libamlmil
# and writes DIR/results.json (each section as it finishes) and DIR/gpu-check.log:
#
#   gpu-check.sh --out DIR [--device cuda|cpu] [--tiny] [--budget-s N]
#                [--libtorch DIR] [--python PY] [--work DIR]
#
# Sections, each time-boxed by its share of --budget-s (default 540):
#   info        `amlmil info` (GPU name, memory, compute capability), the C ABI's minimal program
#   training    SimCLR, SwAV, DINO and supervised steps with and without mixed
#               precision (losses finite and falling, steps/s), MIL training
#   parity      the same bags on the CPU (fp32) and on the device in fp32, fp16
#               and bf16; streaming bags; 4 threads on one session; peak GPU memory
#   speed       `amlmil bench` (ResNet18/34, fp32/fp16/bf16, NCHW and channels-last)
#               beside PyTorch on the same weights (eager channels-last, bf16
#               autocast, torch.compile if it compiles within a minute); a 500-cell
#               bag through the C ABI
#   experiment  the `gpu-short` preset (144 px, all five encoders), its epochs
#               sized from the training section's measured step costs; Table 1
# --tiny runs every section at toy size (64 px cells, a few steps): the CPU
# rehearsal in the test suite (`--device cpu --tiny`, under 3 minutes).
#
# Run from a bundle (scripts/gpu-bundle.sh) on the GPU machine. Run from the
# source tree, it packs a bundle of the test profile's build first
# (target/gpu-bundle-dev) and runs that. libtorch: --libtorch DIR, else the
# torch/lib of PY (--python, else $AMLMIL_PYTHON, else python3); it must be the
# libtorch version the bundle was built against. Exit status 0 when every
# section ran and passed its checks, 1 otherwise (results.json says which).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

if [ ! -x "$here/bin/amlmil" ]; then
  # The source tree: pack the test profile's build and run the bundle's copy.
  bundle="$(bash "$here/gpu-bundle.sh" --profile dev --out "${CARGO_TARGET_DIR:-$here/../target}/gpu-bundle-dev" | tail -n 1)"
  source "$here/env.sh"
  export AMLMIL_PYTHON
  exec bash "$bundle/gpu-check.sh" "$@"
fi

python="${AMLMIL_PYTHON:-python3}" libtorch="" args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --python) [ $# -ge 2 ] || { echo "gpu-check.sh: --python needs a value" >&2; exit 2; }; python="$2"; shift 2 ;;
    --libtorch) [ $# -ge 2 ] || { echo "gpu-check.sh: --libtorch needs a value" >&2; exit 2; }; libtorch="$2"; shift 2 ;;
    -h|--help) sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) args+=("$1"); shift ;;
  esac
done
command -v "$python" >/dev/null 2>&1 || { echo "gpu-check.sh: no Python at '$python' (--python)" >&2; exit 1; }
if [ -z "$libtorch" ]; then
  libtorch="$("$python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')" || {
    echo "gpu-check.sh: $python cannot import torch; give --libtorch DIR or --python PY" >&2; exit 1; }
fi
[ -f "$libtorch/libc10.so" ] || { echo "gpu-check.sh: --libtorch $libtorch holds no libc10.so" >&2; exit 1; }
export LD_LIBRARY_PATH="$libtorch${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
libs=("$here"/lib/libamlmil.so*)
export AMLMIL_LIBRARY="${libs[0]}"
export PYTHONPATH="$here/python${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
exec "$python" "$here/gpu_check.py" --bundle "$here" --libtorch "$libtorch" "${args[@]}"
