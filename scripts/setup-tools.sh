#!/usr/bin/env bash
# Installs (Debian/Ubuntu, as root) the system tools the build, the packaging and
# the documentation need, only those missing: binutils (readelf), gcc, g++,
# pkg-config, cmake, doxygen, patchelf, valgrind (with glibc's debugging
# symbols, which memcheck wants for the loader) and chromium (headless, for the
# test that renders the cytologist's HTML page). `apt-get update` runs only when
# something has to be installed. Safe to run on every build.
set -euo pipefail

missing=()
need() { command -v "$1" >/dev/null 2>&1 || missing+=("$2"); }
need readelf binutils
need cc gcc
need c++ g++
need pkg-config pkg-config
need cmake cmake
need doxygen doxygen
need patchelf patchelf
need valgrind valgrind
need chromium chromium
if command -v dpkg >/dev/null 2>&1 && ! dpkg -s libc6-dbg >/dev/null 2>&1; then
  missing+=(libc6-dbg)
fi

[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "setup-tools: missing ${missing[*]} and no apt-get; install them by hand" >&2
  exit 1
fi
sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)
echo "setup-tools: installing ${missing[*]}" >&2
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
