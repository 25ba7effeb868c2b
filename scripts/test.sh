#!/usr/bin/env bash
# The whole test suite: installs libtorch and the Python reference environment
# (first run only), then runs every Rust, C ABI, C/C++ example, header and
# PyTorch-parity test with one cargo profile.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
# C/C++ compilers, readelf, pkg-config, cmake, doxygen, patchelf, valgrind and
# chromium for the example, packaging, documentation, memcheck and HTML-page
# tests (apt-installs only what is missing).
bash scripts/setup-tools.sh
# `cargo test` does not link the cdylib; the C/C++ example and export tests need
# target/debug/libamlmil.so, so build it (same profile) first. Plain `cargo test`
# also builds the examples as programs, which tests/examples.rs runs.
cargo build
cargo test "$@"
# Bounded fuzzing of the hostile-input parsers (~3 min; scripts/fuzz.sh for longer runs).
bash scripts/fuzz.sh --smoke
