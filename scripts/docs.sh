#!/usr/bin/env bash
# Builds the HTML API reference (C ABI and C++ wrapper) with Doxygen:
#
#   scripts/docs.sh [OUT_DIR]     (default: $AMLMIL_DOCS_OUT, else target/doc-api)
#
# Fails on any Doxygen warning (docs/Doxyfile: WARN_AS_ERROR = FAIL_ON_WARNINGS).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
command -v doxygen >/dev/null 2>&1 || { echo "docs.sh: doxygen is missing; run scripts/setup-tools.sh" >&2; exit 1; }
out="${1:-${AMLMIL_DOCS_OUT:-${CARGO_TARGET_DIR:-$root/target}/doc-api}}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
version="$(sed -n 's/^version = "\([^"]*\)".*/\1/p' "$root/Cargo.toml" | head -n 1)"
cd "$root"
AMLMIL_DOCS_OUT="$out" AMLMIL_VERSION="$version" doxygen docs/Doxyfile
echo "API reference: $out/html/index.html" >&2
