#!/usr/bin/env bash
# Installs libamlmil for C and C++ programs:
#
#   scripts/install.sh --prefix DIR [--no-build] [--lib-dir DIR]
#
#   DIR/lib/libamlmil.so.<ABI>            the library (soname libamlmil.so.<ABI>)
#   DIR/lib/libamlmil.so                  -> libamlmil.so.<ABI>, for -lamlmil
#   DIR/include/amlmil.h                  the C ABI
#   DIR/include/amlmil.hpp                the header-only C++17 wrapper
#   DIR/lib/pkgconfig/amlmil.pc           pkg-config --cflags --libs amlmil
#   DIR/lib/cmake/amlmil/amlmilConfig.cmake (+ ConfigVersion)  find_package(amlmil)
#
# Builds first with the one cargo profile the project uses (`cargo build`, dev);
# --no-build installs an existing build from --lib-dir (default
# $CARGO_TARGET_DIR/debug, else target/debug). The library keeps its development
# RUNPATH ($ORIGIN and the set-up environment's libtorch lib dir), so the
# installed copy needs that environment; scripts/package.sh makes a
# self-contained, relocatable tree instead. The pkg-config and CMake files
# locate the prefix from their own path, so the tree may be moved as a whole.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

prefix="" build=1 lib_dir=""
usage() { echo "usage: $0 --prefix DIR [--no-build] [--lib-dir DIR]" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) [ $# -ge 2 ] || usage; prefix="$2"; shift 2 ;;
    --prefix=*) prefix="${1#*=}"; shift ;;
    --no-build) build=0; shift ;;
    --lib-dir) [ $# -ge 2 ] || usage; lib_dir="$2"; shift 2 ;;
    --lib-dir=*) lib_dir="${1#*=}"; shift ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install.sh: unknown argument '$1'" >&2; usage ;;
  esac
done
[ -n "$prefix" ] || { echo "install.sh: --prefix DIR is required" >&2; usage; }

# Both numbers are defined once, in Cargo.toml.
version="$(sed -n 's/^version = "\([^"]*\)".*/\1/p' "$root/Cargo.toml" | head -n 1)"
abi="$(sed -n 's/^abi-version = \([0-9][0-9]*\).*/\1/p' "$root/Cargo.toml" | head -n 1)"
[ -n "$version" ] && [ -n "$abi" ] || { echo "install.sh: cannot read version/abi-version from Cargo.toml" >&2; exit 1; }

if [ "$build" -eq 1 ]; then
  # shellcheck source=/dev/null
  source "$root/scripts/env.sh"
  (cd "$root" && cargo build --lib)
fi
lib_dir="${lib_dir:-${CARGO_TARGET_DIR:-$root/target}/debug}"
lib="$lib_dir/libamlmil.so"
[ -f "$lib" ] || { echo "install.sh: $lib does not exist; build with \`cargo build\` (or drop --no-build)" >&2; exit 1; }
if command -v readelf >/dev/null 2>&1; then
  soname="$(readelf -d "$lib" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')"
  [ "$soname" = "libamlmil.so.$abi" ] || {
    echo "install.sh: $lib has soname '$soname', expected libamlmil.so.$abi (stale build?)" >&2; exit 1; }
fi

mkdir -p "$prefix"
prefix="$(cd "$prefix" && pwd)"
install -d "$prefix/lib/pkgconfig" "$prefix/lib/cmake/amlmil" "$prefix/include"
install -m 755 "$lib" "$prefix/lib/libamlmil.so.$abi"
ln -sfn "libamlmil.so.$abi" "$prefix/lib/libamlmil.so"
install -m 644 "$root/include/amlmil.h" "$root/bindings/cpp/amlmil.hpp" "$prefix/include/"

major="${version%%.*}" rest="${version#*.}"
minor="${rest%%.*}"
subst() {
  sed -e "s/@VERSION@/$version/g" -e "s/@VERSION_MAJOR@/$major/g" -e "s/@VERSION_MINOR@/$minor/g" \
      -e "s/@ABI@/$abi/g" "$1" > "$2"
}
subst "$root/packaging/amlmil.pc.in" "$prefix/lib/pkgconfig/amlmil.pc"
subst "$root/packaging/amlmilConfig.cmake.in" "$prefix/lib/cmake/amlmil/amlmilConfig.cmake"
subst "$root/packaging/amlmilConfigVersion.cmake.in" "$prefix/lib/cmake/amlmil/amlmilConfigVersion.cmake"
echo "installed libamlmil $version (ABI $abi) into $prefix" >&2
