#!/usr/bin/env bash
# Installs (once) the Python environment that provides libtorch 2.11.0 for tch 0.24
# and the reference packages used by the parity tests. The environment lives outside
# the checkout so every clone reuses it. Prints nothing but progress on stderr; on
# success the last line of stdout is the path of the torch package (LIBTORCH).
set -euo pipefail

TORCH_VERSION=2.11.0
# Reference packages are pinned: parity tests compare against these exact versions.
REQUIREMENTS="torch==$TORCH_VERSION torchvision==0.26.0 safetensors==0.8.0 numpy==2.4.6 scikit-learn==1.9.1 pytest==9.2.0 umap-learn==0.5.12 onnx==1.23.2 onnxscript==0.7.2 onnxruntime==1.32.0 lightly==1.6.0 timm==1.0.31"
CACHE_ROOT="${AMLMIL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/amlmil}"
VENV="${AMLMIL_VENV:-$CACHE_ROOT/venv-torch-$TORCH_VERSION}"
STAMP="$VENV/.amlmil-ready"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" != "$REQUIREMENTS" ]; then
  echo "amlmil: updating the reference packages in $VENV" >&2
  # shellcheck disable=SC2086
  "$VENV/bin/python" -m pip install --quiet $REQUIREMENTS >&2
  echo "$REQUIREMENTS" > "$STAMP"
fi
if [ ! -f "$STAMP" ]; then
  echo "amlmil: installing torch==$TORCH_VERSION into $VENV (first run only; ~5 GB, a few minutes)" >&2
  mkdir -p "$CACHE_ROOT"
  rm -rf "$VENV.partial"
  python3 -m venv "$VENV.partial"
  "$VENV.partial/bin/python" -m pip install --quiet --upgrade pip >&2
  # shellcheck disable=SC2086
  "$VENV.partial/bin/python" -m pip install --quiet $REQUIREMENTS >&2
  # venvs hard-code their path in scripts; move only after a full install, then rebuild it in place.
  rm -rf "$VENV"
  mv "$VENV.partial" "$VENV"
  python3 -m venv --upgrade "$VENV" >&2
  echo "$REQUIREMENTS" > "$STAMP"
fi

"$VENV/bin/python" - <<'PY'
import os, torch
assert torch.__version__.split("+")[0] == "2.11.0", torch.__version__
print(os.path.dirname(torch.__file__))
PY
