#!/usr/bin/env bash
# Fuzzing with cargo-fuzz (libFuzzer, AddressSanitizer; the targets are in fuzz/):
#   cell_image  TIFF/PNG/JPEG and raw pixel buffers -> CellImage -> encoder input
#   checkpoint  safetensors header, checksum, manifest, model built from it
#   config      JSON and TOML into every configuration type
#   dataset     Dataset::open (skip and fail) on generated folder trees
#
# Usage: scripts/fuzz.sh [--smoke] [TARGET...]
#   --smoke   the bounded run of scripts/test.sh: 40 s per target (all four ~3 min)
#   (none)    the long run: 1800 s per target
#   AMLMIL_FUZZ_SECONDS=N   seconds per target (overrides both)
#   AMLMIL_FUZZ_RSS_MB=N    RSS limit in MB (default 2048): above it an input counts
#                           as a finding (an allocation bomb), like a crash
# Installs cargo-fuzz into ~/.cargo/bin when missing, builds every target once with
# nightly (into fuzz/target), writes each target's seed corpus from the library
# itself (fuzz/corpus/<target>/, never committed), runs the targets one after the
# other and prints per target the executions and whether anything was found.
# Findings go to fuzz/artifacts/<target>/; the exit status is 1 when there is one.
# Reproduce one: fuzz/target/x86_64-unknown-linux-gnu/release/<target> <file>
set -euo pipefail
cd "$(dirname "$0")/.."

smoke=0
targets=()
for arg in "$@"; do
    case "$arg" in
        --smoke) smoke=1 ;;
        -h | --help)
            sed -n '2,20p' "$0"
            exit 0
            ;;
        -*)
            echo "fuzz.sh: unknown option $arg" >&2
            exit 2
            ;;
        *) targets+=("$arg") ;;
    esac
done
[ ${#targets[@]} -gt 0 ] || targets=(cell_image checkpoint config dataset)
if [ "$smoke" = 1 ]; then
    seconds="${AMLMIL_FUZZ_SECONDS:-40}"
else
    seconds="${AMLMIL_FUZZ_SECONDS:-1800}"
fi
rss_mb="${AMLMIL_FUZZ_RSS_MB:-2048}"

source scripts/env.sh
export PATH="$HOME/.cargo/bin:$PATH"
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
if ! rustc +nightly --version >/dev/null 2>&1; then
    echo "fuzz.sh: cargo fuzz needs a nightly toolchain (rustup toolchain install nightly)" >&2
    exit 1
fi

# One build for all targets: torch-sys's C++ is compiled once into fuzz/target.
# -a: debug assertions, so an integer overflow is a finding too.
cargo +nightly fuzz build -O -a
triple="$(rustc +nightly -vV | sed -n 's/^host: //p')"
bin="fuzz/target/$triple/release"

found=0
summary=()
for t in "${targets[@]}"; do
    corpus="fuzz/corpus/$t"
    artifacts="fuzz/artifacts/$t"
    log="$artifacts/fuzz.log"
    mkdir -p "$corpus" "$artifacts"
    AMLMIL_FUZZ_WRITE_SEEDS="$corpus" "$bin/$t"
    stamp="$artifacts/.started"
    touch "$stamp"
    echo "== $t: fuzzing for ${seconds} s (rss limit ${rss_mb} MB) =="
    rc=0
    # -detect_leaks=0: libtorch keeps process-lifetime caches that LeakSanitizer
    # would report after the first input; memory growth is caught by -rss_limit_mb.
    "$bin/$t" "$corpus" \
        -max_total_time="$seconds" -rss_limit_mb="$rss_mb" -timeout=60 \
        -detect_leaks=0 -print_final_stats=1 -artifact_prefix="$artifacts/" \
        >"$log" 2>&1 || rc=$?
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
    cov="$(grep -oE 'cov: [0-9]+' "$log" | tail -n 1 | cut -d' ' -f2)"
    new="$(find "$artifacts" -maxdepth 1 -type f ! -name fuzz.log ! -name .started -newer "$stamp" | tr '\n' ' ')"
    if [ "$rc" != 0 ] || [ -n "$new" ]; then
        found=1
        result="FOUND (exit $rc): ${new:-see $log}"
        tail -n 40 "$log"
    else
        result="nothing found"
    fi
    line="$t: ${execs:-?} executions in ${seconds} s, coverage ${cov:-?}, corpus $(find "$corpus" -type f | wc -l) inputs; $result"
    echo "$line"
    summary+=("$line")
done
echo "== fuzzing summary (log per target: fuzz/artifacts/<target>/fuzz.log) =="
printf '%s\n' "${summary[@]}"
exit "$found"
