#!/usr/bin/env bash
# Packs, here, everything the GPU check (scripts/gpu-check.sh) runs on a machine
# with an NVIDIA GPU and its own CUDA build of torch (the same version as this
# build's libtorch), into one folder:
#
#   scripts/gpu-bundle.sh [--out DIR] [--profile release|dev] [--no-build]
#
# DIR (default target/gpu-bundle) then holds
#   bin/amlmil, bin/bag_bench, bin/minimal   the CLI and two C ABI programs
#   lib/libamlmil.so.1                       stripped, CUDA-linked (named by its SONAME)
#   python/amlmil/                           the Python bindings
#   gpu-check.sh, gpu_check.py, prepare_cells.py
#   BUNDLE.json                              version, commit, profile, libtorch version, sizes
# Nothing in it refers to this machine: libamlmil.so's RUNPATH is `$ORIGIN`, the
# programs' `$ORIGIN/../lib`, and libtorch comes from the folder gpu-check.sh is
# given (--libtorch DIR) or finds through that machine's python3 (torch/lib), on
# LD_LIBRARY_PATH. With only that folder given, `bin/amlmil info` starts:
#
#   LD_LIBRARY_PATH=/path/to/torch/lib DIR/bin/amlmil info
#
# --profile dev packs the test profile's build (target/debug, what the test
# suite has built anyway); release (the default) builds target/release.
# --no-build packs what is already built.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

out="" profile=release build=1
usage() { echo "usage: $0 [--out DIR] [--profile release|dev] [--no-build]" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --out) [ $# -ge 2 ] || usage; out="$2"; shift 2 ;;
    --profile) [ $# -ge 2 ] || usage; profile="$2"; shift 2 ;;
    --no-build) build=0; shift ;;
    -h|--help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu-bundle.sh: unknown argument '$1'" >&2; usage ;;
  esac
done
case "$profile" in
  release) cargo_flags=(--release); dir=release ;;
  dev) cargo_flags=(); dir=debug ;;
  *) echo "gpu-bundle.sh: --profile must be release or dev, not '$profile'" >&2; exit 2 ;;
esac
for tool in readelf patchelf strip cc; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "gpu-bundle.sh: $tool is missing; run scripts/setup-tools.sh" >&2; exit 1; }
done

source "$root/scripts/env.sh"
target="${CARGO_TARGET_DIR:-$root/target}"
if [ "$build" -eq 1 ]; then
  (cd "$root" && cargo build "${cargo_flags[@]}" --lib --bin amlmil)
fi
build_dir="$target/$dir"
for f in libamlmil.so amlmil; do
  [ -f "$build_dir/$f" ] || {
    echo "gpu-bundle.sh: $build_dir/$f is missing (cargo build ${cargo_flags[*]:-})" >&2; exit 1; }
done
readelf -d "$build_dir/libamlmil.so" | grep -q 'NEEDED.*\[libtorch_cuda.so\]' || {
  echo "gpu-bundle.sh: $build_dir/libamlmil.so does not link libtorch_cuda.so: build against a CUDA libtorch" >&2
  exit 1; }

out="${out:-$target/gpu-bundle}"
rm -rf "$out.partial"
mkdir -p "$out.partial"/{bin,lib,python}
stage="$(cd "$out.partial" && pwd)"

# Named by its SONAME (what the programs' DT_NEEDED says); no symbolic links,
# which some copies of a folder do not keep.
soname="$(readelf -d "$build_dir/libamlmil.so" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')"
soname="${soname:-libamlmil.so}"
install -m 755 "$(readlink -f "$build_dir/libamlmil.so")" "$stage/lib/$soname"
install -m 755 "$build_dir/amlmil" "$stage/bin/amlmil"
strip --strip-unneeded "$stage/lib/$soname"
strip "$stage/bin/amlmil"
patchelf --set-rpath '$ORIGIN' "$stage/lib/$soname"
patchelf --set-rpath '$ORIGIN/../lib' "$stage/bin/amlmil"
for prog in benches/bag_bench.c examples/c/minimal.c; do
  name="$(basename "$prog" .c)"
  # rpath-link: libamlmil's own dependencies (libtorch) resolve here at link time only.
  cc -O2 -std=c11 -I"$root/include" "$root/$prog" "$stage/lib/$soname" \
    -Wl,-rpath-link,"$LIBTORCH/lib" -Wl,-rpath,'$ORIGIN/../lib' -o "$stage/bin/$name"
  strip "$stage/bin/$name"
done
cp -r "$root/bindings/python/amlmil" "$stage/python/"
find "$stage/python" -name '__pycache__' -prune -exec rm -rf {} +
install -m 755 "$root/scripts/gpu-check.sh" "$stage/gpu-check.sh"
cp "$root/scripts/gpu_check.py" "$root/benches/prepare_cells.py" "$stage/"

commit="$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
dirty="$(git -C "$root" status --porcelain 2>/dev/null | grep -q . && echo true || echo false)"
"$AMLMIL_PYTHON" - "$stage" "$root" "$profile" "$commit" "$dirty" "$out" <<'PY'
import json, os, re, subprocess, sys
stage, root, profile, commit, dirty, final = sys.argv[1:]
cargo = open(os.path.join(root, "Cargo.toml")).read()
env = dict(os.environ, LD_LIBRARY_PATH=os.path.join(os.environ["LIBTORCH"], "lib"))
info = json.loads(subprocess.run([os.path.join(stage, "bin", "amlmil"), "info"], check=True,
                                 capture_output=True, text=True, env=env).stdout)
sizes = {}
for d, _, files in os.walk(stage):
    for f in files:
        p = os.path.join(d, f)
        sizes[os.path.relpath(p, stage)] = os.path.getsize(p)
manifest = {
    "amlmil_version": re.search(r'^version = "([^"]+)"', cargo, re.M).group(1),
    "abi_version": info["abi_version"],
    "libtorch_version": info["libtorch_version"],
    "commit": commit, "uncommitted_changes": dirty == "true",
    "profile": profile,
    "total_bytes": sum(sizes.values()),
    "files": dict(sorted(sizes.items())),
}
json.dump(manifest, open(os.path.join(stage, "BUNDLE.json"), "w"), indent=1)
print(f"{final}: {len(sizes)} files, {manifest['total_bytes'] / 2**20:.1f} MiB "
      f"(libtorch {info['libtorch_version']}, commit {commit}{' + changes' if dirty == 'true' else ''})",
      file=sys.stderr)
PY
rm -rf "$out"
mv "$out.partial" "$out"
echo "$out"
