#!/usr/bin/env bash
# Makes a relocatable binary tarball of libamlmil with the libtorch it needs:
#
#   scripts/package.sh [--cpu] [--out DIR] [--stage-only] [--no-build] [--lib-dir DIR]
#
# The tree is the install layout of scripts/install.sh (lib/, include/,
# lib/pkgconfig/, lib/cmake/amlmil/) plus, in lib/, only the shared libraries
# that libamlmil.so needs transitively from libtorch: DT_NEEDED entries (readelf)
# are resolved in the libtorch lib dir and in the directories that each
# library's own RPATH names (the wheel's nvidia/*/lib); everything else (libc,
# libstdc++, ...) is left to the system. Every copied library gets a RUNPATH of
# `$ORIGIN` only (patchelf), so the tree works from any path and needs no
# LD_LIBRARY_PATH. libamlmil's debug info (the dev profile's `debug = 1`) is
# stripped from the packaged copy.
#
# --cpu drops libtorch_cuda.so from libamlmil's DT_NEEDED, so no libtorch CUDA
# kernels, cuDNN, cuBLAS, NCCL, ... ship; sessions then run on the CPU only
# (device "auto" picks the CPU, "cuda" is refused). The CUDA wheel's
# libtorch_cpu.so itself links libcudart and libcupti, which therefore ship too.
#
# Writes DIR/amlmil-<version>-linux-<arch>[-cpu]/ (DIR: --out, default
# target/package) and, unless --stage-only, DIR/<that name>.tar.gz; prints the
# sizes. The libtorch lib dir is $AMLMIL_LIBTORCH_LIB, else the one in
# libamlmil.so's development RUNPATH, else $LIBTORCH/lib.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

cpu=0 out="" stage_only=0 build_flag=() lib_dir=""
usage() { echo "usage: $0 [--cpu] [--out DIR] [--stage-only] [--no-build] [--lib-dir DIR]" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu) cpu=1; shift ;;
    --out) [ $# -ge 2 ] || usage; out="$2"; shift 2 ;;
    --stage-only) stage_only=1; shift ;;
    --no-build) build_flag=(--no-build); shift ;;
    --lib-dir) [ $# -ge 2 ] || usage; lib_dir="$2"; shift 2 ;;
    -h|--help) sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "package.sh: unknown argument '$1'" >&2; usage ;;
  esac
done
for tool in readelf patchelf strip; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "package.sh: $tool is missing; run scripts/setup-tools.sh" >&2; exit 1; }
done

version="$(sed -n 's/^version = "\([^"]*\)".*/\1/p' "$root/Cargo.toml" | head -n 1)"
abi="$(sed -n 's/^abi-version = \([0-9][0-9]*\).*/\1/p' "$root/Cargo.toml" | head -n 1)"
name="amlmil-$version-linux-$(uname -m)"
[ "$cpu" -eq 1 ] && name="$name-cpu"
out="${out:-${CARGO_TARGET_DIR:-$root/target}/package}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
stage="$out/$name"
rm -rf "$stage" "$out/$name.tar.gz"

install_args=(--prefix "$stage" "${build_flag[@]}")
[ -n "$lib_dir" ] && install_args+=(--lib-dir "$lib_dir")
bash "$root/scripts/install.sh" "${install_args[@]}"
lib="$stage/lib/libamlmil.so.$abi"
src_lib="$(readlink -f "${lib_dir:-${CARGO_TARGET_DIR:-$root/target}/debug}/libamlmil.so")"

# The ELF's RPATH/RUNPATH entries, $ORIGIN expanded against the directory it came from.
search_path() {  # FILE ORIGIN_DIR
  readelf -d "$1" | sed -n 's/.*(\(RPATH\|RUNPATH\)).*\[\(.*\)\]/\2/p' | tr ':' '\n' |
    sed "s|\$ORIGIN|$2|g; s|\${ORIGIN}|$2|g" | grep -v '^$' || true
}
needed() { readelf -d "$1" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'; }

torch_lib="${AMLMIL_LIBTORCH_LIB:-}"
if [ -z "$torch_lib" ]; then
  while read -r d; do
    [ -f "$d/libc10.so" ] && { torch_lib="$d"; break; }
  done < <(search_path "$src_lib" "$(dirname "$src_lib")")
fi
[ -z "$torch_lib" ] && [ -n "${LIBTORCH:-}" ] && torch_lib="$LIBTORCH/lib"
[ -n "$torch_lib" ] && [ -f "$torch_lib/libc10.so" ] || {
  echo "package.sh: cannot find the libtorch lib dir; set AMLMIL_LIBTORCH_LIB" >&2; exit 1; }
torch_lib="$(cd "$torch_lib" && pwd)"

strip --strip-debug "$lib"
if [ "$cpu" -eq 1 ] && needed "$lib" | grep -qx libtorch_cuda.so; then
  patchelf --remove-needed libtorch_cuda.so "$lib"
fi
patchelf --set-rpath '$ORIGIN' "$lib"

# Breadth-first walk over DT_NEEDED. Each queue entry: the staged file and its
# original (whose RPATH says where its own dependencies live).
queue=("$lib" "$src_lib")
shipped=()
while [ ${#queue[@]} -gt 0 ]; do
  file="${queue[0]}" original="${queue[1]}"
  queue=("${queue[@]:2}")
  dirs=("$torch_lib")
  while read -r d; do dirs+=("$d"); done < <(search_path "$original" "$(dirname "$original")")
  for dep in $(needed "$file"); do
    [ -e "$stage/lib/$dep" ] && continue
    found=""
    for d in "${dirs[@]}"; do
      [ -f "$d/$dep" ] && { found="$d/$dep"; break; }
    done
    [ -n "$found" ] || continue  # a system library
    found="$(readlink -f "$found")"
    cp "$found" "$stage/lib/$dep"
    chmod 755 "$stage/lib/$dep"
    patchelf --set-rpath '$ORIGIN' "$stage/lib/$dep"
    shipped+=("$dep")
    queue+=("$stage/lib/$dep" "$found")
  done
done

# libtorch's licence and the list of what ships.
doc="$stage/share/doc/amlmil"
mkdir -p "$doc"
for f in "$torch_lib"/../../torch-*.dist-info/licenses/LICENSE* "$torch_lib"/../../torch-*.dist-info/LICENSE* "$torch_lib"/../LICENSE*; do
  [ -f "$f" ] && { cp "$f" "$doc/LICENSE.libtorch"; break; }
done
{
  echo "libamlmil $version (ABI $abi)$([ "$cpu" -eq 1 ] && echo ', CPU-only')"
  echo "libtorch from: $torch_lib"
  echo "shipped libraries:"
  for s in "${shipped[@]}"; do echo "  $s"; done
} > "$doc/MANIFEST.txt"

echo "staged $stage ($(du -sh "$stage" | cut -f1)): libamlmil.so.$abi ${shipped[*]}" >&2
if [ "$stage_only" -eq 0 ]; then
  tar -C "$out" -czf "$out/$name.tar.gz" "$name"
  echo "wrote $out/$name.tar.gz ($(du -h "$out/$name.tar.gz" | cut -f1))" >&2
fi
