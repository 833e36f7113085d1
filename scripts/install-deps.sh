#!/usr/bin/env bash
# Install the system packages Portcullis needs to build, test, run the demo and (with --bench)
# benchmark, on Debian/Ubuntu. Only what is missing is installed, so a second run is silent.
#
#   scripts/install-deps.sh            build + test + demo dependencies
#   scripts/install-deps.sh --bench    ... plus nginx and wrk for `make bench`
#   scripts/install-deps.sh --lint     ... plus a check that `cargo fmt` and `cargo clippy` exist
#
# A package counts as present when its command is on PATH (so hand-built tools are accepted) or
# dpkg reports it installed. Missing packages are installed with one `apt-get update` and one
# `apt-get install -y --no-install-recommends`, through sudo when not root. Services shipped by
# the packages (redis-server, nginx) are not started: tests and the benchmark start their own
# instances on free loopback ports. The Rust toolchain is never downloaded: cargo must already be
# installed (https://rustup.rs).
set -euo pipefail

bench=0
lint=0
for arg in "$@"; do
    case "$arg" in
        --bench) bench=1 ;;
        --lint) lint=1 ;;
        -h | --help)
            sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "error: install-deps.sh: unknown argument '$arg' (expected --bench, --lint)" >&2
            exit 2
            ;;
    esac
done

die() {
    echo "error: $*" >&2
    exit 1
}

# --- Rust toolchain: checked, never installed -------------------------------------------------
cargo_bin="${CARGO:-cargo}"
if ! command -v "$cargo_bin" >/dev/null 2>&1; then
    if [ "$cargo_bin" = cargo ] && [ -x "$HOME/.cargo/bin/cargo" ]; then
        die "cargo is installed in ~/.cargo/bin but not on PATH; run: . \"\$HOME/.cargo/env\""
    fi
    die "$cargo_bin not found; install a Rust toolchain first (https://rustup.rs) — this script does not download toolchains"
fi
if [ "$lint" = 1 ]; then
    for component in fmt:rustfmt clippy:clippy; do
        sub="${component%%:*}"
        name="${component##*:}"
        if ! "$cargo_bin" "$sub" --version >/dev/null 2>&1; then
            die "cargo $sub is not available; install it with: rustup component add $name"
        fi
    done
fi

# --- System packages ----------------------------------------------------------------------------
# Each entry is "package:probe", probe being "cmd=NAME" (present if NAME is on PATH or in sbin),
# "pc=MODULE" (present if pkg-config knows MODULE), "py=MODULE" (present if `python3 -m MODULE
# --help` runs, so a python3 not from Debian counts) or "dpkg" (dpkg status only). python3 with
# venv, xmlsec1 and openssl run the test SAML IdP (scripts/saml-idp-env.sh, tests/saml/idp.py).
wanted=(
    cmake:cmd=cmake
    pkg-config:cmd=pkg-config
    clang:cmd=clang
    libclang-dev:dpkg
    libxml2-dev:pc=libxml-2.0
    libxmlsec1-dev:pc=xmlsec1
    xmlsec1:cmd=xmlsec1
    redis-server:cmd=redis-server
    oathtool:cmd=oathtool
    openssl:cmd=openssl
    curl:cmd=curl
    python3:cmd=python3
    python3-venv:py=venv
)
if [ "$bench" = 1 ]; then
    # nginx-light is the smallest nginx with the ssl and upstream keepalive modules; Debian
    # releases without it get the plain nginx package (resolved below).
    wanted+=(nginx-light:cmd=nginx wrk:cmd=wrk)
    # llvm-profdata of rustc's own LLVM major version, for the profile-guided build
    # (scripts/pgo-build.sh): profiles are read only by the same major version.
    llvm_major=$(rustc -vV 2>/dev/null | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
    if [ -n "$llvm_major" ]; then
        wanted+=("llvm-$llvm_major:cmd=llvm-profdata-$llvm_major")
    fi
fi

have_cmd() {
    command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]
}

dpkg_installed() {
    command -v dpkg-query >/dev/null 2>&1 &&
        dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'ok installed'
}

missing=()
for entry in "${wanted[@]}"; do
    pkg="${entry%%:*}"
    probe="${entry#*:}"
    dpkg_installed "$pkg" && continue
    case "$probe" in
        cmd=*) have_cmd "${probe#cmd=}" && continue ;;
        pc=*) have_cmd pkg-config && pkg-config --exists "${probe#pc=}" 2>/dev/null && continue ;;
        py=*) have_cmd python3 && python3 -m "${probe#py=}" --help >/dev/null 2>&1 && continue ;;
    esac
    missing+=("$pkg")
done

[ "${#missing[@]}" -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
    die "missing system packages: ${missing[*]} — apt-get is not available here, install them with your package manager"
fi

if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1; then
    # Never wait for a password prompt nobody can answer (CI, no stdin).
    if [ -t 0 ]; then as_root=(sudo); else as_root=(sudo -n); fi
else
    die "missing system packages: ${missing[*]} — not root and sudo is not installed"
fi

apt_opts=(-q -o DPkg::Lock::Timeout=300)
export DEBIAN_FRONTEND=noninteractive

echo "install-deps: installing missing packages: ${missing[*]}" >&2
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" update >/dev/null ||
    die "apt-get update failed (network or apt sources?); missing: ${missing[*]}"

# Pick an nginx flavour the configured Debian release actually ships.
for i in "${!missing[@]}"; do
    if [ "${missing[$i]}" = nginx-light ] &&
        ! apt-cache policy nginx-light 2>/dev/null | grep -q 'Candidate: [0-9]'; then
        missing[i]=nginx
    fi
done

# Debian's policy-rc.d hook: exit 101 = "do not start services" during this install. Only
# created if absent (Docker images already ship one) and removed again on exit.
policy=/usr/sbin/policy-rc.d
marker='# created by portcullis scripts/install-deps.sh'
created_policy=0
if [ ! -e "$policy" ] || grep -qF "$marker" "$policy" 2>/dev/null; then
    printf '#!/bin/sh\n%s\nexit 101\n' "$marker" | "${as_root[@]}" tee "$policy" >/dev/null &&
        "${as_root[@]}" chmod 755 "$policy" && created_policy=1
fi
cleanup() {
    if [ "$created_policy" = 1 ]; then "${as_root[@]}" rm -f "$policy"; fi
}
trap cleanup EXIT

"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" install -y \
    --no-install-recommends "${missing[@]}" ||
    die "apt-get install failed for: ${missing[*]}"
echo "install-deps: done" >&2
