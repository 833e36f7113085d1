#!/usr/bin/env bash
# Profile-guided release build of Portcullis (run by `make bench`; usable for deployments).
#
#   1. a release build instrumented to count what runs (RUSTFLAGS -Cprofile-generate), into
#      $TARGET/pgo-gen;
#   2. training: that build serves the benchmark's own traffic (bench/run.sh with short rounds:
#      public and signed-in GETs through TLS, a wrong-password flood, password sign-ins), with
#      the echo backend and every other command from the ordinary release build, so only the
#      gateway's serving is counted; it writes its counts when it exits;
#   3. a release build optimised with those counts (-Cprofile-use), into $TARGET/pgo-use. Its
#      path is printed last.
#
# Needs the ordinary release build ($TARGET/release/portcullis), the bench tools, and
# llvm-profdata of the same LLVM major version as rustc (Debian: llvm-<major>, which
# `scripts/install-deps.sh --bench` installs).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CARGO=${CARGO:-cargo}
target_dir=${CARGO_TARGET_DIR:-$ROOT/target}
case "$target_dir" in /*) ;; *) target_dir="$ROOT/$target_dir" ;; esac

die() {
    echo "error: pgo-build.sh: $*" >&2
    exit 1
}

llvm_major=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
[ -n "$llvm_major" ] || die "cannot tell rustc's LLVM version (rustc -vV)"
profdata=$(command -v "llvm-profdata-$llvm_major" || true)
[ -n "$profdata" ] || die "llvm-profdata-$llvm_major not found (rustc uses LLVM $llvm_major; run scripts/install-deps.sh --bench)"
release="$target_dir/release/portcullis"
[ -x "$release" ] || die "$release not found; run cargo build --release first"

data="$target_dir/pgo-data"
# Counts of earlier runs (the gateway's, and those the instrumented build scripts and
# proc-macros wrote while building, which are never used) go first.
rm -f "$data"/*.profraw "$data"/*.profdata
mkdir -p "$data"

echo "pgo-build: instrumented build" >&2
RUSTFLAGS="-Cprofile-generate=$data" CARGO_TARGET_DIR="$target_dir/pgo-gen" \
    "$CARGO" build --release >&2

echo "pgo-build: training on the benchmark's traffic" >&2
# The instrumented build scripts and proc-macros that ran during the build wrote their own
# counts into $data; only the gateway's, named here, are used.
LLVM_PROFILE_FILE="$data/gateway-%p.profraw" \
    PORTCULLIS_BIN="$release" PORTCULLIS_GATEWAY_BIN="$target_dir/pgo-gen/release/portcullis" \
    ROUNDS=1 DURATION=3s WARMUP=0 bash "$ROOT/bench/run.sh" >"$data/training.log" 2>&1 ||
    die "training run failed (log: $data/training.log)"
shopt -s nullglob
raw=("$data"/gateway-*.profraw)
[ "${#raw[@]}" -gt 0 ] || die "the instrumented gateway wrote no profile"
"$profdata" merge -o "$data/merged.profdata" "${raw[@]}"
# Named by content: cargo rebuilds on a change of RUSTFLAGS, not of the file they name.
profile="$data/gateway-$(sha256sum "$data/merged.profdata" | cut -c1-16).profdata"
mv "$data/merged.profdata" "$profile"

echo "pgo-build: optimised build" >&2
# Functions the training never ran have no counts; that is expected, not worth a warning each.
RUSTFLAGS="-Cprofile-use=$profile -Cllvm-args=-pgo-warn-missing-function=false" \
    CARGO_TARGET_DIR="$target_dir/pgo-use" "$CARGO" build --release >&2
echo "$target_dir/pgo-use/release/portcullis"
