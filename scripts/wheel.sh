#!/usr/bin/env bash
# Builds the Python wheel a lab installs with pip, like torchvision's:
#
#   scripts/wheel.sh [--out DIR] [--no-build] [--lib-dir DIR]
#
# DIR/amlmil-<version>-py3-none-linux_x86_64.whl (DIR: --out, default
# target/wheel) holds the Python bindings (bindings/python/amlmil) with
# libamlmil.so and the example preprocessing plugin (libamlmil_grey_world.so)
# inside the package, and requires torch==<the libtorch it was built against>
# (scripts/setup-env.sh's TORCH_VERSION) and numpy. The library's RUNPATH is
# `$ORIGIN:$ORIGIN/../torch/lib`, so in the environment pip installs it into,
# beside torch's wheel, it finds libtorch with no environment variable; the
# bindings also load torch's libraries themselves when torch lives in another
# site-packages directory. Debug info (the dev profile's `debug = 1`) is
# stripped from the copies. `pip install dist/amlmil-*.whl` then gives
# `import amlmil; amlmil.Session(...)`.
#
# --no-build uses the libraries already built; --lib-dir DIR takes them from
# DIR (default target/debug), e.g. a test's.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

out="" build=1 lib_dir=""
usage() { echo "usage: $0 [--out DIR] [--no-build] [--lib-dir DIR]" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --out) [ $# -ge 2 ] || usage; out="$2"; shift 2 ;;
    --no-build) build=0; shift ;;
    --lib-dir) [ $# -ge 2 ] || usage; lib_dir="$2"; build=0; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "wheel.sh: unknown argument '$1'" >&2; usage ;;
  esac
done
for tool in patchelf strip; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "wheel.sh: $tool is missing; run scripts/setup-tools.sh" >&2; exit 1; }
done

source "$root/scripts/env.sh"
torch_version="$(sed -n 's/^TORCH_VERSION=\(.*\)$/\1/p' "$root/scripts/setup-env.sh")"
[ -n "$torch_version" ] || { echo "wheel.sh: no TORCH_VERSION in scripts/setup-env.sh" >&2; exit 1; }
if [ "$build" -eq 1 ]; then
  (cd "$root" && cargo build --lib --workspace)
fi
lib_dir="${lib_dir:-${CARGO_TARGET_DIR:-$root/target}/debug}"
for f in libamlmil.so libamlmil_grey_world.so; do
  [ -f "$lib_dir/$f" ] || { echo "wheel.sh: $lib_dir/$f is missing (cargo build)" >&2; exit 1; }
done
out="${out:-${CARGO_TARGET_DIR:-$root/target}/wheel}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
cp "$root/bindings/python/pyproject.toml" "$root/bindings/python/_backend.py" "$stage/"
mkdir "$stage/amlmil"
cp "$root"/bindings/python/amlmil/*.py "$root/bindings/python/amlmil/py.typed" "$stage/amlmil/"
for f in libamlmil.so libamlmil_grey_world.so; do
  cp "$(readlink -f "$lib_dir/$f")" "$stage/amlmil/$f"
  chmod 755 "$stage/amlmil/$f"
  strip --strip-debug "$stage/amlmil/$f"
  patchelf --set-rpath '$ORIGIN:$ORIGIN/../torch/lib' "$stage/amlmil/$f"
done
rm -f "$out"/amlmil-*-linux_*.whl
"$AMLMIL_PYTHON" -m pip wheel --quiet --no-deps --no-build-isolation \
  --config-settings "torch-requirement=torch==$torch_version" -w "$out" "$stage"
wheel="$(ls "$out"/amlmil-*-linux_*.whl)"
echo "$wheel ($(du -h "$wheel" | cut -f1))"
